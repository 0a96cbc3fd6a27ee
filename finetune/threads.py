"""CPU threads for the frozen forward pass, chosen by measuring rather than assumed.

torch starts one thread per core. When the cores are also busy (our own DataLoader workers decoding,
other programs), every op waits at a barrier for its slowest thread and the pool runs slower than
fewer threads would: on a loaded 2-core machine, EfficientNet-Lite0 forward ran 17 images/s on one
thread and 6 on two; ResNet-50 4.4 and 2.7. On an idle machine the full pool wins. So time a few
batches with each candidate, keep the faster, and check again now and then as the load changes.

Used for the frozen feature pass (features.py), whose outputs were bit-identical on one and two threads
for both models above; not for training steps, whose gradient reductions may split differently across
threads, and the same seed must give the same run.
"""

from __future__ import annotations

import statistics
import time

import torch


def tuned_threads(batches, probe_every: int = 64, probes: int = 1):
    """Yield from `batches`, timing the caller's work on each (the time until it asks for the next) with
    each candidate thread count: all cores, and half of them. The faster one runs the rest of the cycle."""
    default = torch.get_num_threads()
    candidates = sorted({default, max(1, default // 2)}, reverse=True)
    schedule = [c for _ in range(probes) for c in candidates]  # alternate, so load changes hit both alike
    best, timings = default, {c: [] for c in candidates}
    try:
        for i, batch in enumerate(batches):
            step = i % probe_every - 1  # the first batch of a cycle is a warm-up at the current best
            probing = 0 <= step < len(schedule) and len(candidates) > 1
            torch.set_num_threads(schedule[step] if probing else best)
            start = time.perf_counter()
            yield batch
            if probing:
                timings[schedule[step]].append(time.perf_counter() - start)
                if step == len(schedule) - 1:
                    best = min(candidates, key=lambda c: statistics.median(timings[c]))
                    timings = {c: [] for c in candidates}
    finally:
        torch.set_num_threads(default)
