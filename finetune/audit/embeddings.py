"""The audit's input: every train and val image's pooled embedding, label and path, in file order.

The embeddings are the feature-extract cache (train.features), so an audit after a feature-extract run (or a
second audit) reads them from disk instead of running the backbone again, and they are exactly what the head
trains on. The audit always looks at the eval transform (no augmentation) and the backbone's pooled output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Recipe
from ..errors import ConfigError, DataError
from ..train.features import FeatureSet, frozen_batches
from ..train.loop import prepare

SPLITS = ("train", "val")


@dataclass
class Embeddings:
    """N images' pooled features (N x D float32, not normalised), labels, paths and split (0 train, 1 val)."""
    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    split: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]]  # files the pre-training screen leaves out, with why (finetune inspect's kinds)

    def __len__(self) -> int:
        return len(self.labels)

    def normalised(self, centred: bool = False) -> torch.Tensor:
        """L2-normalised rows, float32: a dot product of two is their cosine similarity. centred: the mean
        embedding subtracted first."""
        x = torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32))
        if centred:
            x = x - x.mean(0, keepdim=True)
        return torch.nn.functional.normalize(x, dim=1)


def audit_recipe(recipe: Recipe) -> Recipe:
    """The recipe as the audit runs it: the backbone frozen whole (feature-extract) and no augmentation, so every
    image has one embedding, the same one a feature-extract run of this recipe trains its head on."""
    if recipe.features.cache != "auto":
        raise ConfigError("finetune audit reads the frozen-feature cache: set features.cache: auto (the default)")
    data = recipe.data.model_copy(update={"augment": "none", "random_erasing": 0.0, "mixup": None, "cutmix": None})
    strategy = recipe.strategy.model_copy(update={"name": "feature-extract", "freeze_epochs": 0, "layer_decay": None,
                                                  "frozen_bn": "eval"})
    train = recipe.train.model_copy(update={"ema": None, "compile": False, "sync_bn": False})
    return recipe.model_copy(update={"data": data, "strategy": strategy, "train": train})


def load_embeddings(recipe: Recipe, console) -> Embeddings:
    """Compute (or read from the cache) the pooled embeddings of the recipe's train and val images."""
    recipe = audit_recipe(recipe)
    setup = prepare(recipe, console)
    _, train_batches, val_batches = frozen_batches(setup.step.model, setup.plan, setup.loaders, setup.cache,
                                                   setup.compute, console)
    sets = [getattr(batches, "features", None) for batches in (train_batches, val_batches)]
    if not all(isinstance(s, FeatureSet) for s in sets):
        raise ConfigError("finetune audit needs the frozen features cached, and they could not be (see the line "
                          "above): set features.dir or $FINETUNE_CACHE_DIR to a writable folder with free space")
    splits = setup.splits
    features, labels, paths, split = [], [], [], []
    for i, (name, cached) in enumerate(zip(SPLITS, sets)):
        if cached.features.ndim != 3:
            raise ConfigError(f"{recipe.model.name}: the cached features are not pooled vectors "
                              f"(shape {cached.features.shape[1:]}); the audit needs a model with a pooled head input")
        samples = getattr(splits, name)
        kept = np.asarray(cached.labels) >= 0  # an image that vanished since the scan keeps a negative label
        features.append(np.asarray(cached.features[0], dtype=np.float32)[kept])
        labels.append(np.asarray(cached.labels)[kept])
        paths += [os.path.abspath(p) for (p, _), k in zip(samples, kept) if k]
        split.append(np.full(int(kept.sum()), i, dtype=np.int64))
    out = Embeddings(np.concatenate(features), np.concatenate(labels), paths, np.concatenate(split),
                     list(splits.class_names), [(os.path.abspath(p), why) for p, why in splits.skipped])
    if len(out) < 2:
        raise DataError("the audit needs at least two readable images")
    return out


def relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).expanduser().resolve()))
    except ValueError:
        return path
