"""One trial: the pruner hears each epoch's val loss and its verdict stops the run, which stays a complete run
folder; the trial's recipe gets what is left of the study's budget."""

import csv

import optuna
import pytest

from finetune.checkpoint import Checkpoint
from finetune.config import SearchParam, search_base
from finetune.console import quiet_console
from finetune.tune.trial import EpochReport, run_trial, trial_recipe


class FakeTrial:
    def __init__(self, prune_at: int):
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.reported[-1][0] >= self.prune_at


def test_each_epoch_goes_to_the_trial_and_its_verdict_is_the_reason_to_stop():
    trial = FakeTrial(prune_at=2)
    report = EpochReport(trial)
    assert report({"epoch": 1, "val_loss": 0.7}) == ""
    assert "pruned" in report({"epoch": 2, "val_loss": 0.9})
    assert trial.reported == [(1, 0.7), (2, 0.9)]


def test_a_trial_gets_what_is_left_of_the_study_budget_or_its_own_when_shorter(tiny_tree, tmp_path):
    base = search_base(tiny_tree)
    assert trial_recipe(base, {}, tmp_path / "trial-0", 120.0).train.budget == 120.0
    assert trial_recipe(base, {}, tmp_path / "trial-0", None).train.budget is None
    base["train"]["budget"] = 60
    recipe = trial_recipe(base, {"strategy.lr.head": 0.01}, tmp_path / "trial-3", 120.0)
    assert recipe.train.budget == 60 and recipe.strategy.lr["head"] == 0.01
    assert recipe.run.output == tmp_path / "trial-3"


@pytest.mark.slow
def test_a_pruned_trial_stops_after_that_epoch_and_leaves_a_run_that_loads(tiny_tree, tmp_path):
    # ThresholdPruner(upper=0): every val loss is above it, so the pruner stops the trial after its first epoch
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    tiny_tree["train"]["epochs"] = 4
    space = {"strategy.lr.head": SearchParam(type="float", low=0.01, high=0.1, log=True)}
    trial = study.ask()
    outcome = run_trial(trial, search_base(tiny_tree), space, tmp_path / "study", None, quiet_console())
    assert outcome.pruned and outcome.epochs == 1
    rows = list(csv.DictReader(open(outcome.run_dir / "metrics.csv")))
    assert len(rows) == 1  # of 4 epochs
    assert Checkpoint.load(outcome.run_dir / "best.pt").class_names == ["blue", "red"]
    assert trial.params["strategy.lr.head"] == pytest.approx(
        Checkpoint.load(outcome.run_dir / "best.pt").recipe["strategy"]["lr"]["head"])
