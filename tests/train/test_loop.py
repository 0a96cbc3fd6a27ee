"""fit(): reproducible, and every problem it can see coming stops it before the first epoch."""

import csv
import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from conftest import make_folder, make_image

from finetune.config import build_recipe
from finetune.errors import CheckpointError, ConfigError, DataError, ResourceError
from finetune.train.loop import fit


def metrics(run_dir: Path) -> list[dict]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.slow
def test_same_seed_same_metrics_different_seed_different_run(tiny_tree, tmp_path):
    tiny_tree["data"]["augment"] = "standard"  # random crops and flips: the seed must pin them down
    runs = [fit(build_recipe({**tiny_tree, "train": {**tiny_tree["train"], "seed": seed}})) for seed in (0, 0, 7)]
    assert metrics(runs[0]) == metrics(runs[1])
    assert metrics(runs[0]) != metrics(runs[2])
    w = [torch.load(r / "last.pt", weights_only=True)["model"] for r in runs]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert not all(torch.equal(w[0][k], w[2][k]) for k in w[0])

    env = json.loads((runs[2] / "environment.json").read_text())
    assert env["seed"] == 7 and env["torch"] == str(torch.__version__)
    assert {"python", "torchvision", "timm", "numpy", "finetune"} <= set(env)
    assert torch.load(runs[2] / "best.pt", weights_only=True)["meta"]["environment"]["seed"] == 7


@pytest.mark.slow
def test_loader_workers_are_stopped_when_fit_returns(tiny_tree, monkeypatch):
    """Not left to exit, where torch 2.11 waited 5 s for each (data.loading.stopped_workers). The loaders are kept
    alive here, as a caller's frame or a traceback would keep them: their workers must be gone all the same."""
    import finetune.data.loading as loading

    made = []
    real = loading.make_loader
    monkeypatch.setattr(loading, "make_loader", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    tiny_tree["data"].update(augment="standard", workers=1)  # augmented: the train loader runs every epoch
    before = set(multiprocessing.active_children())
    fit(build_recipe(tiny_tree))
    assert len(made) == 2 and all(loader.num_workers == 1 for loader in made)
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.parametrize("change, error, message", [
    ({"run": {"output": "{tmp}/a-file/run"}}, ConfigError, "cannot create the run folder"),
    ({"data": {"root": "{tmp}/nowhere"}}, DataError, "is not a folder"),
    ({"train": {"device": "cuda:7"}}, ConfigError, "no such CUDA device"),
    ({"model": {"weights": "{tmp}/other.pt"}}, CheckpointError, r"do not fit the model: missing .*shape mismatch"),
], ids=["unwritable-output", "missing-data", "no-such-device", "weights-misfit"])
def test_fails_before_the_first_epoch(tiny_tree, tmp_path, change, error, message):
    (tmp_path / "a-file").write_text("a file where a folder would go")
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3), "stray.weight": torch.zeros(1)}, tmp_path / "other.pt")
    tree = {k: dict(v) for k, v in tiny_tree.items()}
    for section, values in change.items():
        tree[section].update({k: v.format(tmp=tmp_path) for k, v in values.items()})
    with pytest.raises(error, match=message):
        fit(build_recipe(tree))
    assert not (tmp_path / "runs").exists()  # no run folder, no half-made run


def test_too_little_disk_fails_before_the_run_folder_is_made(tiny_tree, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match="not enough free disk space"):
        fit(build_recipe(tiny_tree))
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.slow
def test_ema_is_evaluated_beside_the_raw_weights_and_is_what_the_checkpoints_hold(tiny_tree, monkeypatch):
    from finetune.train import state

    seen = {}
    real = state.RunState.save_epoch

    def keep(self, best):
        seen.update(raw=self.step.model.state_dict()["classifier.weight"].clone(),
                    ema=self.step.ema.module.state_dict()["classifier.weight"].clone())
        real(self, best)

    monkeypatch.setattr(state.RunState, "save_epoch", keep)
    tiny_tree["train"]["ema"] = 0.5
    run = fit(build_recipe(tiny_tree))
    rows = metrics(run)
    assert {"val_acc", "val_loss", "val_acc_raw", "val_loss_raw"} <= set(rows[0])
    last = torch.load(run / "last.pt", weights_only=True)
    assert torch.equal(last["model"]["classifier.weight"], seen["ema"])  # what scored
    assert torch.equal(last["resume"]["train_model"]["classifier.weight"], seen["raw"])  # what trains on
    assert not torch.equal(seen["ema"], seen["raw"])


@pytest.mark.slow
def test_early_stop_ends_the_run_says_so_and_stays_stopped(tiny_tree, capsys):
    from finetune.train.loop import stopped_early
    from finetune.train.resume import load_run_recipe

    rows = [{"val_acc": a, "val_loss": 1.0} for a in (0.5, 0.7, 0.7, 0.6)]
    assert not stopped_early(rows[:3], 2) and stopped_early(rows, 2) and not stopped_early(rows, None)
    tiny_tree["train"].update(epochs=8, early_stop=1)
    tiny_tree["strategy"]["lr"] = {"head": 0.5}  # blue vs red: val accuracy is 1.0 at once, then cannot improve
    run = fit(build_recipe(tiny_tree))
    assert len(metrics(run)) < 8
    assert "stopped early" in capsys.readouterr().err
    before = (run / "last.pt").read_bytes()
    fit(load_run_recipe(run), resume_dir=run)  # resuming it trains nothing more
    assert len(metrics(run)) < 8 and (run / "last.pt").read_bytes() == before


def _bn_resnet_tree(root: Path, tmp_path: Path, per_class: int, extra: int = 0, batch: int = 8) -> dict:
    """A BatchNorm ResNet trained last-stage at 32 px: layer4's output is 1x1, so a batch of one image leaves its
    BatchNorm one value per channel."""
    make_folder(root, {"train": per_class, "val": 2})
    for i in range(extra):
        make_image(root / "train" / "red" / f"extra{i}.png", (200, 50, 40), seed=100 + i)
    return {"model": {"source": "torchvision", "name": "resnet18", "weights": None},
            "data": {"root": str(root), "image_size": 32, "augment": "flip", "workers": 0},
            "strategy": {"name": "last-stage", "lr": {"head": 0.01, "last_stage": 0.01}},
            "train": {"epochs": 1, "batch_size": batch}, "run": {"output": str(tmp_path / "run")}}


@pytest.mark.slow
def test_the_ragged_last_batch_is_left_out_and_said_so(tmp_path, capsys):
    # 57 train images in batches of 8: 7 full batches and one of a single image, which crashed BatchNorm
    run = fit(build_recipe(_bn_resnet_tree(tmp_path / "data", tmp_path, per_class=28, extra=1)))
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 1
    assert torch.load(run / "last.pt", weights_only=True)["resume"]["progress"]["global_step"] == 7
    assert "each epoch leaves out its last 1 train image(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_batch_of_one_image_for_batchnorm_is_refused_before_work(tmp_path):
    tree = _bn_resnet_tree(tmp_path / "data", tmp_path, per_class=4, batch=1)
    with pytest.raises(ConfigError, match=r"a training batch would hold a single image \(train.batch_size 1, on "
                                          r"this data\), and the BatchNorm layers that train \(.*\) need two"):
        fit(build_recipe(tree))
    assert not (tmp_path / "run").exists()
    tree["strategy"] = {"name": "feature-extract", "lr": {"head": 0.01}, "head_solver": "sgd"}  # a linear head:
    fit(build_recipe(tree))  # batches of one are fine
