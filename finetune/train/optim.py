"""The optimizer over the freeze plan's groups, and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import torch

from ..config import OptimSpec, ScheduleSpec


def build_optimizer(spec: OptimSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """groups: FreezePlan.param_groups, each with its own absolute lr."""
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=spec.momentum, nesterov=spec.nesterov)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=groups[0]["lr"])


def build_scheduler(optimizer, spec: ScheduleSpec, steps_per_epoch: int, epochs: int):
    """Each group's lr times lr_factor(step): the schedule scales every group's own rate alike."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, epochs, spec))


def lr_factor(step: int, steps_per_epoch: int, epochs: int, spec: ScheduleSpec) -> float:
    """Multiplier for optimizer step `step` (0-based) of a run of epochs * steps_per_epoch steps."""
    epoch = step / max(1, steps_per_epoch)  # fractional epoch, so warmup and cosine are smooth
    warmup = spec.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        return spec.gamma ** int(epoch // spec.step_size)
    progress = (epoch - warmup) / max(1e-8, epochs - warmup)
    progress = min(1.0, max(0.0, progress))
    return spec.min_factor + (1 - spec.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
