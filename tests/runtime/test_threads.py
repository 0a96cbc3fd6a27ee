"""tuned_threads: under the command line's policy, measures each candidate thread count on real steps, keeps the
faster and restores the default; without it, leaves threads alone. busy_cores: other processes' CPU, not ours."""

import math
import multiprocessing
import os
import time

import pytest
import torch

from finetune.runtime import threads
from finetune.runtime.threads import busy_cores, cpu_clock, one_thread, tuned_threads


@pytest.fixture
def two_threads(monkeypatch):
    default = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_tuning", True)
    yield
    torch.set_num_threads(default)


def test_keeps_the_faster_thread_count_and_restores_the_default(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "others_busy", lambda since: True)
    seen = []
    for _ in tuned_threads(range(12), probe_every=64, probes=2):
        n = torch.get_num_threads()
        seen.append(n)
        time.sleep(0.02 if n == 2 else 0.001)  # pretend two threads are slower here (a busy machine)
    assert seen[0] == 2 and sorted(seen[1:5]) == [1, 1, 2, 2]  # warm-up, then each candidate twice
    assert set(seen[5:]) == {1}  # the faster one runs the rest
    assert torch.get_num_threads() == 2


def test_an_idle_machine_uses_every_thread_without_probing(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "others_busy", lambda since: False)
    assert {torch.get_num_threads() for _ in tuned_threads(range(8))} == {2}


def test_without_the_policy_threads_are_left_alone(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "_tuning", False)
    monkeypatch.setattr(threads, "others_busy", lambda since: True)  # a busy machine would probe, with the policy
    assert {torch.get_num_threads() for _ in tuned_threads(range(8))} == {2}
    with one_thread():
        assert torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "_tuning", True)
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_busy_cores_counts_other_processes_not_this_one():
    # (wall s, machine CPU s, this process's CPU s): 2 s during which the machine worked 3 CPU-seconds, 1 of them ours
    assert busy_cores((10.0, 100.0, 5.0), (12.0, 103.0, 6.0)) == pytest.approx(1.0)
    assert busy_cores((10.0, 100.0, 5.0), (12.0, 102.0, 7.0)) == pytest.approx(0.0)  # all of it ours
    assert busy_cores((10.0, float("nan"), 5.0), (12.0, float("nan"), 6.0)) == math.inf  # unknown: measure, not assume


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_cpu_clock_reads_the_machine_and_sees_a_busy_core():
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        time.sleep(0.2)
        since = cpu_clock()
        time.sleep(0.5)
        cores = busy_cores(since, cpu_clock())
    finally:
        stop.set()
        spinner.join()
    assert math.isfinite(cores) and cores >= 0.5  # a spinning process: about one core (inf would mean unreadable)


def _spin(stop):
    while not stop.is_set():
        pass


@pytest.mark.parametrize("layout, quota", [
    ({"cgroup": "0::/job\n", "job/cpu.max": "150000 100000\n"}, 1.5),  # v2, a container with --cpus=1.5
    ({"cgroup": "0::/job\n", "job/cpu.max": "max 100000\n"}, None),  # v2, no limit
    ({"cgroup": "4:cpu,cpuacct:/job\n1:name=systemd:/\n", "cpu/job/cpu.cfs_quota_us": "200000\n",
      "cpu/job/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cgroup": "4:cpu,cpuacct:/\n", "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
], ids=["v2", "v2-unlimited", "v1", "v1-unlimited"])
def test_the_cgroup_cpu_quota_is_read_from_either_hierarchy(tmp_path, layout, quota):
    from finetune.runtime.threads import cgroup_cpu_quota

    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path, tmp_path / "cgroup") == quota


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.5)
    assert threads.usable_cpus() == 1  # half a CPU's worth still runs one thread
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_the_command_lines_processes_share_the_cpus_they_may_use():
    import subprocess
    import sys

    code = "from finetune.runtime import process; import torch; process.tune_process(('torch',)); " \
           "print(torch.get_num_threads())"
    cpus = len(os.sched_getaffinity(0))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LOCAL_WORLD_SIZE": str(cpus), "OMP_NUM_THREADS": str(cpus)})
    assert run.stdout.strip() == "1", run.stderr  # torchrun's processes on this machine divide its CPUs
    opt_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "LOCAL_WORLD_SIZE": str(cpus), "OMP_NUM_THREADS": str(cpus),
                                  "FINETUNE_TUNE_THREADS": "0"})
    assert opt_out.stdout.strip() == str(cpus)
