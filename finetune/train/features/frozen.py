"""The frozen part of a run, computed once: the split of the model at its frozen prefix, and the batches the
rest trains on (stored features, or the prefix run on each batch where they cannot be stored).

`FeaturePlan` (config.plan_features) says whether there is a frozen part to store and how many train views;
`prefix.split_frozen` cuts the model where the freeze plan's first trained module runs; the store keeps one
entry per split (train, val), or per input shard of a split from shards, under a key of everything that changes
it. Data parallel: the processes of each machine share the pass, each writing its rows of each entry, which the
first of them finishes.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...config import FeaturePlan
from ...console import literal, progress
from ...data.images import ImageDataset
from ...data.loading import Loaders, one_pass_loader, prefetched
from ...data.sampling import SeededDataset
from ...data.shard_reader import ShardMember
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
        `layout`: (shape, dtype) of one image's prefix output (`layout()`). Images from shards are stored one
        entry per shard (`entry_rows`), so a later run on some of the same shards reuses theirs; the missing
        entries are computed in one pass in the split's order, batch for batch as one entry would be. Data
        parallel: the ranks of each machine that computes share the pass, each writing its rows of the entries."""
        dist, (shape, dtype) = self.compute.dist, layout
        parts = entry_rows(images.samples)
        placed = len(parts) > 1 and kind != "eval"  # augmented views are seeded by place: keyed by it
        keys = [self.key.key([images.samples[i] for i in rows], f"{kind}-draft{images.draft_size}-"
                             f"{self.compute.precision}-{split.boundary}{f'-rows{_digest(rows)}' if placed else ''}")
                for rows in parts]
        first = dist.local_rank == 0  # loads, allocates and finishes the entries of its machine
        stored = [self.store.load(key, name, self.console) if first else None for key in keys]
        missing = [p for p, got in enumerate(stored) if got is None]
        todo = first and bool(missing) and compute and self.store.fits(
            views * sum(len(parts[p]) for p in missing), (shape, dtype))
        began = {p: self.store.begin(keys[p], (views, len(parts[p]), *shape), dtype) for p in missing} if todo else {}
        began = dist.gather([began])[dist.rank - dist.local_rank] if dist.enabled else began
        labels, mine = self._fill(name, images, split, views, parts, began) if began else ({}, [])
        if dist.enabled:  # every rank, computing or not: the images that vanished in each share
            machine = dist.rank - dist.local_rank
            for theirs, got in dist.gather([(machine, mine)]):
                for p, r, y in got if theirs == machine else ():
                    labels[p][r] = y
        for p, tmp in began.items() if first else ():
            stored[p] = self.store.finish(keys[p], tmp, labels[p])
        if dist.enabled:
            dist.barrier()
            if not first:
                stored = [self.store.load(key, name, self.console) for key in keys]
        if any(got is None for got in stored):
            return None
        return stored[0] if len(stored) == 1 else FeatureSet.joined(stored, parts)

    def _fill(self, name: str, images: ImageDataset, split: Split, views: int, parts: list[list[int]],
              began: dict[int, Path]) -> tuple[dict[int, np.ndarray], list[tuple[int, int, int]]]:
        """The prefix's outputs written into the entries `began` (entry p: the images at parts[p]) in one pass in
        the split's order: the entries' labels (an image that vanished since the scan keeps a negative one), and
        (entry, row, label) of the images that vanished in this process's rows. Data parallel: each rank of the
        machine writes a contiguous share of the rows."""
        dist = self.compute.dist
        where = np.full((len(images), 2), -1, dtype=np.int64)  # image i: (its entry, its row there)
        for p in began:
            where[parts[p], 0], where[parts[p], 1] = p, np.arange(len(parts[p]))
        labels = {p: np.array([images.samples[i][1] for i in parts[p]], dtype=np.int64) for p in began}
        rows = np.flatnonzero(where[:, 0] >= 0).tolist()
        share = -(-len(rows) // dist.local_world)
        mine = rows[dist.local_rank * share:(dist.local_rank + 1) * share]
        outs = {p: open_rows(tmp) for p, tmp in began.items()}
        try:
            for v, at, features, got in self._pass(name, images, split, mine, views):
                for p in np.unique(where[at, 0]):  # one write per entry a batch touches
                    sel = where[at, 0] == p
                    r = where[at, 1][sel]
                    outs[p][v, r] = features[sel]
                    labels[p][r] = np.minimum(labels[p][r], got[sel])
        except BaseException:
            if not dist.enabled:  # a rank's partner may still write there; its next run clears it (prepare)
                for tmp in began.values():
                    shutil.rmtree(tmp, ignore_errors=True)
            raise
        for out in outs.values():
            out.flush()
        del outs
        if dist.enabled and dist.main:
            self.console.print(f"features: {name}'s pass shared by the {dist.local_world} processes of this "
                               f"machine, up to {share} images each", style="dim", soft_wrap=True)
        vanished = [(int(p), int(r)) for p, r in where[mine] if labels[p][r] < 0]
        return labels, [(p, r, int(labels[p][r])) for p, r in vanished]

    def layout(self, split: Split, images: ImageDataset) -> tuple:
        """(shape, storage dtype) of the prefix's output, from the first of `images` (val's: no augmentation)."""
        with torch.no_grad(), self.compute.autocast():
            sample = split.prefix(self.compute.to_device(images[0][0][None])).float()
        return tuple(sample.shape[1:]), storage_dtype(sample)

    def _pass(self, name: str, images: ImageDataset, split: Split, rows: list[int], views: int):
        """(view, rows, prefix outputs, labels) batch by batch: the images at `rows`, `views` times. View v of
        image i is augmented under a seed of (seed, v, i), whichever process computes it."""
        cpu = self.compute.device.type == "cpu"  # decode in a thread of this process, as predict does (prefetched)
        with progress(self.console) as bar, torch.inference_mode():
            task = bar.add_task(f"computing {name} features", total=views * len(rows))
            for v in range(views):
                seeds = np.random.SeedSequence([self.seed, v]).generate_state(len(images), np.uint64)
                view = SeededDataset(images)
                ordered = one_pass_loader(_Rows(view, [(i, int(seeds[i] >> 1)) for i in rows]), self.batch_size,
                                          0 if cpu else self.workers, self.seed, not cpu)
                at = 0
                for batch, got in (tuned_threads(prefetched(ordered)) if cpu else ordered):
                    with self.compute.autocast():
                        features = split.prefix(self.compute.to_device(batch))
                    yield v, rows[at:at + len(features)], features.float().cpu().numpy(), got.numpy()
                    at += len(features)
                    bar.advance(task)

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


def entry_rows(samples) -> list[list[int]]:
    """The split's rows each entry stores: one entry per input shard for images from shards (in the order the
    split first meets them), else one for all."""
    if not samples or not isinstance(samples[0][0], ShardMember):
        return [list(range(len(samples)))]
    shards: dict[str, list[int]] = {}
    for i, (member, _) in enumerate(samples):
        shards.setdefault(member.shard, []).append(i)
    return list(shards.values())


def _digest(rows: list[int]) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


class _Rows(torch.utils.data.Dataset):
    """dataset[items[j]] as item j: some rows of a dataset, each with its own key (SeededDataset's (index, seed))."""

    def __init__(self, dataset, items: list):
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        return self.dataset[self.items[j]]
