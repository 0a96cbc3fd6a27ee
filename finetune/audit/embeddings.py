"""The audit's input: every train and val image's pooled embedding, label and path, in file order.

The embeddings come through the feature store's public API (train.features), so an audit after a feature-extract
run (or a second audit) reads them from disk instead of running the backbone again, and they are exactly what the
head trains on. The audit always looks at the eval transform (no augmentation) and the backbone's pooled output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import FeaturePlan, Recipe, StrategySpec
from ..data.doctor import training_screen
from ..data.folders import Splits, resolve_splits
from ..data.images import ImageDataset
from ..data.loading import resolve_workers
from ..data.transforms import eval_transform
from ..errors import ConfigError, DataError
from ..models.registry import create_model
from ..runtime.device import resolve_compute, seed_everything
from ..train.batch_size import STORED_FEATURES_BATCH
from ..train.features.frozen import FrozenFeatures, frozen_split
from ..train.features.key import FeatureKey
from ..train.features.store import FeatureSet, FeatureStore, store_root
from ..train.freeze import plan_freeze

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


def load_embeddings(recipe: Recipe, console) -> Embeddings:
    """The pooled embeddings of the recipe's train and val images, read from the feature store (computed into it
    first when they are not there): the backbone frozen whole, the eval transform for both splits, so every image
    has one embedding, the one a feature-extract run of this recipe without augmentation trains its head on."""
    if recipe.features.cache != "auto":
        raise ConfigError("finetune audit reads the frozen-feature cache: set features.cache: auto (the default)")
    cfg = recipe.train
    compute = resolve_compute(cfg.device, cfg.amp)
    seed_everything(cfg.seed)
    splits = resolve_splits(recipe.data.root, recipe.data.val_fraction, cfg.seed,
                            screen=lambda tree: training_screen(tree, console, recipe.data.root))
    model, info = create_model(recipe.model, len(splits.class_names), recipe.data.image_size)
    plan = plan_freeze(model, info, StrategySpec(name="feature-extract"))
    plan.apply(model)
    model.to(compute.device, memory_format=torch.channels_last)
    pre = info.preprocessing
    images = {name: ImageDataset(getattr(splits, name), eval_transform(pre), pre.resize, pre.size) for name in SPLITS}
    split = frozen_split(model, plan, FeaturePlan(cached=True, train_views=1), images["val"], compute, console,
                         info.head_input)
    if split is None:
        raise ConfigError(f"{recipe.model.name}: the audit needs the model's pooled features, and the model could "
                          "not be cut before its head (see the line above)")
    frozen = FrozenFeatures(FeatureStore(store_root(recipe.features.dir, recipe.data.root)),
                            FeatureKey.of(recipe.model, pre), compute, console, seed=cfg.seed,
                            batch_size=STORED_FEATURES_BATCH if cfg.batch_size == "auto" else cfg.batch_size,
                            workers=resolve_workers(recipe.data.workers))
    writable = not frozen.store.prepare()
    layout = frozen.layout(split, images["val"])
    sets = [frozen.read_or_compute(name, images[name], "eval", 1, split, layout, compute=writable) for name in SPLITS]
    if any(s is None for s in sets):
        raise ConfigError("finetune audit needs the frozen features cached, and they could not be: set features.dir "
                          "or $FINETUNE_CACHE_DIR to a writable folder with free space")
    return _embeddings(sets, splits, recipe.model.name)


def _embeddings(sets: list[FeatureSet], splits: Splits, model_name: str) -> Embeddings:
    features, labels, paths, split = [], [], [], []
    for i, (name, cached) in enumerate(zip(SPLITS, sets)):
        if cached.features.ndim != 3:
            raise ConfigError(f"{model_name}: the cached features are not pooled vectors "
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
