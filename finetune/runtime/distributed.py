"""Data-parallel training on PyTorch's own engine: one process per device, started by torchrun.

torchrun (or `finetune train --nproc N`, which calls it) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `from_environment` joins the process group (NCCL on CUDA, gloo on CPU) and gives each rank its
device from LOCAL_RANK. A single process is a `Dist` of one, where every collective is the identity, so the
training code reads the same in both cases.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError, first_line

TIMEOUT = datetime.timedelta(minutes=10)  # a rank that cannot reach the others, or waits this long at a collective


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # the ranks on this machine (torchrun numbers them rank - local_rank onwards)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder, prints and plots."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64 on the CPU for gloo, on the device for NCCL)."""
        if not self.enabled:
            return list(values)
        device = torch.device("cuda", self.local_rank) if _backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.enabled else flag

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def share(self, obj):
        """Rank 0's `obj`, on every rank (a plain picklable object: the split, the run folder)."""
        if not self.enabled:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, make):
        """make() run by rank 0 alone, its result (or its error) on every rank: work done once, such as checking
        every file or making the run folder, that the other ranks must agree on."""
        if not self.enabled:
            return make()
        result = None
        if self.main:
            try:
                result = (True, make())
            except Exception as exc:  # raised on every rank, so none waits forever for the others
                result = (False, exc)
        ok, value = self.share(result)
        if not ok:
            if not self.main:
                value.finetune_shared = True  # rank 0 says it; the others need not
            raise value
        return value

    def gather(self, items: list) -> list:
        """Every rank's items, concatenated, on every rank."""
        if not self.enabled:
            return list(items)
        out = [None] * self.world
        torch.distributed.all_gather_object(out, list(items))
        return [x for part in out for x in part]


def _backend() -> str:
    return torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"


def launched() -> bool:
    """Whether this process was started by torchrun as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device: str = "auto", backend: str = "auto") -> Dist:
    """This rank's Dist from torchrun's variables, the process group joined (NCCL on CUDA, gloo on CPU, unless
    `backend` says otherwise). Outside torchrun: a Dist of one. Errors a user can fix are one line."""
    if not launched():
        return Dist()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start "
                          "distributed training with torchrun (torchrun --nproc_per_node=N -m finetune train ...) "
                          "or finetune train --nproc N, which set them")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and not cuda:
        raise ConfigError("train.dist_backend nccl needs CUDA devices, and this run is on the CPU: use "
                          "train.dist_backend: auto (gloo on CPU) or gloo")
    if cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} has LOCAL_RANK {local} but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes per "
                              "node (--nproc_per_node)")
        torch.cuda.set_device(local)
    try:
        torch.distributed.init_process_group(chosen, timeout=TIMEOUT)
    except Exception as exc:  # a rendezvous that never completes, an address that cannot be reached
        raise ConfigError(f"rank {rank} could not reach the other {world - 1} process(es) at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({type(exc).__name__}: "
                          f"{first_line(exc)}); check that every "
                          "node runs the same torchrun command with the same --rdzv-endpoint") from None
    return Dist(rank, world, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def rank_device(dist: Dist, device: str) -> str:
    """The device of this rank: cuda:LOCAL_RANK for a data-parallel run on GPUs, else `device` as given."""
    if dist.enabled and (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{dist.local_rank}"
    return "cpu" if dist.enabled else device


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
