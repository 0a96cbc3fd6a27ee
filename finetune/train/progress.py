"""Where a run is, as plain data that last.pt holds: the epoch and step, the metrics rows, the running totals
of the epoch in progress, and every RNG state. Restoring these (with the weights, the optimizer, the schedule and
the data order, a pure function of (seed, epoch): data.sampling) continues a run bit for bit on the CPU."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..runtime.distributed import Dist


def capture_rng() -> dict:
    """Every RNG state as tensors and plain data, so last.pt stays loadable with weights_only=True."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


@dataclass
class Tally:
    """Running totals of one pass; saved mid-epoch so a resumed epoch reports the same means."""
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, correct: int, n: int) -> None:
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n

    def means(self, dist: Dist = Dist()) -> tuple[float, float]:
        """(mean loss, accuracy); data-parallel, over every rank's totals (the same on each rank)."""
        loss_sum, correct, seen = dist.sum([self.loss_sum, self.correct, self.seen])
        return loss_sum / max(1, seen), correct / max(1, seen)

    def total(self, dist: Dist) -> Tally:
        loss_sum, correct, seen = dist.sum([self.loss_sum, self.correct, self.seen])
        return Tally(loss_sum, int(correct), int(seen))


@dataclass
class Progress:
    """Where the run is: saved in last.pt under "resume", plain data only."""
    epoch: int = 1  # the epoch in progress (1-based); epochs + 1 once finished
    step: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    best_acc: float = -1.0
    rows: list = field(default_factory=list)  # metrics rows of finished epochs
    tally: dict = field(default_factory=lambda: asdict(Tally()))  # the epoch in progress
    lrs: dict = field(default_factory=dict)  # learning rates at the start of the epoch in progress
    seconds: float = 0.0  # time spent in the epoch in progress before the last save
    swa: dict | None = None  # train.swa: the average's metrics row, once scored at the end of the run
    world: int = 1  # processes training together (data parallel): a run resumes mid-epoch with as many
