"""The training data order: a pure function of (seed, epoch), so a run can stop and resume anywhere.

`EpochSampler` draws each epoch's order and one seed per sample from (seed, epoch); `SeededDataset`
runs each sample's augmentation under its own seed. Which worker loads a sample, and when, does not
matter: resuming at step k is skipping k batches of indices, and the number of workers does not
change the result.
"""

from __future__ import annotations

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) in an order fixed by (seed, epoch); skips the first `skip` samples.

    With `weights` (one per sample), draws `size` indices with replacement in proportion to them
    (a balanced sampler) from the same seeded generator, so that stays resumable too."""

    def __init__(self, size: int, seed: int, weights=None):
        self.size, self.seed, self.epoch, self.skip = size, seed, 1, 0
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.size - self.skip)

    def __iter__(self):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch])))
        if self.weights is None:
            order = rng.permutation(self.size)
        else:
            order = rng.choice(self.size, size=self.size, replace=True, p=self.weights)
        seeds = rng.integers(0, 2**63 - 1, size=self.size)
        for i in range(self.skip, self.size):
            yield int(order[i]), int(seeds[i])


class SeededDataset(torch.utils.data.Dataset):
    """dataset[(i, seed)]: dataset[i] with torch's RNG (what torchvision's random transforms use) seeded
    for this one sample, so its augmentation is the same whichever process loads it, and when."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
