"""`finetune tune`: a study of a few trials on the tiny data, resumed without repeating finished trials, sharing one
feature pass, within its budget; its picture and best.yaml; refusals before any work."""

import csv
from datetime import timedelta
from types import SimpleNamespace

import optuna
import pytest
from conftest import invoke, write_yaml

from finetune.checkpoint import Checkpoint
from finetune.config import SearchParam, load_recipe, search_base
from finetune.console import quiet_console
from finetune.errors import ConfigError
from finetune.train.features.store import FeatureStore
from finetune.tune.study import StudyClock, StudySpec, open_study, run_study

SPACE = {"strategy.lr.head": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
         "optim.name": {"type": "categorical", "choices": ["adam", "sgd"]}}


def study_files(tiny_tree, tmp_path):
    return (write_yaml(tmp_path / "tiny.yaml", tiny_tree), write_yaml(tmp_path / "space.yaml", SPACE),
            tmp_path / "study")


def trial_rows(folder):
    return list(csv.DictReader(open(folder / "trials.csv")))


@pytest.mark.slow
def test_a_study_runs_its_trials_as_runs_shares_the_features_and_writes_the_best_recipe(tiny_tree, tmp_path,
                                                                                        monkeypatch):
    writes = []
    original = FeatureStore.begin
    monkeypatch.setattr(FeatureStore, "begin", lambda self, key, *a, **k: writes.append(key) or
                        original(self, key, *a, **k))
    recipe, space, folder = study_files(tiny_tree, tmp_path)
    code, out, err = invoke("tune", recipe, "--trials", 2, "--space", space, "--output", folder)
    assert code == 0, err
    for k in (0, 1):
        assert Checkpoint.load(folder / f"trial-{k}" / "best.pt").class_names == ["blue", "red"]
        assert (folder / f"trial-{k}" / "recipe.yaml").is_file()
    # the trials differ only in the head's optimizer: one feature pass (train and val), the second trial reads it
    assert len(writes) == 2
    assert (folder / "study.db").is_file() and (folder / "study.png").stat().st_size > 10_000
    rows = trial_rows(folder)
    assert [r["state"] for r in rows] == ["complete", "complete"]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    tuned = load_recipe(folder / "best.yaml")  # what `finetune train best.yaml` reads
    assert tuned.strategy.lr["head"] == pytest.approx(float(best["strategy.lr.head"]))
    assert tuned.optim.name == best["optim.name"] and tuned.run.output is None
    assert out.strip() == str(folder / "best.yaml") and f"best: trial {best['trial']}" in err

    # the same command again, for 3 trials: the 2 finished ones are kept as they are, one new trial runs
    first = {k: (folder / f"trial-{k}" / "best.pt").stat().st_mtime_ns for k in (0, 1)}
    code, _, err = invoke("tune", recipe, "--trials", 3, "--space", space, "--output", folder)
    assert code == 0, err
    assert "2 of 3 trials finished already" in err
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0", "trial-1", "trial-2"]
    assert {k: (folder / f"trial-{k}" / "best.pt").stat().st_mtime_ns for k in (0, 1)} == first
    after = trial_rows(folder)
    assert after[:2] == rows and len(after) == 3
    assert after[2]["strategy.lr.head"] not in {r["strategy.lr.head"] for r in rows}  # new values, not redrawn
    code, _, err = invoke("tune", recipe, "--trials", 3, "--space", space, "--output", folder)
    assert code == 0 and "0 run now" in err and len(trial_rows(folder)) == 3


@pytest.mark.slow
def test_pruned_trials_are_told_so_and_no_best_recipe_is_made_from_them(tiny_tree, tmp_path):
    space = {"strategy.lr.head": SearchParam(type="float", low=0.01, high=0.1)}
    spec = StudySpec(tmp_path / "study", "t", trials=1)
    tiny_tree["train"]["epochs"] = 3
    result = run_study(spec, search_base(tiny_tree), space, quiet_console(),
                       pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    assert [(r["state"], r["epochs"]) for r in trial_rows(spec.folder)] == [("pruned", "1")]
    assert result.best_trial is None and not (spec.folder / "best.yaml").exists()


class FakeClock:
    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.slow
def test_no_trial_starts_once_the_budget_has_no_room_for_one(tiny_tree, tmp_path):
    # each reading of the clock is 40 s later: trial 0 starts at 40 s of 100 with 20 s of train.budget left, and
    # when it ends the clock reads 120 s: no other trial starts
    space = {"strategy.lr.head": SearchParam(type="float", low=0.01, high=0.1)}
    spec = StudySpec(tmp_path / "study", "t", trials=5, budget=100)
    result = run_study(spec, search_base(tiny_tree), space, quiet_console(), clock=FakeClock(40))
    assert result.ran == 1 and "--budget" in result.stopped
    assert load_recipe(tmp_path / "study" / "trial-0" / "recipe.yaml").train.budget == 20


def finished_trial(seconds):
    return SimpleNamespace(duration=timedelta(seconds=seconds))


def test_a_trial_starts_only_while_the_longest_so_far_still_fits():
    clock = FakeClock(0)
    budget = StudyClock(100, clock)
    clock.t = 60
    assert budget.refuses([finished_trial(10), finished_trial(40)]) == ""  # 40 s left, 40 s needed
    assert "another would end past the budget" in budget.refuses([finished_trial(41)])
    assert budget.refuses([]) == "" and StudyClock(None, clock).refuses([finished_trial(1e9)]) == ""


def test_a_study_of_another_recipe_or_space_is_not_mixed_with_this_one(tiny_tree, tmp_path):
    space = {"strategy.lr.head": SearchParam(type="float", low=0.01, high=0.1)}
    spec = StudySpec(tmp_path / "study", "t", trials=2)
    base = search_base(tiny_tree)
    open_study(spec, base, space)
    open_study(spec, search_base({**tiny_tree, "run": {"name": "elsewhere"}}), space)  # where runs go: the same study
    with pytest.raises(ConfigError, match="holds a study of another recipe"):
        open_study(spec, search_base({**tiny_tree, "model": {**tiny_tree["model"], "head": {"type": "mlp"}}}), space)
    with pytest.raises(ConfigError, match="holds a study of another space"):
        open_study(spec, base, {"strategy.lr.head": SearchParam(type="float", low=0.01, high=0.2)})


def test_the_study_folder_is_never_inside_the_dataset(tiny_tree, tmp_path):
    spec = StudySpec(tmp_path / "colors" / "study", "t", trials=1)
    with pytest.raises(ConfigError, match="inside the dataset"):
        open_study(spec, search_base(tiny_tree), {})


@pytest.mark.parametrize("url", ["nosuchdb://x", "sqlite:////nonexistent-folder/study.db"])
def test_a_storage_that_cannot_be_opened_is_one_line(tiny_tree, tmp_path, url):
    with pytest.raises(ConfigError, match=f"--storage {url} cannot be opened"):
        open_study(StudySpec(tmp_path / "study", "t", trials=1, storage=url), search_base(tiny_tree), {})


def test_mistakes_in_the_space_or_the_budget_are_one_line_before_any_work(tiny_tree, tmp_path):
    recipe = write_yaml(tmp_path / "tiny.yaml", tiny_tree)
    space = write_yaml(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}})
    code, _, err = invoke("tune", recipe, "--space", space, "--output", tmp_path / "study")
    assert code == 1 and "unknown key 'optim.lr'" in err and len(err.strip().splitlines()) == 1
    code, _, err = invoke("tune", recipe, "--budget", "ten", "--output", tmp_path / "study")
    assert code == 1 and "--budget" in err
    assert not (tmp_path / "study").exists()
