"""create_model(spec, num_classes): torchvision | scratch | timm, pretrained weights, one head swap.

Also resolves what the rest of the package needs to know about a model, by name: where its head
is, which parameter-name prefixes make up its last stage, and its preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import HeadSpec, ModelSpec
from ..errors import CheckpointError, ConfigError
from ..preprocessing import Preprocessing
from .resnet import ARCHS, resnet

TORCHVISION_RESNETS = tuple(ARCHS)


@dataclass
class ModelInfo:
    head_name: str  # dotted module path of the classifier head
    last_stage: list[str]  # parameter-name prefixes of the last stage (layer4 for ResNets)
    feature_dim: int
    preprocessing: Preprocessing


def create_model(spec: ModelSpec, num_classes: int, image_size: int | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the architecture, load its weights, and replace the head for num_classes."""
    builders = {"torchvision": _torchvision, "scratch": _scratch, "timm": _timm}
    model, head_name, last_stage, pre = builders[spec.source](spec)
    old_head = model.get_submodule(head_name)
    feature_dim = old_head.in_features
    model.set_submodule(head_name, build_head(spec.head, feature_dim, num_classes))
    return model, ModelInfo(head_name, last_stage, feature_dim, pre.with_size(image_size))


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> nn.Module:
    """The one place a head is made. A bare Linear keeps torchvision/timm key names (fc.weight)."""
    if spec.type == "linear":
        linear = nn.Linear(in_features, num_classes)
        return nn.Sequential(nn.Dropout(spec.dropout), linear) if spec.dropout else linear
    return nn.Sequential(
        nn.Dropout(spec.dropout),
        nn.Linear(in_features, spec.hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(spec.hidden_dropout),
        nn.Linear(spec.hidden, num_classes),
    )


# ---------------------------------------------------------------- sources


def _tv_weights_enum(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ConfigError(f"unknown torchvision model {name!r}; try one of {', '.join(TORCHVISION_RESNETS)}") from None


def _tv_preprocessing(weights) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))


def _is_weights_name(weights: str | None) -> bool:
    return weights is not None and not any(c in weights for c in "/\\.")


def _tv_state_dict(name: str, weights_name: str) -> dict:
    """Through torchvision's own path: the torch hub cache ($TORCH_HOME/hub/checkpoints), download if absent."""
    enum = _tv_weights_enum(name)
    try:
        weights = enum[weights_name]
    except KeyError:
        raise ConfigError(f"model.weights {weights_name!r} is not a weights name of {name}; "
                          f"choose one of {', '.join(enum.__members__)}, a file path, or null") from None
    try:
        return weights.get_state_dict(progress=True, check_hash=False)
    except OSError as exc:  # URLError is an OSError: offline, proxy, DNS
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise CheckpointError(f"could not download {name} {weights_name} weights ({exc}). Offline? Put the file at "
                              f"{cache}, or set model.weights to a local state-dict file") from None


def _torchvision(spec: ModelSpec):
    import torchvision

    enum = _tv_weights_enum(spec.name)
    if not spec.name.startswith("resnet"):
        raise ConfigError(f"torchvision model {spec.name!r} is not supported yet; use one of {', '.join(TORCHVISION_RESNETS)} "
                          "or model.source: timm")
    model = torchvision.models.get_model(spec.name)
    if spec.weights is not None:
        state = _tv_state_dict(spec.name, spec.weights) if _is_weights_name(spec.weights) else read_state_dict(spec.weights)
        load_weights(model, state, spec.weights)
    return model, "fc", ["layer4"], _tv_preprocessing(enum.DEFAULT)


def _scratch(spec: ModelSpec):
    if spec.name not in ARCHS:
        raise ConfigError(f"unknown scratch model {spec.name!r}; try one of {', '.join(ARCHS)}")
    model = resnet(spec.name, cifar_stem=spec.cifar_stem)
    if spec.weights is not None:
        state = _tv_state_dict(spec.name, spec.weights) if _is_weights_name(spec.weights) else read_state_dict(spec.weights)
        load_weights(model, state, spec.weights)
    pre = _tv_preprocessing(_tv_weights_enum(spec.name).DEFAULT)
    if spec.cifar_stem:  # CIFAR-like data: the image is the crop, no resize margin
        pre = Preprocessing(32, 32, pre.interpolation, pre.mean, pre.std)
    return model, "fc", ["layer4"], pre


def _timm(spec: ModelSpec):
    import timm

    if not timm.is_model(spec.name):
        close = timm.list_models(f"*{spec.name.split('_')[0]}*")[:5]
        raise ConfigError(f"unknown timm model {spec.name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    hub = spec.weights is not None and _is_weights_name(spec.weights)
    try:
        model = timm.create_model(spec.name, pretrained=hub)  # DEFAULT: timm's own download path (HF hub)
    except OSError as exc:
        raise CheckpointError(f"could not download timm weights for {spec.name} ({exc}). Offline? "
                              "Set model.weights to a local state-dict file") from None
    if spec.weights is not None and not hub:
        load_weights(model, read_state_dict(spec.weights), spec.weights)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = cfg["input_size"][-1]
    pre = Preprocessing(size, int(size / cfg["crop_pct"]), cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))
    head_name = model.pretrained_cfg.get("classifier", "classifier")
    return model, head_name, _timm_last_stage(model, head_name), pre


def _timm_last_stage(model: nn.Module, head_name: str) -> list[str]:
    """Prefixes of everything after the second-to-last feature stage, the head excluded.

    For a timm ResNet that is ['layer4']; for EfficientNet the stride-32 blocks plus conv_head/bn2.
    """
    info = getattr(model, "feature_info", None)
    if not info or len(info) < 2:
        return []
    boundary = info[-2]["module"] + "."
    names = [n for n, _ in model.named_parameters()]
    cut = max(i for i, n in enumerate(names) if n.startswith(boundary))
    prefixes: list[str] = []
    for n in names[cut + 1:]:
        if n.startswith(head_name + "."):
            continue
        parts = n.split(".")
        shared = any(m.startswith(parts[0] + ".") for m in names[: cut + 1])  # e.g. 'blocks' spans stages
        prefix = ".".join(parts[:2]) if shared else parts[0]
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


# ---------------------------------------------------------------- weight files


def read_state_dict(path: str | Path) -> dict:
    """A local weights file, loaded without executing code (weights_only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors holds no code; a failure here is a damaged file
            raise CheckpointError(f"cannot read {path}: the weights file is corrupt or truncated ({exc})") from None
    from ..checkpoint import safe_torch_load

    state = safe_torch_load(path, "weights file")  # pickle payloads, corrupt files: refused, never executed
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Strict load with an error that names the keys and shapes that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(wrong)}" if wrong else ""]
        raise CheckpointError(f"weights {source} do not fit the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
