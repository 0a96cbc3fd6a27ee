"""train.budget: no epoch starts that would end past it; the run then finishes as usual (calibration, summary)."""

import csv

import pytest

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.config.recipe import parse_duration
from finetune.train import budget as budget_module
from finetune.train.budget import Budget
from finetune.train.loop import fit


class FakeClock:
    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_another_epoch_only_when_the_longest_so_far_still_fits():
    clock = FakeClock(0)
    b = Budget(100, clock)
    clock.t = 60
    assert b.allows_another([10, 30])  # 60 + 30 <= 100
    assert not b.allows_another([10, 41])  # 60 + 41 > 100
    assert Budget(None, clock).allows_another([1e9]) and b.allows_another([])


@pytest.mark.parametrize("text, seconds", [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400),
                                           ("1h30m", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert build_recipe({"train": {"budget": text}}).train.budget == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5m"])
def test_a_duration_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.slow
def test_a_run_stops_within_its_budget_with_the_best_checkpoint(tiny_tree, monkeypatch, capsys):
    # every reading of the clock is 20 s later, so after epoch k the run has used 20k s: with a budget of 90 s
    # epoch 5 still starts (80 s + an epoch of a few ms fits) and no epoch after it (100 s)
    monkeypatch.setattr(budget_module, "now", FakeClock(20))
    tiny_tree["train"].update(epochs=10, budget=90)
    run = fit(build_recipe(tiny_tree))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 5
    assert "train.budget" in capsys.readouterr().err
    best = Checkpoint.load(run / "best.pt")
    assert best.class_names == ["blue", "red"] and (run / "last.pt").is_file()
