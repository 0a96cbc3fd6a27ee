"""strategy.head_solver lbfgs in fit(): the solved head lands in an ordinary checkpoint, with its sweep."""

import csv
from pathlib import Path

import pytest
import torch

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.errors import ConfigError, RunInterrupted, TrainingDiverged
from finetune.train.loop import fit


def lbfgs_tree(tiny_tree: dict) -> dict:
    return {**tiny_tree, "strategy": {**tiny_tree["strategy"], "head_solver": "lbfgs"}}


def test_lbfgs_is_the_default_for_feature_extract_with_cached_features():
    assert build_recipe({}).strategy.head_solver == "lbfgs"
    assert build_recipe({"strategy": {"name": "last-stage"}}).strategy.head_solver == "sgd"
    assert build_recipe({"data": {"augment": "standard"}}).strategy.head_solver == "sgd"
    assert build_recipe({"model": {"head": {"type": "mlp"}}}).strategy.head_solver == "sgd"


@pytest.mark.parametrize("change, what", [
    ({"strategy": {"name": "last-stage", "head_solver": "lbfgs"}}, "strategy.name last-stage"),
    ({"strategy": {"head_solver": "lbfgs"}, "train": {"ema": 0.99}}, "train.ema"),
    ({"strategy": {"head_solver": "lbfgs"}, "data": {"augment": "flip"}}, "data.augment flip"),
])
def test_lbfgs_where_it_cannot_run_is_refused_with_the_reason(change, what):
    with pytest.raises(ConfigError, match=rf"head_solver lbfgs cannot run with {what}"):
        build_recipe(change)


@pytest.mark.slow
def test_fit_solves_the_head_writes_the_sweep_and_an_ordinary_checkpoint(tiny_tree, capsys):
    run = fit(build_recipe(lbfgs_tree(tiny_tree)))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and float(rows[0]["head_l2"]) > 0
    assert float(rows[0]["val_acc"]) == 1.0  # blue vs red
    sweep = list(csv.DictReader((run / "head_sweep.csv").open()))
    assert len(sweep) > 12 and sum(int(r["chosen"]) for r in sweep) == 1
    chosen = next(r for r in sweep if r["chosen"] == "1")
    assert float(chosen["l2"]) == float(rows[0]["head_l2"])
    assert float(chosen["val_loss"]) == min(float(r["val_loss"]) for r in sweep)
    assert (run / "head_sweep.png").stat().st_size > 1000
    best, last = Checkpoint.load(run / "best.pt"), Checkpoint.load(run / "last.pt")
    assert best.calibration is not None and best.strategy == "feature-extract"
    assert torch.equal(best.state["classifier.weight"], last.state["classifier.weight"])
    assert best.state["classifier.weight"].abs().sum() > 0
    err = capsys.readouterr().err
    assert "head: L-BFGS, l2" in err and "chosen by val loss" in err

    from finetune.deploy.report import write_report

    page = write_report(run).read_text()  # the report shows the sweep where an SGD run shows its curves
    assert "against the L2 strength" in page and "curves.png is not there" not in page

    # resuming the finished run changes nothing: the solved head is kept, not solved again
    before = (run / "metrics.csv").read_text()
    fit(build_recipe(lbfgs_tree(tiny_tree)), resume_dir=run)
    assert (run / "metrics.csv").read_text() == before
    assert torch.equal(Checkpoint.load(run / "best.pt").state["classifier.weight"], best.state["classifier.weight"])


@pytest.mark.slow
def test_non_finite_features_stop_the_run_before_anything_is_saved(tiny_tree, monkeypatch):
    import finetune.train.solved as solved

    real = solved.collect_logits

    def poisoned(*args, **kw):
        features, labels = real(*args, **kw)
        features[0, 0] = float("nan")
        return features, labels

    monkeypatch.setattr(solved, "collect_logits", poisoned)
    tiny_tree["run"] = {"output": str(tiny_tree["run"]["dir"]) + "/nan"}
    with pytest.raises(TrainingDiverged, match="features hold NaN or inf.*nothing was saved"):
        fit(build_recipe(lbfgs_tree(tiny_tree)))
    assert not list((Path(tiny_tree["run"]["output"])).glob("*.pt"))


@pytest.mark.slow
def test_sigterm_during_the_solve_stops_with_metrics_csv_written_and_resume_keeps_it(tiny_tree, monkeypatch):
    import os
    import signal

    import finetune.train.solved as solved

    real = solved.sweep_l2

    def interrupted(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # as if sent while the head is being solved
        return real(*args, **kw)

    monkeypatch.setattr(solved, "sweep_l2", interrupted)
    tiny_tree["run"] = {"output": str(tiny_tree["run"]["dir"]) + "/stopped"}
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        fit(build_recipe(lbfgs_tree(tiny_tree)))
    run = Path(tiny_tree["run"]["output"])
    written = (run / "metrics.csv").read_text()
    assert len(list(csv.DictReader(written.splitlines()))) == 1 and (run / "best.pt").exists()
    monkeypatch.setattr(solved, "sweep_l2", real)
    fit(build_recipe(lbfgs_tree(tiny_tree)), resume_dir=run)
    assert (run / "metrics.csv").read_text() == written


@pytest.mark.slow
def test_a_run_trained_by_sgd_before_head_solver_existed_resumes_by_epochs(tiny_tree, monkeypatch):
    from finetune.train.resume import load_run_recipe
    from finetune.train.state import RunState

    class Stop(Exception):
        pass

    real = RunState.save_epoch

    def stop_after_epoch_1(self, best):
        real(self, best)
        raise Stop

    monkeypatch.setattr(RunState, "save_epoch", stop_after_epoch_1)
    with pytest.raises(Stop):
        fit(build_recipe(tiny_tree))  # sgd, 2 epochs: stopped after the first
    monkeypatch.setattr(RunState, "save_epoch", real)
    run = Path(tiny_tree["run"]["dir"]) / "t"
    recipe_yaml = run / "recipe.yaml"
    recipe_yaml.write_text("".join(line for line in recipe_yaml.read_text().splitlines(True)
                                   if "head_solver" not in line))  # as written before the key existed
    last = Checkpoint.load(run / "last.pt")
    del last.recipe["strategy"]["head_solver"]
    last.save(run / "last.pt")
    assert load_run_recipe(run).strategy.head_solver == "lbfgs"  # what the default now says
    fit(load_run_recipe(run), resume_dir=run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "head_l2" not in rows[0]
