"""Batches for the part of the model after a frozen prefix: the stored features, or the prefix run on each batch.

Either kind is built from what it is made of, given explicitly (a dataset or the image batches, the sampler, the
batch size), and says `set_epoch(epoch, skip)` like the image batches do, so the loop treats all three alike and
cached and uncached runs see the same samples in the same order.
"""

from __future__ import annotations

import torch

from ...runtime.device import Compute
from ...runtime.threads import one_thread
from ..prefix import Split
from .store import FeatureSet


class CachedBatches:
    """Batches of stored features in `sampler`'s order; epoch e reads view (e - 1) mod K (always view 0 without
    augmentation)."""

    def __init__(self, features: FeatureSet, sampler, batch_size: int, seed: int, pin_memory: bool = False):
        self.features, self.sampler = features, sampler
        self.loader = torch.utils.data.DataLoader(features, batch_size=batch_size, sampler=sampler, num_workers=0,
                                                  pin_memory=pin_memory,  # its own generator: a sampler-less val
                                                  generator=torch.Generator().manual_seed(seed))  # draws nothing

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, skip)
        self.features.view = (epoch - 1) % self.features.views

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # A head on pooled features (views x N x dim) is a few tiny matmuls per step: one thread (runtime.threads);
        # a last stage's convs keep them all.
        with one_thread(self.features.features.ndim == 3):
            yield from self.loader


class PrefixedBatches:
    """Image batches turned into prefix outputs by the fast frozen copy as they arrive (train's random
    augmentations, or a store that cannot be written)."""

    def __init__(self, batches, split: Split, compute: Compute):
        self.batches, self.split, self.compute = batches, split, compute

    @property
    def loader(self):  # data.loading.stopped_workers finds the worker processes through it
        return self.batches

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for images, *labels in self.batches:  # labels, and soft targets with mixup/cutmix
            with torch.no_grad(), self.compute.autocast():  # not across the yield: the step needs its own grad mode
                features = self.split.prefix(self.compute.to_device(images))
            yield features, *labels
