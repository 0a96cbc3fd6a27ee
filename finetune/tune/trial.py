"""One trial of a study: its values drawn from the space, then a normal run (train.loop.fit) in STUDY/trial-K/ that
reports its val loss to the pruner after each epoch and stops, as a budget stops it, when the pruner says so.
Its value is the lowest val loss it reached; a pruned or diverged trial is still a complete run folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import Recipe, SearchParam, Space, build_recipe
from ..errors import TrainingDiverged, first_line
from ..metrics import epoch_rank
from ..train.loop import fit

DIVERGED = "diverged"  # user attr of a trial whose loss stopped being a number: it ran, and counts as finished


def suggest(trial, key: str, param: SearchParam):
    """The trial's value for `key`, drawn by the study's sampler from `param`'s range."""
    if param.type == "categorical":
        return trial.suggest_categorical(key, param.choices)
    if param.type == "int":
        return trial.suggest_int(key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(key, float(param.low), float(param.high), log=param.log)


def trial_recipe(base: dict, params: dict, run_dir: Path, seconds: float | None) -> Recipe:
    """The recipe of one trial: the study's base with the trial's values, run in `run_dir`, within `seconds` (what
    is left of the study's budget, when that is less than the recipe's own train.budget)."""
    flags = {**params, "run.output": str(run_dir)}
    if seconds is not None:
        own = build_recipe(base, source="the recipe").train.budget
        flags["train.budget"] = max(1.0, round(min(own or seconds, seconds), 1))
    return build_recipe(base, source=f"trial {run_dir.name}", flags=flags)


class EpochReport:
    """What fit() calls after each epoch (its on_epoch): the val loss goes to the trial, and the pruner's verdict
    comes back as the reason to stop."""

    def __init__(self, trial, progress=None):
        self.trial, self.progress, self.pruned = trial, progress, ""

    def __call__(self, row: dict) -> str:
        self.trial.report(row["val_loss"], step=int(row["epoch"]))
        if self.progress is not None:
            self.progress(row)
        if not self.pruned and self.trial.should_prune():
            self.pruned = (f"pruned by the study's median rule: val loss {row['val_loss']:.4f} after epoch "
                           f"{row['epoch']} is worse than the median of the earlier trials there")
        return self.pruned


@dataclass(frozen=True)
class TrialOutcome:
    run_dir: Path
    value: float  # the lowest val loss of its epochs
    val_acc: float  # of the epoch its best.pt holds
    epochs: int
    pruned: str  # why it was pruned, or ""


def run_trial(trial, base: dict, space: Space, folder: Path, seconds: float | None, console,
              progress=None) -> TrialOutcome:
    """Draw the trial's values, train it in folder/trial-K (quietly on `console`; `progress` is shown each epoch's
    row), and read its metrics back. A diverged run is marked on the trial and raised (the study: a failed trial)."""
    params = {key: suggest(trial, key, param) for key, param in space.items()}
    run_dir = folder / f"trial-{trial.number}"
    recipe = trial_recipe(base, params, run_dir, seconds)
    trial.set_user_attr("run_dir", str(run_dir))
    report = EpochReport(trial, progress)
    try:
        fit(recipe, console=console, on_epoch=report)
    except TrainingDiverged as exc:
        trial.set_user_attr(DIVERGED, first_line(exc, 300))
        raise
    rows = read_rows(run_dir / "metrics.csv")
    best = max(rows, key=epoch_rank)
    outcome = TrialOutcome(run_dir, min(r["val_loss"] for r in rows), best["val_acc"], len(rows), report.pruned)
    trial.set_user_attr("val_acc", outcome.val_acc)
    trial.set_user_attr("epochs", outcome.epochs)
    return outcome


def read_rows(path: Path) -> list[dict]:
    """metrics.csv's epochs, the numbers as floats."""
    with open(path, encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
