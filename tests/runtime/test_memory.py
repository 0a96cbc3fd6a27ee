"""memory: a batch reuses the pages the last one freed; objects built under long_lived are left to live."""

import gc
import os
import resource
import weakref

import pytest
import torch

from finetune.runtime.memory import (
    available_memory,
    keep_freed_memory,
    long_lived,
    peak_resident_memory,
    resident_memory,
)

GLIBC = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_batches_reuse_freed_memory_without_faulting_its_pages_in_again():
    def batch():  # 64 MB, freed at once, as a batch's activations are: glibc as shipped unmaps it
        torch.empty(16 << 20).fill_(1.0)

    assert keep_freed_memory()
    for _ in range(30):  # torch's aligned allocations leave a few freed blocks unused before they merge
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        batch()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages = 5 * (64 << 20) // resource.getpagesize()
    assert faults < pages // 10, f"{faults} page faults for {pages} pages"  # as shipped: one per page


def test_long_lived_objects_are_left_to_live_and_collection_resumes():
    class Node:
        pass

    assert gc.isenabled()
    with long_lived():
        assert not gc.isenabled()
        cycle = Node()
        cycle.self = cycle
        alive = weakref.ref(cycle)
    assert gc.isenabled()
    try:
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: no collection walks it, or frees it, before exit
        gc.unfreeze()
        gc.collect()
        assert alive() is None  # unfrozen it is ordinary garbage again
    finally:
        gc.unfreeze()


def test_available_memory_is_the_kernels_figure_or_the_cgroups_nearer_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    8000000 kB\n")
    membership, cgroup = tmp_path / "membership", tmp_path / "cgroup"
    membership.write_text("0::/job\n")  # cgroup v2: 3 GB limit, 1 GB used
    (cgroup / "job").mkdir(parents=True)
    (cgroup / "job" / "memory.max").write_text("3000000000\n")
    (cgroup / "job" / "memory.current").write_text("1000000000\n")
    assert available_memory(meminfo, cgroup, membership) == 2_000_000_000
    (cgroup / "job" / "memory.max").write_text("max\n")
    assert available_memory(meminfo, cgroup, membership) == 8_000_000 * 1024
    membership.write_text("4:memory:/v1job\n")  # cgroup v1
    (cgroup / "memory" / "v1job").mkdir(parents=True)
    (cgroup / "memory" / "v1job" / "memory.limit_in_bytes").write_text("2000000000\n")
    (cgroup / "memory" / "v1job" / "memory.usage_in_bytes").write_text("500000000\n")
    assert available_memory(meminfo, cgroup, membership) == 1_500_000_000
    assert available_memory(tmp_path / "absent", cgroup, membership) is None


def test_the_peak_and_the_present_resident_memory_are_in_the_same_unit():
    # ru_maxrss is KiB on Linux, statm counts pages: in bytes both, the peak is not below the present (the kernel
    # updates the peak lazily: within a few pages), and torch alone holds more than 10 MiB
    assert peak_resident_memory() >= 0.9 * resident_memory() > 10 << 20
