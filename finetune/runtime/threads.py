"""CPU threads for the frozen forward pass, chosen by measuring rather than assumed.

torch starts one thread per core. When the cores are also busy (our own DataLoader workers decoding,
other programs), every op waits at a barrier for its slowest thread and the pool runs slower than
fewer threads would: on a loaded 2-core machine, EfficientNet-Lite0 forward ran 17 images/s on one
thread and 6 on two; ResNet-50 4.4 and 2.7. On an idle machine the full pool wins, and a probe on half
the cores only costs time (0.4-0.6 s of a 6 s predict on hymenoptera val). So when other programs keep
the cores busy, time a few batches with each candidate, keep the faster, and check again now and then
as the load changes; on an idle machine use them all.

Used for the frozen feature pass (train.features) and predict, whose outputs were bit-identical on one and
two threads for both models above; not for training steps, whose gradient reductions may split differently
across threads, and the same seed must give the same run.

torch's thread count belongs to the whole process, so all of this is a policy the command line turns on
(`process.tune_process`); with it off (a library call from someone's Python) threads are left alone.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

_tuning = False  # set by enable_tuning(), from the command line's entry
CGROUP = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, a scheduler's cpuset) and its cgroup's CPU quota
    (a container started with --cpus=2 on a 64-core host has 2, though it sees 64), whichever is smaller."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def cgroup_cpu_quota(root: Path = CGROUP, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup may use per period (cgroup v2 cpu.max, v1 cpu.cfs_quota_us), None without a
    limit or off Linux."""
    try:
        parts = {}
        for line in membership.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            parts[controllers] = path
        if "" in parts:  # v2: one unified hierarchy
            quota, period = (root / parts[""].lstrip("/") / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        cpu = next(path for names, path in parts.items() if "cpu" in names.split(","))
        folder = next(f for f in (root / "cpu" / cpu.lstrip("/"), root / "cpu,cpuacct" / cpu.lstrip("/"),
                                  root / "cpu") if (f / "cpu.cfs_quota_us").is_file())
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, StopIteration):
        return None


def fit_threads_to_cpus() -> int:
    """torch's thread count no higher than the usable CPUs, shared among the processes torchrun started on this
    machine (LOCAL_WORLD_SIZE): a process-wide setting, made by the command line's entry. Returns the count."""
    share = max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    if share < torch.get_num_threads():
        torch.set_num_threads(share)
    return torch.get_num_threads()


def enable_tuning(on: bool = True) -> None:
    global _tuning
    _tuning = on


def tuning_enabled() -> bool:
    return _tuning


def tuned_threads(batches, probe_every: int = 64, probes: int = 1):
    """Yield from `batches`, timing the caller's work on each (the time until it asks for the next).

    Each cycle of `probe_every` batches starts with a warm-up batch on all cores, during which the CPU time
    of other processes is measured. If they used half a core or more, the next batches try each candidate
    thread count (all cores, half of them) and the faster runs the rest of the cycle; else all cores do.
    Without the tuning policy, just the batches."""
    if not _tuning:
        yield from batches
        return
    default = torch.get_num_threads()
    half = max(1, default // 2)
    schedule = [c for _ in range(probes) for c in (default, half)]  # alternate, so load changes hit both alike
    best, timings, busy = default, {default: [], half: []}, False
    try:
        for i, batch in enumerate(batches):
            step = i % probe_every - 1  # -1: the warm-up that opens a cycle
            probing = busy and 0 <= step < len(schedule)
            torch.set_num_threads(schedule[step] if probing else best)
            clock = cpu_clock() if step == -1 else None
            start = time.perf_counter()
            yield batch
            if clock is not None:
                busy = half != default and others_busy(clock)
                best = best if busy else default
            elif probing:
                timings[schedule[step]].append(time.perf_counter() - start)
                if step == len(schedule) - 1:
                    best = min((default, half), key=lambda c: statistics.median(timings[c]))
                    timings = {default: [], half: []}
    finally:
        torch.set_num_threads(default)


@contextmanager
def one_thread(when: bool = True):
    """A block of tiny ops (a linear head on pooled features) on one thread, under the tuning policy: a thread
    pool whose synchronisation costs more than the maths is ~25x slower (0.07 s vs 1.8 s per hymenoptera
    epoch on a busy 2-core machine). The count is restored when the block ends."""
    if not (_tuning and when):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_clock() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds the whole machine has worked, CPU seconds this process has, all threads).
    The machine's share is read from Linux's /proc/stat; elsewhere it is unknown (nan)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        machine = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        machine = float("nan")
    return time.perf_counter(), machine, time.process_time()


def others_busy(since: tuple[float, float, float], cores: float = 0.5) -> bool:
    """Whether other processes kept `cores` cores' worth busy on average since the `cpu_clock()` reading
    `since`. True when that cannot be known, so the thread count is measured rather than assumed."""
    return busy_cores(since, cpu_clock()) >= cores


def busy_cores(since: tuple[float, float, float], now: tuple[float, float, float]) -> float:
    """How many cores' worth other processes used between two `cpu_clock()` readings; inf when unknown."""
    wall, machine, own = (b - a for a, b in zip(since, now))
    if wall <= 0 or machine != machine:  # nan: not Linux
        return float("inf")
    return (machine - own) / wall
