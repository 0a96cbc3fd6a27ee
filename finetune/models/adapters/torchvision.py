"""torchvision's ResNets, ResNeXts and Wide ResNets: weights entries by name, each with its own preprocessing.

Their child names (conv1, bn1, layer1..layer4, fc) are the seams: the head is `fc`, the last stage `layer4`,
the blocks `layerN.M`. Our scratch family keeps the same names and shares these pieces (adapters/scratch.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import ModelSpec
from ...errors import ConfigError
from ...preprocessing import Preprocessing
from ..resnet import ARCHS
from ..weights import download_state_dict, is_weights_name, load_weights, read_state_dict, torchvision_weights
from .base import HeadInput, ModelAdapter

TORCHVISION_RESNETS = tuple(ARCHS)  # ResNets, ResNeXts, Wide ResNets: torchvision's names and weights
# ResNets' blocks for layer-wise lr decay: the stem, then each layerN.M (timm's group_matcher for its ResNets)
RESNET_BLOCKS = {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)\.(\d+)"}


class TorchvisionAdapter(ModelAdapter):
    source = "torchvision"

    def build(self, spec: ModelSpec) -> nn.Module:
        import torchvision

        if spec.name not in TORCHVISION_RESNETS:
            raise ConfigError(f"torchvision model {spec.name!r} is not supported yet; use one of "
                              f"{', '.join(TORCHVISION_RESNETS)} or model.source: timm")
        model = torchvision.models.get_model(spec.name)
        load_resnet_weights(model, spec)
        return model

    def preprocessing(self, spec: ModelSpec, model: nn.Module) -> Preprocessing:
        return resnet_preprocessing(spec)

    def head_name(self, model: nn.Module) -> str:
        return "fc"

    def last_stage(self, spec: ModelSpec, model: nn.Module) -> list[str]:
        return ["layer4"]

    def block_matcher(self, model: nn.Module) -> dict:
        return RESNET_BLOCKS

    def head_input(self, model: nn.Module) -> HeadInput:
        return _resnet_head_input  # torchvision's ResNet.forward, up to fc


def _resnet_head_input(model: nn.Module, x: Tensor) -> Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def resnet_weights_entry(spec: ModelSpec):
    """torchvision's weights entry spec.weights names (a file or random init: the DEFAULT entry)."""
    return torchvision_weights(spec.name, spec.weights if is_weights_name(spec.weights) else None)


def load_resnet_weights(model: nn.Module, spec: ModelSpec) -> None:
    """Load spec.weights (a torchvision weights name or a local file) into a ResNet of torchvision's names."""
    if spec.weights is None:
        return
    state = download_state_dict(resnet_weights_entry(spec)) if is_weights_name(spec.weights) \
        else read_state_dict(spec.weights)
    load_weights(model, state, spec.weights)


def resnet_preprocessing(spec: ModelSpec) -> Preprocessing:
    """The preprocessing of the weights entry (V1 and V2 differ: resize 256 vs 232)."""
    t = resnet_weights_entry(spec).transforms()
    return Preprocessing(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
