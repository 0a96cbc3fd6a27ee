"""The run folder: a new one per run, never over another, and checked for room before the first epoch."""

import pytest
import torch

from finetune.config import RunSpec
from finetune.errors import ConfigError, ResourceError
from finetune.train.rundir import check_disk_space, create_run_dir


def test_runs_never_clobber_each_other_unless_exist_ok(tmp_path):
    spec = RunSpec(dir=tmp_path / "runs", name="r")
    assert [create_run_dir(spec).name for _ in range(3)] == ["r", "r-2", "r-3"]
    (tmp_path / "runs" / "r" / "last.pt").write_bytes(b"old")
    assert create_run_dir(RunSpec(dir=tmp_path / "runs", name="r", exist_ok=True)) == tmp_path / "runs" / "r"
    with pytest.raises(ConfigError, match="not empty.*--exist-ok"):
        create_run_dir(RunSpec(output=tmp_path / "runs" / "r"))
    assert create_run_dir(RunSpec(output=tmp_path / "runs" / "r", exist_ok=True)) == tmp_path / "runs" / "r"


def test_too_little_disk_for_checkpoints_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights, 4 MB more per Adam slot
    optimizer = torch.optim.Adam(model.parameters())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ResourceError, match=r"need about 30.8 MB .* 1.0 MB is free"):
        check_disk_space(tmp_path / "not" / "yet" / "made", model, optimizer)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 10**9))
    check_disk_space(tmp_path, model, optimizer)


@pytest.mark.slow
def test_the_run_records_the_data_root_absolute_so_it_is_found_from_any_folder(tiny_tree, tmp_path, monkeypatch):
    from pathlib import Path

    from finetune.checkpoint import Checkpoint
    from finetune.config import build_recipe, read_yaml
    from finetune.train.loop import fit

    root = Path(tiny_tree["data"]["root"])
    monkeypatch.chdir(root.parent)
    tiny_tree["data"]["root"] = root.name  # relative, as recipes in a project usually say
    run = fit(build_recipe(tiny_tree))
    assert read_yaml(run / "recipe.yaml")["data"]["root"] == str(root)
    assert Checkpoint.load(run / "best.pt").recipe["data"]["root"] == str(root)
