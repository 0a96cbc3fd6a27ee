"""Learning-rate schedules as pure functions of the step: a multiplier on each group's own lr."""

from __future__ import annotations

import math

from .config import ScheduleSpec


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
