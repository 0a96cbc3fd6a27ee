"""A small image folder held in memory as tensors, and the CIFAR augmentation applied on the tensors.

The ablation trains four networks on the same images in the same order; decoding each image once and
drawing every shuffle and crop from a generator seeded the same way for each net makes that exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..console import track
from ..data.folders import resolve_splits
from ..data.images import load_rgb


@dataclass
class TensorSplits:
    class_names: list[str]
    train_x: torch.Tensor  # uint8, N x 3 x S x S
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    source: str  # "folders" (train/ + val/) or "split" (a seeded split of class folders)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images as float, standardised by the training set's per-channel mean and std."""
        mean, std = self._stats
        return (x.float() / 255 - mean) / std

    def __post_init__(self):
        x = self.train_x.float() / 255
        self._stats = (x.mean((0, 2, 3)).view(1, 3, 1, 1), x.std((0, 2, 3)).clamp_min(1e-3).view(1, 3, 1, 1))


def load_tensors(root: Path, image_size: int, seed: int, val_fraction: float = 0.2, console=None) -> TensorSplits:
    """The ImageFolder at `root` (train/ + val/, or class folders split by the project's rule) as tensors,
    every image resized to image_size x image_size."""
    splits = resolve_splits(root, val_fraction, seed)

    def stack(samples, what):
        images = []
        for path, _ in track(samples, f"reading {what} images", console):
            im = load_rgb(path, draft_size=image_size)
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                          .view(image_size, image_size, 3).permute(2, 0, 1))
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        return torch.stack(images) if images else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), labels

    train_x, train_y = stack(splits.train, "train")
    val_x, val_y = stack(splits.val, "val")
    return TensorSplits(splits.class_names, train_x, train_y, val_x, val_y, splits.source)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """He et al. 2015 §4.2: pad 4 pixels, take a random crop of the original size, flip half of the images."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
