"""Checkpoints are written atomically, read back as the same Checkpoint, and loaded without running anyone's code."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_of

from finetune.checkpoint import Checkpoint
from finetune.errors import CheckpointError
from finetune.models.weights import read_state_dict


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would do to a trusting loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_reads_back_as_it_was_saved(tmp_path):
    saved = checkpoint_of({"w": torch.arange(3.0)}, metrics={"epoch": 2, "val_acc": 0.5},
                          calibration={"temperature": 1.5}, recipe={"train": {"seed": 3}}, resume={"progress": {}})
    saved.save(tmp_path / "c.pt")
    loaded = Checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(loaded.state["w"], saved.state["w"]) and loaded.temperature == 1.5
    assert (loaded.model, loaded.class_names, loaded.preprocessing, loaded.metrics, loaded.recipe, loaded.resume) == \
        (saved.model, saved.class_names, saved.preprocessing, saved.metrics, saved.recipe, saved.resume)
    assert checkpoint_of({}).temperature == 1.0  # never calibrated
    # the file is tensors and plain data in the documented layout, readable without finetune
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert payload["format"] == "finetune/1" and payload["meta"]["class_names"] == ["blue", "red"]
    assert "weights" not in payload["meta"]["model"]


def test_an_interrupted_write_leaves_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint_of({"w": torch.ones(3)}, metrics={"epoch": 1}).save(path)

    real_save = torch.save

    def dies_mid_write(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half a file on disk, as when the process is killed mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_of({"w": torch.zeros(3)}, metrics={"epoch": 2}).save(path)
    monkeypatch.undo()

    loaded = Checkpoint.load(path)
    assert loaded.metrics["epoch"] == 1 and torch.equal(loaded.state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.slow
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
        Checkpoint.load(evil)
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
    checkpoint_of({"w": torch.ones(1000)}).save(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Checkpoint.load(path)
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(bad)


@pytest.mark.parametrize("edit, detail", [
    (lambda p: p["meta"].pop("class_names"), "class_names"),
    (lambda p: p["meta"].update(class_names=[1, 2]), "list of two or more names"),
    (lambda p: p["meta"].update(preprocessing={"size": "big"}), ""),
    (lambda p: p.update(model={"w": "not a tensor"}), "state dict of tensors"),
], ids=["no-class-names", "integer-class-names", "bad-preprocessing", "not-tensors"])
def test_a_hand_edited_checkpoint_is_not_valid(tmp_path, edit, detail):
    path = tmp_path / "edited.pt"
    checkpoint_of({"w": torch.ones(2)}).save(path)
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"is not a valid finetune checkpoint: .*{detail}"):
        Checkpoint.load(path)


def test_an_older_calibration_with_only_a_temperature_loads_with_defaults(tmp_path):
    from finetune.checkpoint import Calibration

    path = tmp_path / "old.pt"
    checkpoint_of({"w": torch.zeros(2)}).save(path)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["calibration"] = {"temperature": 1.7}  # as written before the rest was stored
    torch.save(payload, path)
    loaded = Checkpoint.load(path)
    assert loaded.calibration == Calibration(temperature=1.7)
    assert loaded.temperature == 1.7 and loaded.reject_threshold is None


def test_the_training_embeddings_and_the_knn_threshold_travel_in_the_checkpoint_as_float16(tmp_path):
    from finetune.checkpoint import Calibration, EmbeddingBank, Rejection

    vectors = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    knn = Rejection(0.62, score="knn", k=1, correct_images=8)
    ckpt = checkpoint_of({"w": torch.zeros(2)}, calibration=Calibration(reject=Rejection(0.4), reject_knn=knn),
                         embeddings=EmbeddingBank(vectors, sampled_from=40, seed=3))
    ckpt.save(tmp_path / "best.pt")
    loaded = Checkpoint.load(tmp_path / "best.pt")
    assert loaded.embeddings.vectors.dtype == torch.float16 and loaded.embeddings.sampled_from == 40
    assert torch.allclose(loaded.embeddings.vectors.float(), vectors, atol=1e-3)
    assert loaded.calibration.reject_knn == knn and loaded.reject_threshold == 0.4  # the probability one
    assert "embeddings" not in torch.load(tmp_path / "best.pt", weights_only=True)["meta"]  # tensors beside it


def test_an_older_rejection_reads_as_the_probability_score_and_a_damaged_bank_is_refused(tmp_path):
    from finetune.checkpoint import Calibration, EmbeddingBank, Rejection

    path = tmp_path / "old.pt"
    checkpoint_of({"w": torch.zeros(2)}, calibration=Calibration(reject=Rejection(0.4))).save(path)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["calibration"]["reject"] = {"threshold": 0.4, "false_rejection": 0.05,
                                                "score": "calibrated top-1 probability"}  # as written before knn
    torch.save(payload, path)
    loaded = Checkpoint.load(path)
    assert loaded.calibration.reject.score == "probability" and loaded.embeddings is None
    assert loaded.calibration.reject_knn is None

    for bank, detail in ((torch.full((3, 4), float("nan")), "NaN or inf"), (torch.ones(4), "not a matrix")):
        payload["embeddings"] = EmbeddingBank(torch.ones(2, 4), 2).to_dict() | {"vectors": bank}
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match=f"training embeddings .*{detail}|{detail}"):
            Checkpoint.load(path)
    payload.pop("embeddings")
    payload["meta"]["calibration"]["reject_knn"] = {"threshold": -3.0, "score": "knn", "k": 1}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a knn score"):
        Checkpoint.load(path)
