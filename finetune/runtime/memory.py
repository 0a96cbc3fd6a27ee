"""How this process manages memory: the C heap that tensors live in, and Python's garbage collector.

Two defaults that suit short programs cost a training run seconds:

- glibc serves blocks over 128 KiB-32 MiB (a batch's activations, tens of MB each) with a fresh mmap,
  unmaps them on free, and gives the top of its heap back to the kernel once 128 KiB of it is free; either
  way the next batch's tensors fault their pages in again, one zeroed 4 KiB page at a time. On the 2-core
  benchmark machine that nearly doubled the time of a forward pass: EfficientNet-Lite0, batch 16, BatchNorm
  folded, ran 46-56 images/s as glibc ships and 84-97 with the heap kept; a ResNet-50 training step took
  12% less time. `keep_freed_memory`.
- torch, torchvision and timm import ~460,000 objects that live until exit, and every full collection
  walks them all: 7 full collections took 0.9 s of a 17 s feature-extract run, and the collection at exit
  1.3 s more. `long_lived`.

Both change the whole process, so only the command line's entry uses them (`process.tune_process`); a
library call such as `finetune.fit()` leaves its host's allocator and collector as they were.

What the process holds and may still take (`resident_memory`, `peak_resident_memory`, `available_memory`) only
reads: train.batch_size auto stops growing a CPU batch before it would take too much of the RAM.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory(keep_mib: int = 1024) -> bool:
    """Serve every allocation from the heap (no per-tensor mmap) and hand free heap back to the kernel only
    beyond `keep_mib`, so memory freed after a batch stays with the process for the next one, until exit.
    The cost is memory: torch asks for 64-byte-aligned blocks, which a freed block of the same size cannot
    hold, so the heap grows by a few of the largest blocks before freed neighbours merge and are reused
    (8 x 64 MB in tests/test_memory.py; peak RSS +100-150 MiB for EfficientNet-Lite0 feature-extract).
    Process-wide; Linux with glibc only, elsewhere nothing changes. True where it took effect."""
    import ctypes  # here, not at the top: the CLI imports this module and `--help` must stay quick

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # no os.confstr (Windows), no such name, no libc symbol
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, keep_mib << 20))


@contextmanager
def long_lived():
    """For code that creates objects which live until exit (imports, the model): no garbage collection while
    it runs, and afterwards the collector leaves every object that exists then alone (gc.freeze)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup"),
                     membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes of RAM this process could still take: the kernel's MemAvailable, or less where its cgroup's limit is
    nearer (v2 memory.max - memory.current, v1 memory.limit_in_bytes - memory.usage_in_bytes). None off Linux."""
    try:
        line = next(t for t in meminfo.read_text().splitlines() if t.startswith("MemAvailable:"))
        free = int(line.split()[1]) * 1024
    except (OSError, ValueError, StopIteration):
        return None
    try:
        for entry in membership.read_text().splitlines():
            _, controllers, path = entry.split(":", 2)
            v2 = controllers == ""
            if v2 or "memory" in controllers.split(","):
                folder = cgroup / ("" if v2 else "memory") / path.lstrip("/")
                limit, used = ("memory.max", "memory.current") if v2 else ("memory.limit_in_bytes",
                                                                           "memory.usage_in_bytes")
                text = (folder / limit).read_text().strip()
                if text != "max":
                    free = min(free, int(text) - int((folder / used).read_text()))
    except (OSError, ValueError):
        pass
    return max(0, free)


def peak_resident_memory() -> int:
    """The most RAM this process has held at once so far, in bytes (getrusage's ru_maxrss: KiB on Linux)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def resident_memory() -> int | None:
    """The RAM this process holds now, in bytes (Linux's /proc/self/statm); None elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
