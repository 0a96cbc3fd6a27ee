"""Checkpoints are written atomically and loaded without running anyone's code."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.checkpoint import atomic_write, check_disk_space, load_checkpoint, save_checkpoint
from finetune.errors import CheckpointError, ResourceError
from finetune.models.registry import read_state_dict


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would do to a trusting loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_an_interrupted_write_leaves_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(3)}, {"metrics": {"epoch": 1}})

    real_save = torch.save

    def dies_mid_write(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half a file on disk, as when the process is killed mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"metrics": {"epoch": 2}})
    monkeypatch.undo()

    payload = load_checkpoint(path)
    assert payload["meta"]["metrics"]["epoch"] == 1 and torch.equal(payload["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_atomic_write_replaces_and_keeps_the_users_file_mode(tmp_path):
    path = tmp_path / "metrics.csv"
    atomic_write(path, lambda f: f.write(b"old"))
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("style", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, style):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    obj = {"format": "finetune/1", "meta": {}, "model": {"w": torch.ones(1)}, "x": Payload(marker)}
    if style == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj))
    assert not marker.exists()

    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pt.*would run code") as refused:
        load_checkpoint(evil)
    if style == "torch.save":
        assert "posix.system" in str(refused.value)  # names what it would have called
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(evil)  # the same file offered as model.weights
    out = subprocess.run([sys.executable, "-m", "finetune", "predict", str(evil), str(tmp_path)],
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 1 and "refusing to load" in out.stderr and "Traceback" not in out.stderr
    assert "weights_only" not in out.stderr  # never advise turning the safety off
    assert not marker.exists()


def test_a_truncated_checkpoint_is_called_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(1000)}, {})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(bad)


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
