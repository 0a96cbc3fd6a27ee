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
        self.rank, self.world, self.batch = 0, 1, size or 1  # one batch of all, until batched()

    def batched(self, global_batch: int, rank: int = 0, world: int = 1) -> EpochSampler:
        """Train in global batches of `global_batch` positions. The ragged last one is dropped (as timm's training
        loaders do: a batch of one image breaks BatchNorm in training, and a few images give it noisy statistics),
        unless it is the epoch's only batch; which images it holds changes every epoch with the order.

        Data parallel: this rank's part of every global batch (a contiguous slice of it), so the ranks together
        see each position of the epoch once and a global batch holds the same images whatever the number of
        ranks. An epoch shorter than one batch is split evenly, the slices padded with (data.images.PAD, 0) so
        that every rank takes the same number of steps."""
        self.rank, self.world, self.batch = rank, world, global_batch
        return self

    @property
    def smallest_batch(self) -> int:
        """The fewest real images any rank's batch holds (an epoch shorter than one batch splits unevenly)."""
        if self.size >= self.batch:
            return self.batch // self.world
        share = -(-self.size // self.world)
        return min(n for n in (min(share, self.size - r * share) for r in range(self.world)) if n > 0)

    @property
    def dropped(self) -> int:
        """Positions of each epoch left out: the ragged last batch."""
        return self.size % self.batch if self.size > self.batch else 0

    @property
    def epoch_note(self) -> str:
        """What the run's banner says of the positions each epoch leaves out."""
        n = self.dropped
        return f"; each epoch leaves out its last {n} train image(s), a ragged batch (other ones each epoch)" \
            if n else ""

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """`skip`: positions already trained in this epoch (whole global batches), on resume."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts())

    def __iter__(self):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch])))
        if self.weights is None:
            order = rng.permutation(self.size)
        else:
            order = rng.choice(self.size, size=self.size, replace=True, p=self.weights)
        seeds = rng.integers(0, 2**63 - 1, size=self.size)
        for part in self._parts():
            for i in part:
                yield (int(order[i]), int(seeds[i])) if i is not None else (-1, 0)

    def _parts(self):
        """This rank's positions, one list per global batch (None: padding)."""
        end = self.size - self.dropped
        if self.world == 1:
            return [range(self.skip, end)]
        parts = []
        for start in range(self.skip, end, self.batch):
            stop = min(start + self.batch, end)
            share = -(-(stop - start) // self.world)  # the last batch's share rounds up; full ones are exact
            mine = list(range(start + self.rank * share, min(start + (self.rank + 1) * share, stop)))
            parts.append(mine + [None] * (share - len(mine)))
        return parts


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


class Shard(torch.utils.data.Sampler):
    """Positions rank, rank + world, ...: a rank's share of a fixed order (validation), every position once."""

    def __init__(self, size: int, rank: int, world: int):
        self.size, self.rank, self.world = size, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world))
