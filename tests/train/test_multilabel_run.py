"""task multilabel in a run: recipe refusals, BCE on the multi-hot targets, val mAP choosing best.pt, the
per-label thresholds in both checkpoints, and the solved head as one-vs-rest logistic regression."""

import csv

import pytest
import torch
from conftest import make_multilabel_set

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train.head_solver import fit_linear_head, objective
from finetune.train.loop import fit


def multilabel_tree(tiny_tree: dict, root, **strategy) -> dict:
    return {**tiny_tree, "task": "multilabel", "data": {**tiny_tree["data"], "root": str(root)},
            "strategy": {**tiny_tree["strategy"], **strategy}, "train": {**tiny_tree["train"], "epochs": 3}}


@pytest.mark.parametrize("change, what", [
    ({"data": {"mixup": 0.2}}, "data.mixup/data.cutmix"),
    ({"train": {"label_smoothing": 0.1}}, "train.label_smoothing"),
    ({"data": {"sampler": "balanced"}}, "data.sampler balanced"),
    ({"data": {"class_weights": "auto"}}, "data.class_weights auto"),
    ({"train": {"swa": {"start_epoch": 2}}}, "train.swa"),
    ({"distill": {"teacher": "teacher.pt"}}, "distill matches"),
])
def test_what_assumes_one_class_per_image_is_refused(change, what):
    build_recipe(change)  # fine for multiclass
    with pytest.raises(ConfigError, match=f"task multilabel: {what}"):
        build_recipe({"task": "multilabel", **change})


def test_the_solved_head_is_one_logistic_regression_per_label():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = torch.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0), (x[:, 3] > 0.5)], 1).float()
    joint = fit_linear_head(x, y, 3, l2=1e-2)
    for k in range(3):  # the objective is separable: each label alone gives the same row
        alone = fit_linear_head(x, y[:, [k]], 1, l2=1e-2)
        torch.testing.assert_close(joint.weight[k], alone.weight[0], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(joint.bias[k], alone.bias[0], atol=1e-4, rtol=1e-3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(joint.logits(x).double(), y.double()) * 3
    assert objective(joint, x, y, 1e-2) == pytest.approx(float(bce + 0.5e-2 * (joint.weight.double() ** 2).sum()))
    assert ((joint.logits(x) > 0) == (y > 0.5)).float().mean() > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_a_run_stores_thresholds_and_chooses_best_by_val_map(tiny_tree, tmp_path, solver, capsys):
    data = make_multilabel_set(tmp_path / "ml")
    strategy = {"name": "last-stage", "lr": {"head": 0.05, "last_stage": 0.01}} if solver == "sgd" else {}
    run = fit(build_recipe(multilabel_tree(tiny_tree, data, head_solver=solver, **strategy)))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert "val_map" in rows[0] and len(rows) == (3 if solver == "sgd" else 1)
    best, last = Checkpoint.load(run / "best.pt"), Checkpoint.load(run / "last.pt")
    assert best.task == "multilabel" and best.class_names == ["blue", "red", "striped"]
    scores = [float(r["val_map"]) for r in rows]
    assert best.metrics["val_map"] == pytest.approx(max(scores))  # mAP chooses (ties: the lower val loss)
    for ckpt in (best, last):
        assert ckpt.temperature == 1.0 and len(ckpt.calibration.thresholds) == 3
        assert all(0 <= t <= 1 for t in ckpt.calibration.thresholds)
    said = capsys.readouterr()
    assert "val mAP" in (said.out + said.err).replace("\n", " ")
    if solver == "lbfgs":
        assert float(rows[0]["head_l2"]) > 0 and float(rows[0]["val_map"]) > 0.8  # colours and stripes: easy


@pytest.mark.slow
def test_batch_size_auto_searches_on_the_multilabel_step(tiny_tree, tmp_path, monkeypatch):
    from finetune.train import batch_size

    monkeypatch.setattr(batch_size, "TIMED_STEPS", 1)
    data = make_multilabel_set(tmp_path / "ml")
    tree = multilabel_tree(tiny_tree, data, name="last-stage", lr={"head": 0.05, "last_stage": 0.01})
    run = fit(build_recipe({**tree, "train": {**tree["train"], "epochs": 1, "batch_size": "auto"}}))
    assert Checkpoint.load(run / "best.pt").recipe["train"]["batch_size"] in (2, 4, 8, 16)
