"""One adapter per source of models (torchvision, scratch, timm): `adapter_for(source)`. See base.py."""

from __future__ import annotations

from .base import HeadInput, ModelAdapter, build_head
from .scratch import ScratchAdapter
from .timm import TimmAdapter
from .torchvision import TorchvisionAdapter

ADAPTERS: dict[str, ModelAdapter] = {a.source: a for a in (TorchvisionAdapter(), ScratchAdapter(), TimmAdapter())}


def adapter_for(source: str) -> ModelAdapter:
    """The adapter of model.source (config validates the name, so a miss is a bug, said plainly)."""
    try:
        return ADAPTERS[source]
    except KeyError:
        raise ValueError(f"no model adapter for source {source!r}; known: {', '.join(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "HeadInput", "ModelAdapter", "adapter_for", "build_head"]
