"""The training order of streamed shards (data.shuffle_buffer): what webdataset's shard shuffle + shuffle(N) do,
as a pure function of (seed, epoch, rank), so a streamed run resumes mid-epoch bit for bit as any other run does.

Each epoch the train shards are shuffled and dealt to the ranks (rank r takes every world-th one); each rank reads
its shards through, one after the other, member by member in tar order, and a buffer of `buffer` images chooses what
comes out: an image is trained on at most `buffer - 1` places after the place it was read at, so reading stays
sequential within a rank's own shards (a shared or network filesystem reads a shard front to back, never the whole
set at random). Every rank trains the same fixed number of images an epoch (a whole number of batches): a rank whose
shards hold fewer reads its first ones again, one with more leaves the rest, and the dealing changes every epoch.
The images are still read by their offset (data.shard_reader.ShardMember), so which worker decodes which image does
not matter: the number of workers does not change the result, as with data.sampling.EpochSampler.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .shard_reader import ShardMember


def shard_streams(samples: list) -> list[list[int]]:
    """The positions of `samples` (a split read from shards) grouped by shard, each group in tar order, the shards
    in name order."""
    by_shard: dict[str, list[int]] = {}
    for i, (member, _) in enumerate(samples):
        if not isinstance(member, ShardMember):
            raise ConfigError("data.shuffle_buffer streams WebDataset shards, and data.root is not shards: write them "
                              "with `finetune shard DIR OUT` and train on OUT, or set data.shuffle_buffer to null")
        by_shard.setdefault(member.shard, []).append(i)
    return [sorted(group, key=lambda i: samples[i][0].offset) for _, group in sorted(by_shard.items())]


def buffered(stream: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """`stream` through a shuffle buffer: the first `buffer` items fill it, each later one takes the place of an item
    drawn from it, which comes out; what is left comes out in random order at the end."""
    if buffer <= 1 or len(stream) <= 1:
        return stream.copy()
    held = stream[:buffer].copy()
    out = np.empty_like(stream)
    picks = rng.integers(0, len(held), size=max(0, len(stream) - len(held)))
    for n, (item, j) in enumerate(zip(stream[len(held):], picks)):
        out[n], held[j] = held[j], item
    out[len(stream) - len(held):] = rng.permutation(held)
    return out


class StreamSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) in the streamed order (module docstring); `set_epoch(epoch, skip)` as
    data.sampling.EpochSampler, `skip` counting global positions (whole global batches)."""

    def __init__(self, shards: list[list[int]], seed: int, buffer: int):
        self.shards = [np.asarray(s, dtype=np.int64) for s in shards if s]
        self.size, self.seed, self.buffer, self.epoch, self.skip = sum(map(len, self.shards)), seed, buffer, 1, 0
        self.rank, self.world, self.batch = 0, 1, self.size or 1

    def batched(self, global_batch: int, rank: int = 0, world: int = 1) -> StreamSampler:
        if len(self.shards) < world:
            raise ConfigError(f"data.shuffle_buffer streams each process its own train shards, and there are "
                              f"{len(self.shards)} for {world} processes: write smaller shards (finetune shard "
                              "--shard-size) or set data.shuffle_buffer to null")
        self.rank, self.world, self.batch = rank, world, global_batch
        return self

    @property
    def per_rank(self) -> int:
        """Images each rank trains on per epoch: whole batches of its share, or its share when that is under one."""
        share, batch = self.size // self.world, max(1, self.batch // self.world)
        return share // batch * batch or share

    @property
    def smallest_batch(self) -> int:
        return min(max(1, self.batch // self.world), self.per_rank)

    @property
    def dropped(self) -> int:
        return self.size - self.per_rank * self.world

    @property
    def epoch_note(self) -> str:
        return (f"; streamed: each process trains on {self.per_rank} images an epoch, read from its own shards "
                f"through a shuffle buffer of {self.buffer}")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip // self.world

    def order(self) -> np.ndarray:
        """This rank's epoch: the positions it trains on, in order."""
        dealt = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch])))
        mine = [self.shards[i] for i in dealt.permutation(len(self.shards))[self.rank::self.world]]
        stream = np.concatenate(mine)
        stream = np.resize(stream, max(len(stream), self.per_rank))  # too few: its first shards again
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch, self.rank])))
        return buffered(stream, self.buffer, rng)[:self.per_rank]

    def __iter__(self):
        order = self.order()
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch, self.rank, 1])))
        seeds = rng.integers(0, 2**63 - 1, size=len(order))
        for i in range(self.skip // self.world, len(order)):
            yield int(order[i]), int(seeds[i])
