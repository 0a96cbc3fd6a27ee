"""deploy's way from a checkpoint to a model: the one function, models.checkpointed.load_model (train's
distillation teacher needs it too, and train never imports deploy)."""

from __future__ import annotations

from ..models.checkpointed import load_model

__all__ = ["load_model"]
