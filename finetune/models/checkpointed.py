"""The one function that turns a checkpoint into a model: no recipe, no dataset, no download. Here, below train and
deploy, so both use it: deploy to predict, train to run a distillation teacher (train.distill)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import Checkpoint
from .registry import create_model
from .weights import load_weights


def load_model(checkpoint: Checkpoint | Path) -> tuple[nn.Module, Checkpoint]:
    """(the checkpoint's model with its weights, in eval mode on the CPU; the Checkpoint). Give a Checkpoint
    you already read to use it as it is, or a path to read it."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    model, _ = create_model(ckpt.model, len(ckpt.class_names))
    load_weights(model, ckpt.state, "in the checkpoint")
    return model.eval(), ckpt
