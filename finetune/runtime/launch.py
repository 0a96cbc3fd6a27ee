"""`finetune train --nproc N`: the same command again under torch.distributed.run (torchrun), N processes on this
machine with the rendezvous on localhost. Each rank speaks for itself; the launcher only says what the ranks
cannot (one of them killed by a signal) and exits as the ranks did."""

from __future__ import annotations

import logging
import os
import signal

import torch

from ..errors import ConfigError, RankLost
from .threads import usable_cpus


def check_nproc(nproc: int, device: str) -> None:
    """One process per GPU, or at most one per usable CPU: more only share the same cores (each with a copy of the
    model and its loaders) until memory runs out."""
    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise ConfigError(f"--nproc {nproc}: this machine has {gpus} GPU(s), one process each; use --nproc {gpus} "
                          "or fewer")
    cpus = usable_cpus()
    if not gpus and nproc > cpus:
        raise ConfigError(f"--nproc {nproc} on the CPU: this process may use {cpus} CPU(s), and more processes than "
                          f"CPUs only share them (each holding the model and its own loaders); use --nproc {cpus} "
                          "or fewer")


def without_nproc(argv: list[str]) -> list[str]:
    """The arguments after `train`, less --nproc N / --nproc=N."""
    rest = argv[argv.index("train") + 1:]
    for i, arg in enumerate(rest):
        if arg == "--nproc":
            return rest[:i] + rest[i + 2:]
        if arg.startswith("--nproc="):
            return rest[:i] + rest[i + 1:]
    return rest


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `finetune train ARGV...` on `nproc` local processes; the exit code the run should end with."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.run", "torch.distributed.elastic"):  # the ranks speak for themselves
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # the usable CPUs shared out (torchrun's own default is 1 thread each); an explicit setting wins
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "finetune", "train",
                        *without_nproc(argv)]))
    except ChildFailedError as exc:
        return exit_code(exc.failures)
    except SignalException as exc:  # Ctrl-C/SIGTERM: torchrun passed it on; rank 0 saved last.pt and said so
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return 0


def exit_code(failures: dict) -> int:
    """The ranks that failed, by torchrun: a rank that exited has said why in one line; one killed by a signal
    (the OOM killer, kill -9) could not, so it is said here (and the others' "a peer process stopped")."""
    codes = {rank: f.exitcode for rank, f in failures.items()}
    killed = {rank: -code for rank, code in codes.items() if code < 0}
    if killed:
        rank, number = min(killed.items())
        raise RankLost(f"rank {rank} of this run was killed by {_signal_name(number)} (out of memory, or stopped "
                         "from outside); last.pt holds the last completed epoch: continue with finetune train "
                         "--resume RUN_DIR")
    stopped = [c for c in codes.values() if c in (130, 143)]
    return stopped[0] if stopped else max(codes.values())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

