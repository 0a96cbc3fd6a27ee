"""train.swa: the checkpoints hold the equal-weight mean of the epochs' weights from start_epoch on, with the
statistics of the BatchNorm layers that trained recomputed for it (the frozen ones untouched), scored on val as
metrics.csv's `swa` row; a stopped run resumes to the same bits; the recipe refuses what it cannot combine with."""

import csv

import pytest
import torch
from torch import nn

from finetune.config import build_recipe
from finetune.errors import ConfigError, RunInterrupted
from finetune.runtime.device import Compute
from finetune.train.loop import fit
from finetune.train.resume import load_run_recipe
from finetune.train.swa import WeightAverage, average_is_best, recompute_batchnorm


def swa_tree(tiny_tree: dict) -> dict:
    """last-stage (trained BatchNorm in the last stage, frozen BatchNorm before it), 3 epochs of 2 steps, the
    average from epoch 2 on."""
    tiny_tree["strategy"] = {"name": "last-stage", "lr": {"head": 0.1, "last_stage": 0.05}}
    tiny_tree["train"].update(epochs=3, swa={"start_epoch": 2})
    tiny_tree["schedule"] = {"name": "constant"}
    return tiny_tree


def weights(path) -> dict:
    return torch.load(path, weights_only=True)


def test_recipe_refuses_swa_with_ema_a_late_start_and_the_solved_head(tiny_tree):
    tiny_tree["train"]["swa"] = {"start_epoch": 1}
    tiny_tree["strategy"]["head_solver"] = None
    assert build_recipe(tiny_tree).strategy.head_solver == "sgd"  # one solve has no epochs to average
    for change, message in ((dict(ema=0.9), "train.swa and train.ema"),
                            (dict(swa={"start_epoch": 3}), "after the last epoch")):
        with pytest.raises(ConfigError, match=message):
            build_recipe({**tiny_tree, "train": {**tiny_tree["train"], **change}})
    tiny_tree["strategy"]["head_solver"] = "lbfgs"
    with pytest.raises(ConfigError, match="train.swa"):
        build_recipe(tiny_tree)


def test_batchnorm_is_recomputed_only_where_it_trains():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    for p in [*net[0].parameters(), *net[1].parameters()]:  # a frozen prefix with its BatchNorm
        p.requires_grad_(False)
    images = torch.randn(6, 3, 5, 5) * 3 + 2
    batches = [(images[:3], torch.zeros(3, dtype=torch.long)), (images[3:], torch.tensor([0, 0, -1]))]
    assert recompute_batchnorm(net, batches, Compute(torch.device("cpu"))) == 1
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and int(net[1].num_batches_tracked) == 0  # frozen
    with torch.no_grad():
        seen = [net[2](net[1](net[0](x[y >= 0]))) for x, y in batches]
    means = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)  # momentum None: the mean of the batches' means
    assert torch.allclose(net[3].running_mean, means, atol=1e-6) and int(net[3].num_batches_tracked) == 2
    assert not net.training and net[3].momentum == 0.1


@pytest.mark.slow
def test_checkpoints_hold_the_mean_of_the_epochs_and_its_batchnorm(tiny_tree, monkeypatch):
    seen = {}
    real = WeightAverage.update

    def keep(self, model, epoch):
        seen[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        real(self, model, epoch)

    monkeypatch.setattr(WeightAverage, "update", keep)
    run = fit(build_recipe(swa_tree(tiny_tree)))
    last = weights(run / "last.pt")
    params = set(last["resume"]["swa_model"])
    assert any(not torch.equal(seen[2][k], seen[3][k]) for k in params)  # the epochs differ: something to average
    for k in params:  # the equal-weight mean of epochs 2 and 3, not epoch 1
        assert torch.allclose(last["model"][k], (seen[2][k] + seen[3][k]) / 2, atol=1e-6), k
    assert int(last["resume"]["swa_n_averaged"]) == 2
    # BatchNorm: the trained layers' statistics reset and recomputed over one pass of the 2 train batches (not the
    # 6 steps of training); the frozen ones' never counted a batch (torch's update_bn would reset them too)
    counts = {k[:-len("num_batches_tracked")]: int(v) for k, v in last["model"].items()
              if k.endswith("num_batches_tracked")}
    assert set(counts.values()) == {0, 2}
    trained_bn = next(k for k, n in counts.items() if n == 2) + "running_mean"
    assert not torch.equal(last["model"][trained_bn], seen[3][trained_bn])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "swa"]
    assert float(rows[-1]["val_acc"]) == last["meta"]["metrics"]["val_acc"] and rows[-1]["train_acc"] == ""
    best = weights(run / "best.pt")
    epochs = [{"val_acc": float(r["val_acc"]), "val_loss": float(r["val_loss"])} for r in rows[:3]]
    swa_row = {"val_acc": float(rows[-1]["val_acc"]), "val_loss": float(rows[-1]["val_loss"])}
    assert (best["meta"]["metrics"]["epoch"] == "swa") == average_is_best(swa_row, epochs)


@pytest.mark.slow
def test_a_run_stopped_while_averaging_resumes_to_the_same_bits(tiny_tree, tmp_path, monkeypatch):
    from finetune.train import state

    recipe = build_recipe(swa_tree(tiny_tree))
    reference = fit(recipe.model_copy(update={"run": recipe.run.model_copy(update={"output": tmp_path / "ref"})}))
    real = state.RunState.after_step

    def stop_at_step_5(self):  # epoch 3, after its first step: epoch 2 is in the average
        if self.progress.global_step + 1 == 5:
            self.stop.requested = "SIGTERM"
        real(self)

    monkeypatch.setattr(state.RunState, "after_step", stop_at_step_5)
    run = tmp_path / "stopped"
    with pytest.raises(RunInterrupted):
        fit(recipe.model_copy(update={"run": recipe.run.model_copy(update={"output": run})}))
    saved = weights(run / "last.pt")["resume"]
    assert (saved["progress"]["epoch"], saved["progress"]["step"], int(saved["swa_n_averaged"])) == (3, 1, 1)
    monkeypatch.setattr(state.RunState, "after_step", real)
    fit(load_run_recipe(run), resume_dir=run)
    for name in ("last.pt", "best.pt"):
        a, b = weights(reference / name), weights(run / name)
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), f"{name}: {k}"
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((d / "metrics.csv").open())]
            for d in (reference, run)]
    assert rows[0] == rows[1] and rows[0][-1]["epoch"] == "swa"
