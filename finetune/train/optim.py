"""The optimizer over the freeze plan's groups, and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import functools
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
    """Each group's lr times its factor: the schedule scales every group's own rate alike, from the epoch the
    group starts training in (0 before: a group unfrozen later gets its own warmup and decay)."""
    factors = [functools.partial(group_factor, start=(g.get("start_epoch", 1) - 1) * steps_per_epoch,
                                 steps_per_epoch=steps_per_epoch, epochs=epochs - g.get("start_epoch", 1) + 1,
                                 spec=spec) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def group_factor(step: int, start: int, steps_per_epoch: int, epochs: int, spec: ScheduleSpec) -> float:
    """lr_factor counted from the group's first step `start`; 0 before it (the group is frozen then)."""
    return 0.0 if step < start else lr_factor(step - start, steps_per_epoch, epochs, spec)


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
