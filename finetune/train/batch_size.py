"""train.batch_size auto: the batch size found for this machine before the run, on real training steps (forward,
backward, optimizer step, under the run's autocast) on real batches of the run's own training images at its image
size, through the run's own step (optimizer, EMA, clipping) and its frozen prefix.

- CUDA: the largest power of two per process whose steps fit with MARGIN of the device's memory left, found by a
  binary search over the powers of two; a step that runs out (torch.cuda.OutOfMemoryError) empties the cache and
  the search goes lower, as Lightning's BatchSizeFinder does. The margin is for what the search does not run:
  the val pass, DDP's gradient buckets, the loaders' pinned batches, fragmentation over a long run.
- CPU, where time runs out before memory: the power of two with the most training images per second, from 2 up,
  each timed over TIMED_STEPS steps after a warm-up one; a size must beat the best so far by RISE (noise on a
  shared machine) to be taken, and the second in a row that is not ends the search (one trial slowed by another
  program must not), as does one whose images would need
  more than MEMORY_SHARE of the RAM still available, or whose steps would take over TRIAL_SECONDS.
- Only the head on stored features (feature-extract with the features cached, or the head solved by L-BFGS): a
  step is a few small matrix products whatever the batch, so the batch size is an optimisation setting, not the
  machine's, and auto takes STORED_FEATURES_BATCH.

The search trains nothing: the searched steps run on a step of their own, built by the caller and dropped after,
and the model's weights, buffers, gradients and modes and every RNG are put back (`untouched`), so a run with auto
is the run with the size it found, bit for bit. Data parallel: every rank searches its own device (the ranks are
not yet wrapped, so no collective runs) and all take the smallest size found; the recorded batch is that times the
number of processes. The size is per batch: with train.accumulate N an optimizer step averages N of them, and no
learning rate is rescaled (docs/performance.md).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
import torch
from torch import nn

from ..console import progress
from ..data.images import ImageDataset
from ..data.sampling import SeededDataset
from ..errors import ConfigError, NonFiniteLoss, ResourceError
from ..runtime.device import Compute
from ..runtime.memory import available_memory, peak_resident_memory, resident_memory
from .prefix import Split
from .progress import capture_rng, restore_rng
from .step import TrainStep

MARGIN = 0.10  # CUDA: the share of the device's memory a found size leaves free
MAX_AUTO = 1024  # images per process at most: beyond it the learning rate would need rescaling, which auto never does
MIN_STEPS = 8  # steps an epoch, at least, that the chosen batch leaves
STORED_FEATURES_BATCH = 32  # the head alone on stored features: TrainSpec's default
TIMED_STEPS = 3  # CPU: steps timed per size (their median), after one warm-up step
RISE = 0.05  # CPU: a larger size is taken only for this much more images/s
PATIENCE = 2  # CPU: sizes in a row that are not taken before the search ends (one slow trial on a busy machine)
MEMORY_SHARE = 0.5  # CPU: a size whose step would take more than this share of the available RAM is not tried
TRIAL_SECONDS = 300.0  # CPU: a size whose steps would take longer than this at the best rate so far is not tried


@dataclass(frozen=True)
class Found:
    """The batch size auto chose, per process, and what the console line says of it."""
    size: int
    why: str
    measured: dict[int, float] = field(default_factory=dict)  # CPU: images/s per size; CUDA: peak GiB (nan: OOM)


def find_batch_size(new_step: Callable[[], TrainStep], images: ImageDataset, split: Split | None, stored: bool,
                    compute: Compute, seed: int, console) -> int:
    """train.batch_size auto: the global batch size for this machine (per process x processes), said in one line.
    `new_step()` builds a training step like the run's, for the search alone; `split` is the model cut at its
    frozen prefix, whose outputs are `stored` (computed once, not per step) or computed on each batch."""
    dist = compute.dist
    # at least MIN_STEPS steps an epoch: the ragged last batch, dropped, is then under 1/MIN_STEPS of the images (a
    # batch of 256 on 450 images left out 194 of them every epoch) and the schedule has steps to work with
    cap = min(MAX_AUTO, len(images) // (MIN_STEPS * dist.world))
    if stored and split is not None and split.only_boundary:
        found = Found(STORED_FEATURES_BATCH, "the head trains on stored features, where a step costs next to nothing "
                                             "at any batch size: the default")
    elif cap < 2:
        found = Found(2, f"too few train images per process for {MIN_STEPS} steps an epoch of two or more: two, "
                         "the fewest a training BatchNorm layer takes")
    else:
        sizes = [2 ** k for k in range(1, cap.bit_length())]
        trials = Trials(new_step(), images, split, stored, compute, seed)
        cuda = compute.device.type == "cuda"
        with untouched(trials.step.model), progress(console) as bar:  # at most: CPU stops early, CUDA bisects
            task = bar.add_task("train.batch_size auto: training steps", total=len(sizes).bit_length() if cuda
                                else len(sizes))
            found = (_on_cuda if cuda else _on_cpu)(trials, sizes, lambda: bar.advance(task))
        del trials
        _release(compute.device)
    size = int(min(dist.gather([found.size]))) if dist.enabled else found.size
    where = f"{size} per process, the smallest of {dist.world} processes' searches; " if dist.enabled else ""
    console.print(f"train.batch_size auto: {size * dist.world} ({where}{found.why})", soft_wrap=True)
    return size * dist.world


class Trials:
    """Training steps of a given batch size on the run's own images (decoded once, the first `size` of them, each
    augmented under its own seed as the run's loader does), through a step of their own."""

    def __init__(self, step: TrainStep, images: ImageDataset, split: Split | None, stored: bool, compute: Compute,
                 seed: int):
        self.step, self.images, self.split, self.stored = step, SeededDataset(images), split, stored
        self.compute, self.seed, self.decoded = compute, seed, []

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of `size` images: images, or the frozen prefix's outputs when those are stored."""
        while len(self.decoded) < size:
            i = len(self.decoded)
            self.decoded.append(self.images[(i, int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0]))])
        inputs = torch.stack([x for x, _ in self.decoded[:size]])
        labels = torch.tensor([y for _, y in self.decoded[:size]])
        if self.stored and self.split is not None:
            inputs = self.prefix(inputs)
        return inputs, labels

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.compute.autocast():  # as train.features.batches.PrefixedBatches runs it
            return self.split.prefix(self.compute.to_device(images))

    def run(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One optimizer step, from the batch as the loader gives it (the prefix run on it when not stored)."""
        inputs, labels = batch
        if self.split is not None and not self.stored:
            inputs = self.prefix(inputs)
        try:
            self.step([(inputs, labels)])
        except NonFiniteLoss as exc:
            raise ConfigError(f"train.batch_size auto: the training loss became {exc.value} in the search's first "
                              f"steps (batch {len(labels)}): lower strategy.lr, or set train.batch_size to a "
                              "number") from None


def _on_cpu(trials: Trials, sizes: list[int], advance) -> Found:
    """The size with the most training images/s (see the module's docstring for the rule)."""
    free, start = available_memory(), resident_memory() or peak_resident_memory()
    rates, best, used, misses = {}, None, 0, 0
    trials.step.train_mode()
    for size in sizes:
        if best is not None and free is not None and used * size / best > MEMORY_SHARE * free:
            break  # memory grows with the batch: this size would take too large a share of the RAM
        if best is not None and (1 + TIMED_STEPS) * size / rates[best] > TRIAL_SECONDS:
            break  # the search would take minutes
        batch = trials.batch(size)
        trials.run(batch)  # warm-up: the allocator and the optimizer's state
        seconds = []
        for _ in range(TIMED_STEPS):
            clock = perf_counter()
            trials.run(batch)
            seconds.append(perf_counter() - clock)
        rates[size] = size / statistics.median(seconds)
        used = max(used, peak_resident_memory() - start)
        advance()
        if best is not None and rates[size] <= rates[best] * (1 + RISE):
            misses += 1
            if misses == PATIENCE:
                break
            continue
        best, misses = size, 0
    timed = ", ".join(f"{n}: {r:.1f}" for n, r in rates.items())
    return Found(best, f"the most training images/s on this CPU, median of {TIMED_STEPS} steps per size: {timed}",
                 rates)


def _on_cuda(trials: Trials, sizes: list[int], advance) -> Found:
    """The largest size whose steps fit in the device's memory with MARGIN left."""
    device = trials.compute.device
    free, _ = torch.cuda.mem_get_info(device)
    budget = (1 - MARGIN) * (free + torch.cuda.memory_reserved(device))  # what this process holds is its own too
    trials.step.train_mode()

    def peak(size: int) -> float:
        torch.cuda.reset_peak_memory_stats(device)
        batch = trials.batch(size)
        for _ in range(2):  # the second step holds the optimizer's state beside the activations
            trials.run(batch)
        torch.cuda.synchronize(device)
        advance()
        return torch.cuda.max_memory_reserved(device)

    size, measured = largest_fitting(peak, sizes, budget, device)
    if size is None:
        raise ResourceError(f"train.batch_size auto: not even a batch of {sizes[0]} fits in {device}'s memory "
                            "with its margin: lower data.image_size, or use strategy.name feature-extract")
    gib = {n: (b / 2**30 if b == b else b) for n, b in measured.items()}
    larger = [n for n in gib if n > size]
    return Found(size, f"the largest power of two that fits in {device}'s memory with {MARGIN:.0%} left: peak "
                       f"{gib[size]:.1f} of {budget / (1 - MARGIN) / 2**30:.1f} GiB"
                       + (f"; {min(larger)} did not fit" if larger else ""), gib)


def largest_fitting(peak: Callable[[int], float], sizes: list[int], budget: float,
                    device: torch.device | None = None) -> tuple[int | None, dict[int, float]]:
    """(the largest of `sizes` whose `peak(size)` memory is within `budget`, {size: peak; nan where it ran out}):
    a binary search over the sizes (ascending; memory grows with them). Out of memory is one answer: the cache is
    emptied and the search goes lower. (None, ...) when not even the smallest fits."""
    lo, hi, best, measured = 0, len(sizes) - 1, None, {}
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            measured[sizes[mid]] = peak(sizes[mid])
        except torch.cuda.OutOfMemoryError:
            measured[sizes[mid]] = float("nan")
        if measured[sizes[mid]] != measured[sizes[mid]]:  # after the except block, whose error held the failed
            _release(device)  # step's tensors through its traceback: the cache emptied for the next try
        if measured[sizes[mid]] <= budget:  # nan (out of memory) is never within it
            best, lo = sizes[mid], mid + 1
        else:
            hi = mid - 1
    return best, measured


def _release(device: torch.device | None) -> None:
    """The device memory of what the search no longer holds, back to the device (CUDA; nothing to do on the CPU)."""
    if device is not None and device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@contextmanager
def untouched(model: nn.Module):
    """The block's training steps leave no trace: the model's weights and buffers (copied to the CPU, where they
    take no device memory from the search), gradients, train/eval modes, and every RNG are as they were after it."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = capture_rng()
    try:
        yield
    finally:
        model.load_state_dict(weights)
        for n, p in model.named_parameters():
            p.grad = None if grads[n] is None else grads[n].to(p.device)
        for n, m in model.named_modules():
            m.training = modes[n]
        restore_rng(rng)
