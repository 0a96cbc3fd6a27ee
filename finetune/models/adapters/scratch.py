"""Our own ResNet family (models/resnet.py, models/variants.py): torchvision's child names, so its weights by
name load into the plain ResNets, and `forward_features` gives the pooled features the head `fc` takes."""

from __future__ import annotations

from torch import Tensor, nn

from ...config import ModelSpec
from ...errors import ConfigError
from ...preprocessing import Preprocessing
from ..resnet import ARCHS, resnet
from ..variants import NAMES as VARIANT_NAMES
from ..variants import WIDE_CIFAR, variant
from ..weights import is_weights_name, load_weights, read_state_dict
from .base import HeadInput, ModelAdapter
from .torchvision import RESNET_BLOCKS, load_resnet_weights, resnet_preprocessing

SCRATCH = (*ARCHS, *VARIANT_NAMES)
# What a scratch model without torchvision weights preprocesses like: ImageNet's statistics at 224 px
IMAGENET = Preprocessing(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ScratchAdapter(ModelAdapter):
    source = "scratch"

    def build(self, spec: ModelSpec) -> nn.Module:
        if spec.name not in SCRATCH:
            raise ConfigError(f"unknown scratch model {spec.name!r}; try one of {', '.join(SCRATCH)}")
        if spec.name in ARCHS:  # torchvision's architectures: its weights by name load into ours
            model = resnet(spec.name, cifar_stem=spec.cifar_stem)
            load_resnet_weights(model, spec)
            return model
        model = variant(spec.name, cifar_stem=spec.cifar_stem)
        if is_weights_name(spec.weights):
            raise ConfigError(f"{spec.name} has no pretrained weights by name; set model.weights to a local "
                              "state-dict file, or null for random init")
        if spec.weights is not None:
            load_weights(model, read_state_dict(spec.weights), spec.weights)
        return model

    def preprocessing(self, spec: ModelSpec, model: nn.Module) -> Preprocessing:
        pre = resnet_preprocessing(spec) if spec.name in ARCHS else IMAGENET
        if spec.cifar_stem or spec.name in WIDE_CIFAR:  # CIFAR-like data: the image is the crop, no resize margin
            pre = Preprocessing(32, 32, pre.interpolation, pre.mean, pre.std)
        return pre

    def head_name(self, model: nn.Module) -> str:
        return "fc"

    def last_stage(self, spec: ModelSpec, model: nn.Module) -> list[str]:
        """The last layerN and the final BN-ReLU that belongs to it (pre-activation nets)."""
        if spec.name in WIDE_CIFAR:
            return ["layer3", "final_bn"]
        return ["layer4", "final_bn"] if spec.name.startswith("preact_") else ["layer4"]

    def block_matcher(self, model: nn.Module) -> dict:
        return RESNET_BLOCKS

    def head_input(self, model: nn.Module) -> HeadInput:
        return _forward_features  # every model of the family: forward(x) = fc(forward_features(x))


def _forward_features(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_features(x)
