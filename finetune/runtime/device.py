"""The device a run computes on, its mixed precision, and the seeds that make it repeatable."""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .distributed import Dist


@dataclass(frozen=True)
class Compute:
    """Where tensors go and how they are computed: the device, autocast (a no-op off CUDA or with amp off), and
    the processes computing together (one, or the ranks of a torchrun job)."""
    device: torch.device
    autocast_dtype: torch.dtype | None = None  # bf16 where the GPU supports it, else fp16; None: float32
    dist: Dist = Dist()

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        """Names what the outputs are computed in (part of the feature cache's key)."""
        return f"{self.device.type}-{self.autocast_dtype or 'float32'}"

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device: images in channels_last (ResNet-50's convs run faster so on CPU), features as
        they are."""
        fmt = torch.channels_last if batch.dim() == 4 else torch.preserve_format
        return batch.to(self.device, non_blocking=True, memory_format=fmt)


def resolve_compute(name: str, amp: bool = True, dist: Dist = Dist()) -> Compute:
    device = resolve_device(name)
    if device.type != "cuda" or not amp:
        return Compute(device, None, dist)
    return Compute(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16, dist)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device {name!r}: no such CUDA device here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
