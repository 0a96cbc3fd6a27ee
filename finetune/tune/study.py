"""The study of `finetune tune`: Optuna's TPE sampler (seeded) and median pruner over one recipe's space, its
trials asked and told one at a time, the study kept in SQLite (STUDY/study.db) so that the same command again goes
on where a killed one stopped, and several processes given the same storage share the work, as Optuna does.

--trials counts the study's finished trials (complete, pruned, or diverged), over every session and process;
--budget is this command's wall-clock: a trial starts only when there is room for it, taking it to be as long as
the longest finished trial, and its train.budget is what is left. At the end: best.yaml (the base recipe with the
best trial's values, for `finetune train`), trials.csv and study.png.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import Space, build_recipe, override_tree
from ..console import literal, progress, quiet_console
from ..data.folders import dataset_folders
from ..errors import ConfigError, RunInterrupted, TrainingDiverged, first_line
from ..files import atomic_write, refuse_inside, write_text
from .figures import plot_study
from .trial import DIVERGED, run_trial

MIN_TRIAL_SECONDS = 1.0  # a trial is never started with less than this left of --budget


@dataclass(frozen=True)
class StudySpec:
    """What `finetune tune` was asked: where, how many finished trials, how long for this command, the seed."""
    folder: Path
    name: str
    trials: int
    budget: float | None = None
    seed: int = 0
    storage: str | None = None  # an Optuna storage URL; default sqlite:///FOLDER/study.db

    @property
    def url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.folder) / 'study.db').absolute()}"


@dataclass(frozen=True)
class StudyResult:
    folder: Path
    finished: int  # trials of the study that ran to an end (complete, pruned, diverged)
    ran: int  # of them, run by this command
    best_trial: int | None  # its number; None when no trial completed
    best_value: float | None  # its lowest val loss
    best_val_acc: float | None
    best_params: dict
    best_yaml: Path | None
    picture: Path | None
    stopped: str  # why this command ran fewer trials than asked, or ""


def default_pruner():
    """Median pruning on val loss per epoch (Optuna's MedianPruner): once 5 trials have completed, a trial whose val
    loss after epoch 2 or later (its lowest so far) is worse than the median of the completed trials' at that epoch
    stops there."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def finished(study) -> list:
    """The trials that ran to an end: complete, pruned, or failed by diverging (which ran, and said so)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and DIVERGED in t.user_attrs)]


def open_study(spec: StudySpec, base: dict, space: Space, pruner=None):
    """The study in spec's storage, made or loaded; refused when it holds another recipe's or another space's trials
    (their scores would not compare). The sampler's seed moves on with the trials already there, so a resumed study
    does not draw its first values again."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError  # Optuna's RDB storage is SQLAlchemy's

    refuse_inside(spec.folder, dataset_folders(build_recipe(base, source="the recipe").data.root), "the study folder")
    Path(spec.folder).mkdir(parents=True, exist_ok=True)
    what = {"recipe": _comparable(base), "space": {k: p.model_dump() for k, p in space.items()}}
    try:
        study = optuna.create_study(storage=spec.url, study_name=spec.name, direction="minimize",
                                    pruner=pruner or default_pruner(), load_if_exists=True)
    except (ValueError, ImportError, SQLAlchemyError) as exc:  # a malformed URL, a driver not installed, no server
        raise ConfigError(f"--storage {spec.url} cannot be opened: {first_line(exc)}") from None
    for key, value in what.items():
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif json.loads(json.dumps(value)) != stored:
            raise ConfigError(f"{spec.folder} holds a study of another {key} (its trials would not compare with "
                              f"these): choose another --output, or remove {spec.folder} to start over")
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.get_trials(deepcopy=False)))
    return study


def _comparable(base: dict) -> dict:
    """What must stay the same for a study's trials to compare: the base recipe without where runs go and
    train.budget (--budget sets it per trial)."""
    tree = json.loads(json.dumps(base, default=str))
    tree.pop("run", None)
    (tree.get("train") or {}).pop("budget", None)
    return tree


class StudyClock:
    """--budget: this command's seconds. A trial starts only when the longest finished trial would still fit."""

    def __init__(self, seconds: float | None, clock=time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - (self.clock() - self.start)

    def refuses(self, done: list) -> str:
        """Why no other trial may start now, or ""."""
        if self.seconds is None:
            return ""
        longest = max((t.duration.total_seconds() for t in done if t.duration is not None), default=0.0)
        left = self.left()
        if left >= max(longest, MIN_TRIAL_SECONDS):
            return ""
        return (f"--budget: {self.seconds - left:.0f} s of {self.seconds:.0f} s used; the longest trial took "
                f"{longest:.0f} s, and another would end past the budget")


def run_study(spec: StudySpec, base: dict, space: Space, console, pruner=None, clock=time.monotonic) -> StudyResult:
    """Run trials until the study has spec.trials finished ones or spec.budget leaves no room; then write best.yaml,
    trials.csv and study.png, and say how it went."""
    from optuna.trial import TrialState

    budget = StudyClock(spec.budget, clock)
    study = open_study(spec, base, space, pruner)
    done = finished(study)
    if done:
        console.print(f"study {literal(spec.folder)}: {len(done)} of {spec.trials} trials finished already, going "
                      "on from there", highlight=False, soft_wrap=True)
    ran, stopped = 0, ""
    with progress(console) as bar:
        task = bar.add_task("study", total=spec.trials, completed=min(len(done), spec.trials))
        while len(done) < spec.trials:
            if stopped := budget.refuses(done):
                break
            trial = study.ask()
            label = f"trial {trial.number} ({len(done)}/{spec.trials} finished)"
            bar.update(task, description=label)
            try:
                outcome = run_trial(trial, base, space, Path(spec.folder), budget.left(), quiet_console(),
                                    _shown_on(bar, task, label))
            except TrainingDiverged:
                study.tell(trial, state=TrialState.FAIL)
                console.print(f"trial {trial.number}: diverged ({_params(trial.params)})", highlight=False)
            except BaseException as exc:  # Ctrl-C, SIGTERM, an error: the trial failed, the study stays resumable
                study.tell(trial, state=TrialState.FAIL)
                if isinstance(exc, RunInterrupted):
                    raise RunInterrupted(f"stopped during trial {trial.number} ({first_line(exc, 120)}); run the "
                                         f"same `finetune tune` command again to go on: the {len(done)} finished "
                                         "trials are kept", exc.exit_code) from None
                raise
            else:
                if outcome.pruned:
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    study.tell(trial, outcome.value)
                console.print(f"trial {trial.number}: val loss {outcome.value:.4f}, val acc {outcome.val_acc:.3f}, "
                              f"{outcome.epochs} epoch(s){', pruned' if outcome.pruned else ''} "
                              f"({_params(trial.params)})", highlight=False, soft_wrap=True)
            ran += 1
            done = finished(study)
            bar.update(task, completed=min(len(done), spec.trials))
    return _conclude(study, spec, base, ran, stopped)


def _shown_on(bar, task, label: str):
    """What a trial calls after each epoch: the study's bar says which epoch it is in."""
    return lambda row: bar.update(task, description=f"{label}, epoch {row['epoch']:.0f}")


def _params(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def _conclude(study, spec: StudySpec, base: dict, ran: int, stopped: str) -> StudyResult:
    """best.yaml, trials.csv and study.png from every trial in the study (this command's and the others')."""
    from optuna.trial import TrialState

    folder = Path(spec.folder)
    trials = study.get_trials(deepcopy=False)
    write_trials_csv(folder / "trials.csv", trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    picture = plot_study(folder / "study.png", trials, importances(study)) if complete else None
    if not complete:
        return StudyResult(folder, len(finished(study)), ran, None, None, None, {}, None, picture, stopped)
    best = study.best_trial
    best_yaml = write_best_recipe(folder / "best.yaml", base, best, spec.name)
    return StudyResult(folder, len(finished(study)), ran, best.number, best.value, best.user_attrs.get("val_acc"),
                       dict(best.params), best_yaml, picture, stopped)


def importances(study) -> dict[str, float]:
    """Each searched key's share of the variation in val loss over the complete trials (fANOVA, seeded), or {}
    while there are too few trials to say."""
    import optuna
    from optuna.trial import TrialState

    if sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError):  # e.g. every trial drew the same values
        return {}


def write_best_recipe(path: Path, base: dict, best, name: str) -> Path:
    """The base recipe with the best trial's values: `finetune train best.yaml` trains it (in runs/NAME-tuned)."""
    tree = override_tree(base, flags={**best.params, "run.name": f"{name}-tuned"})
    header = (f"# finetune tune: the best of study {name}, trial {best.number} (lowest val loss {best.value:.4f}, "
              f"val acc {best.user_attrs.get('val_acc', float('nan')):.4f});\n"
              f"# its run: {best.user_attrs.get('run_dir', '?')}\n")
    write_text(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


def write_trials_csv(path: Path, trials: list) -> None:
    """One row per trial: number, state, val loss (lowest), val acc, epochs, seconds, then its values."""
    keys = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "val_loss", "val_acc", "epochs", "seconds", *keys, "run_dir"])
    for t in trials:
        state = DIVERGED if DIVERGED in t.user_attrs else t.state.name.lower()
        writer.writerow([t.number, state, "" if t.value is None else f"{t.value:.6g}",
                         t.user_attrs.get("val_acc", ""), t.user_attrs.get("epochs", ""),
                         "" if t.duration is None else f"{t.duration.total_seconds():.1f}",
                         *(t.params.get(k, "") for k in keys), t.user_attrs.get("run_dir", "")])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def summary_lines(result: StudyResult) -> list[str]:
    """The end of `finetune tune`: how many trials, the best and its values, and where the files are."""
    lines = [f"study {result.folder}: {result.finished} finished trial(s), {result.ran} run now"
             + (f"; stopped: {result.stopped}" if result.stopped else "")]
    if result.best_trial is None:
        lines.append("no trial completed yet (pruned or diverged ones have no final score): run more trials")
    else:
        lines.append(f"best: trial {result.best_trial}, lowest val loss {result.best_value:.4f}, val acc "
                     f"{result.best_val_acc:.4f} ({_params(result.best_params)})")
        lines.append(f"best recipe: {result.best_yaml} (finetune train {result.best_yaml}); the run: "
                     f"{result.folder / f'trial-{result.best_trial}'}")
    if result.picture is not None:
        lines.append(f"picture: {result.picture}; every trial: {result.folder / 'trials.csv'}")
    return lines
