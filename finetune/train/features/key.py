"""What a stored feature set is keyed by: everything that changes the frozen part's outputs.

The model (source, name, the weights file by content, the CIFAR stem), its preprocessing, the torch version,
the transform (with its draft size, the precision and the cut), and every file's path, size and mtime with its
label. Two runs that would compute the same features share them; anything else computes its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...config import DataSpec, ModelSpec
from ...data.packed import PackedImage
from ...files import file_sha256
from ...preprocessing import Preprocessing

FORMAT = 6  # bumped when the same key would store other features or files (6: view v of image i seeded by (seed, v, i))


@dataclass(frozen=True)
class FeatureKey:
    """The material of every key of one model and preprocessing; `key` adds the images and their transform."""
    material: dict

    @classmethod
    def of(cls, spec: ModelSpec, pre: Preprocessing) -> FeatureKey:
        import torch.version

        weights = spec.weights
        if weights is not None and Path(weights).expanduser().is_file():
            weights = file_sha256(Path(weights).expanduser())
        return cls({"format": FORMAT, "source": spec.source, "name": spec.name, "weights": weights,
                    "cifar_stem": spec.cifar_stem, "preprocessing": pre.to_dict(), "torch": torch.version.__version__})

    def key(self, samples, transform: str) -> str:
        """A hash of the material, the transform, and every sample's path, size and mtime with its label (an image
        in a shard or a dataset: PackedImage.stamp)."""
        stamps = []
        for path, label in samples:
            if isinstance(path, PackedImage):
                stamps.append((*path.stamp(), label))
                continue
            try:
                st = os.stat(path)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:  # deleted since the pre-scan: training leaves it out (data.images.missing_label)
                stamp = (-1, -1)
            stamps.append((str(Path(path).resolve()), *stamp, label))
        material = {**self.material, "transform": transform,
                    "files": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def train_transform_name(data: DataSpec, views: int, seed: int) -> str:
    """How train's stored views were made: the eval transform without augmentation; else the augmentation, the
    number of views and the seed (random views depend on both)."""
    if data.augment == "none" and not data.random_erasing:
        return "eval"
    erasing = f"-erase{data.random_erasing}" if data.random_erasing else ""
    return f"{data.augment}{erasing}-views{views}-seed{seed}"
