"""tuned_threads: measures each candidate thread count on real steps, keeps the faster, restores the default."""

import os
import time

import torch

import finetune.threads as threads
from finetune.threads import cpu_clock, others_busy, tuned_threads


def test_keeps_the_faster_thread_count_and_restores_the_default(monkeypatch):
    monkeypatch.setattr(threads, "others_busy", lambda since: True)
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


def test_an_idle_machine_uses_every_thread_without_probing(monkeypatch):
    monkeypatch.setattr(threads, "others_busy", lambda since: False)
    default = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert {torch.get_num_threads() for _ in tuned_threads(range(8))} == {2}
    finally:
        torch.set_num_threads(default)


def test_others_busy_sees_another_process_but_not_this_one():
    import multiprocessing

    clock = cpu_clock()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # this process's own work does not count
        pass
    own_work_busy = others_busy(clock)
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        time.sleep(0.2)
        clock = cpu_clock()
        time.sleep(0.3)
        assert others_busy(clock)
    finally:
        stop.set()
        spinner.join()
    assert not own_work_busy or os.getloadavg()[0] > 1  # (unless other programs are busy right now)


def _spin(stop):
    while not stop.is_set():
        pass
