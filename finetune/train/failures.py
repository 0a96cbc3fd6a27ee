"""The one place where what goes wrong during a run becomes an error the user can act on: a loss that stops
being a number, memory that runs out, torch.compile failing on the model. Each message says where the run was,
what to change, and what last.pt holds. Anything else is a bug, and goes to the command line's boundary (one
line, the traceback in RUN_DIR/crash.log).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

import torch

from ..errors import ConfigError, FinetuneError, NonFiniteLoss, RankLost, ResourceError, TrainingDiverged, first_line


@dataclass(frozen=True)
class Situation:
    """Where a run was when something went wrong, for the message."""
    epoch: int  # the epoch in progress
    step: int  # optimizer steps done in it
    lrs: str  # the learning rates now, "head 0.001, last_stage 0.0001"
    saved: str  # what last.pt holds ("Nothing was saved yet." before the first save)
    batch_size: int
    image_size: int
    world: int = 1  # processes training together
    resume: str = ""  # the command that continues the run


def as_user_error(exc: Exception, at: Situation) -> FinetuneError | None:
    """The user error `exc` stands for, or None when it is not one of these (a bug)."""
    if isinstance(exc, NonFiniteLoss):
        return TrainingDiverged(f"the training loss became {exc.value} in epoch {at.epoch} at step {at.step + 1}, "
                                f"before that step updated anything: training diverged. {lower_lr(at.lrs)} "
                                f"{at.saved}")
    if at.world > 1 and _lost_peer(exc):
        return RankLost(f"another process of this {at.world}-process run stopped (it was killed, ran out of memory, or "
                        f"its machine went away): a collective with it failed in epoch {at.epoch} "
                        f"({first_line(exc, 120)}). {at.saved} Continue with: {at.resume}")
    if _compile_failure(exc):
        return ConfigError(f"train.compile: torch.compile failed on this model here ({type(exc).__name__}: "
                           f"{str(exc).strip()[:160]}); set train.compile: false")
    if _out_of_memory(exc):
        return ResourceError(
            f"out of memory in epoch {at.epoch} (train.batch_size {at.batch_size}, data.image_size {at.image_size}): "
            f"lower train.batch_size (e.g. --set train.batch_size={max(1, at.batch_size // 2)}) or "
            f"data.image_size, or use strategy.name: feature-extract, and start a new run. {at.saved}")
    return None


def lower_lr(lrs: str) -> str:
    return f"Learning rates now: {lrs}; lower strategy.lr (e.g. --set strategy.lr.head=...) and start a new run."


def group_lrs(optimizer: torch.optim.Optimizer) -> str:
    """Each group's lr once (a group is two optimizer groups: with and without weight decay)."""
    return ", ".join(f"{g['name']} {g['lr']:g}" for g in optimizer.param_groups[::2])


def _lost_peer(exc: Exception) -> bool:
    """A collective that failed because a peer process is gone: torch.distributed's own error types, or the
    RuntimeError gloo raises from inside torch.distributed or DDP's gradient all-reduce."""
    if isinstance(exc, getattr(torch.distributed, "DistError", ())):
        return True
    if type(exc) is not RuntimeError:
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    inside = bool(frames) and any(part in frames[-1].filename for part in ("torch/distributed", "torch/nn/parallel"))
    return inside or "gloo/transport" in str(exc)


def _out_of_memory(exc: Exception) -> bool:
    # CUDA's allocator raises its own type; the CPU allocator a plain RuntimeError that only its text tells apart
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or \
        (type(exc) is RuntimeError and "can't allocate memory" in str(exc))


def _compile_failure(exc: Exception) -> bool:
    """torch.compile's own error types (dynamo's, which wraps the backend's, and inductor's), where torch.compile
    has been loaded at all."""
    types = [getattr(sys.modules.get(name), attr, None) for name, attr in (
        ("torch._dynamo.exc", "TorchDynamoException"), ("torch._inductor.exc", "InductorError"))]
    return any(t is not None and isinstance(exc, t) for t in types)
