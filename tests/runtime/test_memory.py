"""memory: a batch reuses the pages the last one freed; objects built under long_lived are left to live."""

import gc
import os
import resource
import weakref

import pytest
import torch

from finetune.runtime.memory import keep_freed_memory, long_lived

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
