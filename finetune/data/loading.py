"""Batches from datasets: a run's loaders (train in a resumable seeded order, val in file order), DataLoaders seeded
for repeatability, decoding in a background thread, and worker processes stopped when a run ends."""

from __future__ import annotations

import random
import signal
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataSpec
from ..preprocessing import Preprocessing
from ..runtime.distributed import Dist
from ..runtime.threads import usable_cpus
from .folders import Splits
from .images import ImageDataset
from .mixing import MixedBatches
from .sampling import EpochSampler, SeededDataset, Shard
from .streaming import StreamSampler, shard_streams
from .transforms import draft_size, eval_transform, train_transform


def resolve_workers(workers: int | str) -> int:
    """auto: one of the CPUs this process may use stays with the main process (the forward pass), the rest decode,
    at most 4 (more adds memory and start-up time without feeding a CPU forward pass faster)."""
    if workers == "auto":
        return min(4, max(0, usable_cpus() - 1))
    return int(workers)


def prefetched(batches, depth: int = 2):
    """An iterator over `batches`, produced from now on, up to `depth` ahead, by a background thread: loading
    overlaps the caller's work without worker processes to start (PIL decodes and resizes with the GIL
    released). On a 2-core CPU predict ran 33.9 images/s this way against 30.4 with one DataLoader worker
    (median of 5, hymenoptera val)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((end, exc))

    def consume():
        try:
            while True:
                item, exc = q.get()
                if exc is not None:
                    raise exc
                if item is end:
                    return
                yield item
        finally:
            stop.set()

    threading.Thread(target=produce, daemon=True, name="finetune-prefetch").start()
    return consume()


class EpochBatches:
    """A DataLoader's batches in its sampler's order (sampling.EpochSampler): `set_epoch` picks the epoch and the
    positions already trained in it (a resumed run), so the loop says which epoch it is, not the loader."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler):
        self.loader, self.sampler = loader, sampler

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


@dataclass(frozen=True)
class Loaders:
    """A run's batches and what they are made of: the image datasets, the samplers and the per-process batch, so
    that batches of cached features can be built in exactly the same order (train.features)."""
    train: EpochBatches  # or data.mixing.MixedBatches around it, with mixup/cutmix
    val: torch.utils.data.DataLoader  # in file order (this rank's share of it, when data-parallel)
    train_images: ImageDataset
    val_images: ImageDataset
    sampler: EpochSampler | StreamSampler  # train's order: resumable mid-epoch
    val_sampler: torch.utils.data.Sampler | None
    batch_size: int  # per process
    workers: int
    seed: int
    pin_memory: bool


def create_loaders(splits: Splits, pre: Preprocessing, data: DataSpec, seed: int, batch_size: int, dist: Dist,
                   sampler: EpochSampler | None = None, pin_memory: bool = False) -> Loaders:
    """Train batches in an order and with augmentations fixed by (seed, epoch), from `sampler` (a balanced one), a
    shuffle, or streamed shards (data.shuffle_buffer: data.streaming), so a run can resume mid-epoch (sampling), the
    ragged last batch dropped (EpochSampler.batched); val in file order, every image. Data parallel: each rank its
    part of every global batch of `batch_size` and its share of val."""
    workers = resolve_workers(data.workers)
    if sampler is None:
        sampler = EpochSampler(len(splits.train), seed) if data.shuffle_buffer is None else \
            StreamSampler(shard_streams(splits.train), seed, data.shuffle_buffer)
    sampler = sampler.batched(batch_size, dist.rank, dist.world)
    val_sampler = Shard(len(splits.val), dist.rank, dist.world) if dist.enabled else None
    batch = batch_size // dist.world
    train_images = ImageDataset(splits.train, train_transform(pre, data.augment, data.random_erasing),
                                draft_size(pre, data.augment), pre.size)
    val_images = ImageDataset(splits.val, eval_transform(pre), pre.resize, pre.size)
    train = EpochBatches(make_loader(SeededDataset(train_images), batch, workers, seed, pin_memory, sampler), sampler)
    if data.mixup or data.cutmix:
        train = MixedBatches(train, len(splits.class_names), data.mixup, data.cutmix, seed)
    val = make_loader(val_images, batch, workers, seed, pin_memory, val_sampler)
    return Loaders(train, val, train_images, val_images, sampler, val_sampler, batch, workers, seed, pin_memory)


def make_loader(dataset, batch_size: int, workers: int, seed: int, pin_memory: bool = False, sampler=None):
    """Batches in dataset order, or in the sampler's (training: sampling.EpochSampler). Its own seeded generator,
    so no epoch draws from torch's global RNG and the same seed gives the same batches whatever the workers."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        generator=torch.Generator().manual_seed(seed), worker_init_fn=_seed_worker, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def one_pass_loader(dataset, batch_size: int, workers: int, seed: int, pin_memory: bool = False):
    """One pass over `dataset` in its order (the feature pass): seeded like make_loader, no persistent workers."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=pin_memory, worker_init_fn=_seed_worker,
                                       generator=torch.Generator().manual_seed(seed))


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; workers ignore it so the main process can finish its step
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@contextmanager
def stopped_workers(*loaders):
    """Stop the loaders' persistent worker processes when the block ends, while the loaders still exist. Left to
    exit, torch 2.11 with pin_memory (CUDA) never told them to stop and waited 5 s for each before killing it: a
    3-epoch run on an H200 spent 20 of its 38 s exiting (4 workers)."""
    try:
        yield
    finally:
        for loader in loaders:
            while hasattr(loader, "loader"):  # wrappers: EpochBatches, data.mixing.MixedBatches, cached features
                loader = loader.loader
            if loader._iterator is not None:  # where DataLoader keeps its persistent workers (private)
                loader._iterator._shutdown_workers()
                loader._iterator = None
