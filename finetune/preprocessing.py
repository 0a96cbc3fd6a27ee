"""The preprocessing spec: plain data saved in every checkpoint, read by train, predict and export alike.

Values come from the weights' own metadata (torchvision weights entries, timm's pretrained_cfg), never
from constants here; `with_size` rescales the resize step when the user picks another crop size.
The transforms built from it live in `data.transforms`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocessing:
    size: int  # square crop fed to the network
    resize: int  # shorter side before the center crop (eval)
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def with_size(self, size: int | None) -> Preprocessing:
        if size is None or size == self.size:
            return self
        resize = max(size, math.floor(size * self.resize / self.size))
        return Preprocessing(size, resize, self.interpolation, self.mean, self.std)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["size"]), int(d["resize"]), str(d["interpolation"]), tuple(d["mean"]), tuple(d["std"]))
