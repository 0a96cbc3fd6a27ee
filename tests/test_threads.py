"""tuned_threads: measures each candidate thread count on real steps, keeps the faster, restores the default."""

import time

import torch

from finetune.threads import tuned_threads


def test_keeps_the_faster_thread_count_and_restores_the_default():
    default = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        for _ in tuned_threads(range(12), probe_every=64, probes=2):
            n = torch.get_num_threads()
            seen.append(n)
            time.sleep(0.02 if n == 2 else 0.001)  # pretend two threads are slower here (a busy machine)
        assert seen[0] == 2 and sorted(seen[1:5]) == [1, 1, 2, 2]  # warm-up, then each candidate twice
        assert set(seen[5:]) == {1}  # the faster one runs the rest
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(default)
