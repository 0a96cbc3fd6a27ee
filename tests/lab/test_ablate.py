"""`finetune ablate` end to end on a tiny generated folder: the CSVs' rows, the PNGs, the output folder rules."""

import csv
import subprocess
import sys

import pytest
import torch
from conftest import make_folder
from PIL import Image

from finetune.errors import ConfigError, DataError
from finetune.lab.ablate import AblationSpec, _output_folder, run_ablation
from finetune.lab.tensors import augment, load_tensors


@pytest.fixture
def tiny(tmp_path):
    return make_folder(tmp_path / "tiny", {"train": 6, "val": 3})


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_one_epoch_writes_the_csvs_and_pngs_with_the_right_rows(tiny, tmp_path):
    spec = AblationSpec(tiny, output=tmp_path / "out", depths=(8, 14), epochs=1, batch_size=4, image_size=16)
    result = run_ablation(spec)
    rows = _read(tmp_path / "out" / "ablation.csv")
    assert [(r["net"], r["epoch"]) for r in rows] == [("plain-8", "1"), ("resnet-8", "1"), ("plain-14", "1"),
                                                      ("resnet-14", "1")]
    for r in rows:
        assert 0 <= float(r["train_error"]) <= 1 and 0 <= float(r["val_error"]) <= 1
    grads = _read(tmp_path / "out" / "gradflow.csv")
    assert len(grads) == 2 * 2 * (8 + 14)  # both twins, init and after epoch 1, every weighted layer
    first = {(g["net"], g["moment"]): float(g["grad_norm"]) for g in grads if g["layer_index"] == "1"}
    assert set(first) == {(n, m) for n in ("plain-8", "resnet-8", "plain-14", "resnet-14")
                          for m in ("init", "after epoch 1")}
    assert all(v > 0 for v in first.values())
    for png in ("errors.png", "gradflow.png"):
        with Image.open(tmp_path / "out" / png) as im:
            assert im.format == "PNG" and im.width > 500
    assert result.output == tmp_path / "out" and len(result.final()) == 4


def test_every_net_sees_the_same_batches(tiny):
    data = load_tensors(tiny, 16, seed=0)
    batches = []
    for _ in range(2):
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(data.train_y), generator=g)
        batches.append((perm, augment(data.train_x[perm[:4]], g)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert data.train_x.shape[1:] == (3, 16, 16) and data.train_x.dtype == torch.uint8


@pytest.mark.slow
def test_never_overwrites_and_never_writes_into_the_dataset(tiny, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        run_ablation(AblationSpec(tiny, output=tmp_path / "taken", depths=(8,), epochs=1))
    with pytest.raises(ConfigError, match="inside the dataset"):
        run_ablation(AblationSpec(tiny, output=tiny / "results", depths=(8,), epochs=1))
    with pytest.raises(DataError, match="not a folder"):
        run_ablation(AblationSpec(tmp_path / "nowhere", output=tmp_path / "fresh", depths=(8,), epochs=1))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ConfigError, match="6n\\+2"):
        run_ablation(AblationSpec(tiny, output=tmp_path / "new", depths=(10,), epochs=1))


@pytest.mark.slow
def test_command_line_defaults_to_a_new_folder_under_runs(tiny, tmp_path):
    args = [sys.executable, "-m", "finetune", "ablate", "--data", str(tiny), "--depths", "8", "--epochs", "1",
            "--batch-size", "4", "--image-size", "16"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("ablate") and "resnet-8 epoch 1: train error" in first.stderr
    assert (tmp_path / "runs" / "ablate" / "errors.png").is_file()
    # the next run gets a new folder beside it, never the same one
    assert _output_folder(AblationSpec(tiny, runs_dir=tmp_path / "runs")) == tmp_path / "runs" / "ablate-2"
    bad = subprocess.run(args[:6] + ["--depths", "20,x"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "--depths" in bad.stderr
