"""`train --nproc N`: bounded by the machine, and a rank killed by a signal is said to be so."""

from types import SimpleNamespace

import pytest
from conftest import invoke, write_yaml

from finetune.errors import ConfigError, RankLost
from finetune.runtime import launch


def test_more_processes_than_usable_cpus_are_refused_on_the_cpu(monkeypatch):
    monkeypatch.setattr(launch, "usable_cpus", lambda: 2)
    launch.check_nproc(2, "cpu")
    launch.check_nproc(1, "auto")
    with pytest.raises(ConfigError, match=r"--nproc 64 on the CPU: this process may use 2 CPU\(s\).*use --nproc 2"):
        launch.check_nproc(64, "cpu")


def test_nproc_is_taken_out_of_the_relaunched_arguments():
    assert launch.without_nproc(["train", "r.yaml", "--nproc", "2", "--set", "a=1"]) == ["r.yaml", "--set", "a=1"]
    assert launch.without_nproc(["--x", "train", "--nproc=2", "r.yaml"]) == ["r.yaml"]


def test_exit_codes_of_failed_ranks():
    failed = lambda *codes: {rank: SimpleNamespace(exitcode=c) for rank, c in enumerate(codes)}  # noqa: E731
    assert launch.exit_code(failed(1, 1)) == 1
    assert launch.exit_code(failed(143, 1)) == 143  # a stop wins: the run can be resumed
    with pytest.raises(RankLost, match="rank 1 of this run was killed by SIGKILL"):
        launch.exit_code(failed(1, -9))


def test_train_refuses_nproc_beyond_the_cpus_before_starting_anything(tiny_tree, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_tree)
    code, _, err = invoke("train", recipe, "--nproc", "64", "--set", "train.batch_size=64")
    assert code == 1 and "--nproc 64 on the CPU" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
