"""The frozen part of a run, computed once: the split of the model at its frozen prefix, and the batches the
rest trains on (stored features, or the prefix run on each batch where they cannot be stored).

`FeaturePlan` (config.plan_features) says whether there is a frozen part to store and how many train views;
`prefix.split_frozen` cuts the model where the freeze plan's first trained module runs; the store keeps one
entry per split (train, val) under a key of everything that changes it. Data parallel: the processes of
each machine share the pass, each writing its rows of one entry, which the first of them finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...config import FeaturePlan
from ...console import literal, progress
from ...data.images import ImageDataset
from ...data.loading import Loaders, one_pass_loader, prefetched
from ...data.sampling import SeededDataset
from ...models.adapters import HeadInput
from ...runtime.device import Compute
from ...runtime.threads import tuned_threads
from ..freeze import FreezePlan
from ..prefix import Split, split_frozen
from .batches import CachedBatches, PrefixedBatches
from .key import FeatureKey
from .store import FeatureSet, FeatureStore, open_rows, storage_dtype

PROBE_IMAGES = 4  # real val images that drive the cut and check it reproduces the model


def frozen_split(model: nn.Module, plan: FreezePlan, features: FeaturePlan, val_images: ImageDataset,
                 compute: Compute, console, head_input: HeadInput | None = None) -> Split | None:
    """The model cut at its frozen prefix, when the feature plan stores one and the cut reproduces the model's
    forward on real images; else None (the whole model runs every step), saying why. `head_input`: the model
    adapter's feature seam (ModelInfo.head_input), the prefix when only the head trains."""
    if not features.cached:
        return None
    probe = torch.stack([val_images[i][0] for i in range(min(PROBE_IMAGES, len(val_images)))])
    split, why = split_frozen(model, list(plan.roots), compute.to_device(probe), plan.frozen_bn, head_input)
    if split is None:
        console.print(f"features: the whole model runs every step: {literal(why)}", style="dim")
    return split


@dataclass(frozen=True)
class FrozenFeatures:
    """A run's frozen features: the store they live in, their key material, and how the feature pass runs."""
    store: FeatureStore
    key: FeatureKey
    compute: Compute
    console: object
    seed: int  # of train's augmented views: view v draws from (seed, v)
    batch_size: int
    workers: int  # decoding processes on a GPU (on a CPU a thread of this process decodes)

    def batches(self, split: Split, loaders: Loaders, plan: FeaturePlan, train_kind: str):
        """(train batches, val batches) for the part after the prefix: stored features where they can be, the
        prefix on each batch where not (train's fresh augmentations, an unwritable store, a full disk)."""
        start, dist = time.perf_counter(), self.compute.dist
        first = dist.local_rank == 0  # loads, allocates and finishes the entries of its machine
        unwritable = self.store.prepare(clean=first)
        if unwritable:
            self.console.print(f"[yellow]features: the cache folder {literal(self.store.root)} cannot be written "
                               f"({literal(unwritable)}): the frozen part runs every epoch instead. Set features.dir "
                               "or $FINETUNE_CACHE_DIR to a folder you can write[/]", soft_wrap=True)
        out, recomputed = [], {}
        layout = self.layout(split, loaders.val_images)
        for name, images, kind, views, sampler, image_batches in (
                ("train", loaders.train_images, train_kind, plan.train_views, loaders.sampler, loaders.train),
                ("val", loaders.val_images, "eval", 1, loaders.val_sampler, loaders.val)):
            stored = None
            if views:
                stored = self.read_or_compute(name, images, kind, views, split, layout,
                                              compute=first and not unwritable)
            if stored is not None:
                out.append(CachedBatches(stored, sampler, loaders.batch_size, loaders.seed, loaders.pin_memory))
            else:
                recomputed[name] = plan.reason if not views else "" if unwritable else "not enough free disk"
                out.append(PrefixedBatches(image_batches, split, self.compute))
        self._say(split, recomputed, time.perf_counter() - start)
        return out[0], out[1]

    def read_or_compute(self, name: str, images: ImageDataset, kind: str, views: int, split: Split,
                        layout: tuple, compute: bool = True) -> FeatureSet | None:
        """The stored features of `images` (`views` views of transform `kind`), computed and stored first when
        they are not and `compute` allows (None when they cannot be: no room on disk, an unwritable store).
        `layout`: (shape, dtype) of one image's prefix output (`layout()`). Data parallel: the ranks of each
        machine that computes share the pass, each writing its rows of one entry; the others read it."""
        dist = self.compute.dist
        key = self.key.key(images.samples, f"{kind}-draft{images.draft_size}-{self.compute.precision}-"
                                           f"{split.boundary}")
        first = dist.local_rank == 0
        features = self.store.load(key, name, self.console) if first else None
        shape, dtype = layout
        size = (views, len(images), *shape)
        todo = first and features is None and compute and self.store.fits(views * len(images), (shape, dtype))
        labels = np.array([label for _, label in images.samples], dtype=np.int64)
        if not dist.enabled:
            return self.store.write(key, size, dtype, labels, self._filler(name, images, split)) if todo else features
        tmp = dist.gather([self.store.begin(key, size, dtype) if todo else None])[dist.rank - dist.local_rank]
        done = []
        if tmp is not None:  # this machine computes: its ranks' contiguous shares of the rows
            share = -(-len(images) // dist.local_world)
            rows = range(dist.local_rank * share, min(len(images), (dist.local_rank + 1) * share))
            out = open_rows(tmp)
            self._filler(name, images, split, rows)(out, labels)
            out.flush()
            del out
            done = [(dist.rank - dist.local_rank, rows.start, labels[rows.start:rows.stop].tolist())]
            if dist.main:
                self.console.print(f"features: {name}'s pass shared by the {dist.local_world} processes of this "
                                   f"machine, up to {share} images each", style="dim", soft_wrap=True)
        for machine, start, part in dist.gather(done):  # the labels of images that vanished, from every share
            if machine == dist.rank - dist.local_rank:
                labels[start:start + len(part)] = part
        if tmp is not None and first:
            features = self.store.finish(key, tmp, labels)
        dist.barrier()
        return features if first else self.store.load(key, name, self.console)

    def layout(self, split: Split, images: ImageDataset) -> tuple:
        """(shape, storage dtype) of the prefix's output, from the first of `images` (val's: no augmentation)."""
        with torch.no_grad(), self.compute.autocast():
            sample = split.prefix(self.compute.to_device(images[0][0][None])).float()
        return tuple(sample.shape[1:]), storage_dtype(sample)

    def _filler(self, name: str, images: ImageDataset, split: Split, rows: range | None = None):
        """What writes the prefix's outputs of `images` (in file order; `rows` of them), view after view, into an
        entry. View v of image i is augmented under a seed of (seed, v, i), whichever process computes it."""
        cpu = self.compute.device.type == "cpu"  # decode in a thread of this process, as predict does (prefetched)
        rows = range(len(images)) if rows is None else rows

        def fill(out: np.ndarray, labels: np.ndarray) -> None:
            with progress(self.console) as bar, torch.inference_mode():
                task = bar.add_task(f"computing {name} features", total=len(out) * len(rows))
                for v in range(len(out)):
                    seeds = np.random.SeedSequence([self.seed, v]).generate_state(len(images), np.uint64)
                    view = SeededDataset(images)
                    ordered = one_pass_loader(_Rows(view, [(i, int(seeds[i] >> 1)) for i in rows]), self.batch_size,
                                              0 if cpu else self.workers, self.seed, not cpu)
                    row = rows.start
                    for batch, got in (tuned_threads(prefetched(ordered)) if cpu else ordered):
                        with self.compute.autocast():
                            features = split.prefix(self.compute.to_device(batch))
                        out[v, row:row + len(features)] = features.float().cpu().numpy()
                        # an image that vanished since the pre-scan keeps its negative label (missing_label)
                        labels[row:row + len(features)] = np.minimum(labels[row:row + len(features)], got.numpy())
                        row += len(features)
                        bar.advance(task)
        return fill

    def _say(self, split: Split, recomputed: dict[str, str], seconds: float) -> None:
        cached = [name for name in ("train", "val") if name not in recomputed]
        if cached:
            self.console.print(f"features: the frozen part before {split.boundary} ran once per image for "
                               f"{' and '.join(cached)}, ready in {seconds:.1f}s (cache {literal(self.store.root)})",
                               style="dim")
        for name, why in recomputed.items():
            if why:
                self.console.print(f"features: for {name}, the frozen part runs every epoch, BatchNorm folded "
                                   f"({why})", style="dim", soft_wrap=True)


class _Rows(torch.utils.data.Dataset):
    """dataset[items[j]] as item j: some rows of a dataset, each with its own key (SeededDataset's (index, seed))."""

    def __init__(self, dataset, items: list):
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        return self.dataset[self.items[j]]
