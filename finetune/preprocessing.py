"""The preprocessing spec (plain data saved in every checkpoint) and the transforms built from it.

Values come from the weights' own metadata (torchvision weights enums, timm pretrained_cfg), never
from constants here; `with_size` rescales the resize step when the user picks another crop size.
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

    def with_size(self, size: int | None) -> "Preprocessing":
        if size is None or size == self.size:
            return self
        resize = max(size, math.floor(size * self.resize / self.size))
        return Preprocessing(size, resize, self.interpolation, self.mean, self.std)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["size"]), int(d["resize"]), str(d["interpolation"]), tuple(d["mean"]), tuple(d["std"]))


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def eval_transform(pre: Preprocessing):
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(pre.resize, interpolation=_interp(pre.interpolation)),
        T.CenterCrop(pre.size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(pre: Preprocessing, augment: str):
    """augment: none (the eval pipeline), flip, or standard (random resized crop + flip)."""
    from torchvision import transforms as T

    if augment == "none":
        return eval_transform(pre)
    if augment == "flip":
        crop = [T.Resize(pre.resize, interpolation=_interp(pre.interpolation)), T.CenterCrop(pre.size)]
    else:
        crop = [T.RandomResizedCrop(pre.size, interpolation=_interp(pre.interpolation))]
    return T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def draft_size(pre: Preprocessing, augment: str) -> int:
    """The smallest decode size (Pillow's JPEG draft mode) that loses nothing the transform keeps.

    Resize-then-crop needs the shorter side >= pre.resize. RandomResizedCrop may keep as little as 8% of
    the area (a side of sqrt(0.08) = 0.28x) and scale it up to pre.size, so it needs ~3.5x pre.size.
    """
    if augment == "standard":
        return max(pre.resize, math.ceil(pre.size / math.sqrt(0.08)))
    return pre.resize
