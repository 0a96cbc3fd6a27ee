"""A run that survives: resumable state in last.pt, a data order that can restart mid-epoch, and
Ctrl-C / SIGTERM / out-of-memory handling. loop.fit calls this in a few lines.

What makes a resumed run bit-identical to an uninterrupted one on CPU:
- last.pt holds model, optimizer, scheduler, AMP scaler, epoch and step, best accuracy, the metrics
  rows, the partial epoch's running totals, and every RNG state (Python, NumPy, torch, CUDA).
- The data order and each sample's augmentation are a pure function of (seed, epoch) (sampling.py),
  so resuming at step k of an epoch is just skipping the first k batches' indices: no worker RNG
  to restore, and the result does not depend on the number of DataLoader workers.
"""

from __future__ import annotations

import math
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..errors import (
    CheckpointError,
    ConfigError,
    FinetuneError,
    NonFiniteLoss,
    ResourceError,
    RunInterrupted,
    TrainingDiverged,
)
from ..metrics import epoch_rank
from ..runtime.distributed import Dist
from .step import TrainStep

# Keys --resume may change: where the data is and how it is loaded, not what the run computes.
RESUME_OVERRIDABLE = ("data.root", "data.workers", "train.device", "train.save_every")


# ---------------------------------------------------------------- RNG


def capture_rng() -> dict:
    """Every RNG state as tensors and plain data, so last.pt stays loadable with weights_only=True."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# ---------------------------------------------------------------- run state


@dataclass
class Tally:
    """Running totals of one pass; saved mid-epoch so a resumed epoch reports the same means."""
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, correct: int, n: int) -> None:
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n

    def means(self, dist: Dist = Dist()) -> tuple[float, float]:
        """(mean loss, accuracy); data-parallel, over every rank's totals (the same on each rank)."""
        loss_sum, correct, seen = dist.sum([self.loss_sum, self.correct, self.seen])
        return loss_sum / max(1, seen), correct / max(1, seen)

    def total(self, dist: Dist) -> Tally:
        loss_sum, correct, seen = dist.sum([self.loss_sum, self.correct, self.seen])
        return Tally(loss_sum, int(correct), int(seen))


@dataclass
class Progress:
    """Where the run is: saved in last.pt under "resume", plain data only."""
    epoch: int = 1  # the epoch in progress (1-based); epochs + 1 once finished
    step: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    best_acc: float = -1.0
    rows: list = field(default_factory=list)  # metrics rows of finished epochs
    tally: dict = field(default_factory=lambda: asdict(Tally()))  # the epoch in progress
    lrs: dict = field(default_factory=dict)  # learning rates at the start of the epoch in progress
    seconds: float = 0.0  # time spent in the epoch in progress before the last save
    world: int = 1  # processes training together (data parallel): a run resumes mid-epoch with as many


class RunState:
    """Owns last.pt and best.pt: saves everything needed to continue, restores it, and stops cleanly on a signal.
    `template` is the run's checkpoint without weights (architecture, classes, preprocessing, recipe, ...)."""

    def __init__(self, run_dir: Path, step: TrainStep, template: Checkpoint, save_every: int | None):
        self.run_dir, self.step, self.template, self.save_every = run_dir, step, template, save_every
        self.progress, self.tally = Progress(), Tally()
        self.best: Checkpoint | None = None  # best.pt as last written (weights copied), for calibration
        self.last_calibration: dict | None = None  # last.pt's, once calibrated
        self.saved: Progress | None = None  # what last.pt holds
        self.stop_signal: str | None = None
        self.training = False  # before the first epoch a signal stops at once (the feature pass may be long)
        self._epoch_start = time.perf_counter()

    @property
    def dist(self) -> Dist:
        return self.step.compute.dist if self.step is not None else Dist()

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def rows(self) -> list[dict]:
        return self.progress.rows

    def resumed_at(self) -> str:
        p = self.progress
        if p.global_step == 0:
            return ""
        return "; resuming " + (f"epoch {p.epoch} after step {p.step}" if p.step else f"after epoch {p.epoch - 1}")

    # -- the loop's calls, in order

    def begin_epoch(self, epoch: int) -> tuple[dict, int]:
        """(learning rates at the epoch's start, samples of it already trained) - nonzero when resumed mid-epoch."""
        p = self.progress
        self.training = True
        if p.epoch != epoch or p.step == 0:
            p.epoch, p.step, p.seconds = epoch, 0, 0.0
            p.lrs = {}
            for g in self.step.optimizer.param_groups:  # a group's top lr (its blocks differ with layer decay)
                p.lrs[f"lr_{g['name']}"] = max(g["lr"], p.lrs.get(f"lr_{g['name']}", 0.0))
            self.tally = Tally()
        self._epoch_start = time.perf_counter()
        return dict(p.lrs), p.step

    def after_step(self) -> None:
        """After each optimizer step: save every `save_every` steps; on Ctrl-C/SIGTERM save and stop here."""
        self.progress.step += 1
        self.progress.global_step += 1
        if self.dist.any(self.stop_signal is not None):  # every rank stops after the same step
            self.stop_signal = self.stop_signal or "SIGTERM"
            self.save()
            raise self._interrupted()
        if self.save_every and self.progress.global_step % self.save_every == 0:
            self.save()

    def epoch_seconds(self) -> float:
        return round(self.progress.seconds + time.perf_counter() - self._epoch_start, 3)

    def end_epoch(self, row: dict) -> bool:
        """Record the finished epoch; True when it is the best so far. A loss that is not finite stops the run
        here, before anything is saved from this epoch."""
        for key in ("train_loss", "val_loss"):
            if not math.isfinite(row[key]):
                raise TrainingDiverged(f"{key} is {row[key]} after epoch {row['epoch']}: training diverged. "
                                       f"{self._lower_lr()} {self._last_saved()}")
        p = self.progress
        best = not p.rows or epoch_rank(row) > max(map(epoch_rank, p.rows))
        p.best_acc = max(p.best_acc, row["val_acc"])
        p.rows.append(row)
        p.epoch, p.step, p.seconds, p.lrs = p.epoch + 1, 0, 0.0, {}
        self.tally = Tally()
        return best

    def save_epoch(self, best: bool) -> None:
        """best.pt (when the epoch is the best so far) before last.pt, so a crash between them redoes the epoch
        and rewrites both; then a signal that arrived during validation stops the run here."""
        bad = next((k for m in {self.step.model, self.step.scored} for k, v in m.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:  # never saved as a checkpoint: predict, export and resume would inherit it
            raise TrainingDiverged(f"the weights became non-finite ({bad}) in epoch {self.rows[-1]['epoch']}. "
                                   f"{self._lower_lr()} {self._last_saved()}")
        if best:
            self.best = self.template.with_state(self.step.scored.state_dict(), metrics=self.rows[-1])
            if self.dist.main:
                self.best.save(self.run_dir / "best.pt")
        self.save()
        if self.dist.any(self.stop_signal is not None):
            self.stop_signal = self.stop_signal or "SIGTERM"
            raise self._interrupted()

    # -- last.pt

    def save(self, calibration: dict | None = None) -> None:
        """last.pt, written by rank 0 (every rank calls this at the same step: the epoch's totals so far are
        summed over the ranks)."""
        p = self.progress
        if p.step:
            p.seconds = self.epoch_seconds()
        p.tally = asdict(self.tally.total(self.dist) if self.training else self.tally)
        p.world = self.dist.world
        self.saved = Progress(**asdict(p))
        self.last_calibration = calibration
        if not self.dist.main:
            return
        s = self.step
        resume = {"progress": asdict(p), "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
                  "scaler": s.scaler.state_dict(), "rng": capture_rng()}
        if s.ema is not None:  # last.pt holds the average (what scored); the raw weights go on training from here
            resume.update(train_model=s.model.state_dict(), ema_n_averaged=s.ema.n_averaged)
        replace(self.template, state=s.scored.state_dict(), metrics=p.rows[-1] if p.rows else {},
                calibration=calibration, resume=resume).save(self.run_dir / "last.pt")

    def restore(self) -> None:
        """Back to where last.pt is (rank 0 reads it and hands it to the others)."""
        dist = self.dist
        last = dist.share(Checkpoint.load(require_last(self.run_dir)) if dist.main else None)
        state = last.resume
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.run_dir / 'last.pt'} has no resume state (written by an older finetune?); "
                                  "start a new run")
        if last.class_names != self.template.class_names:
            raise ConfigError(f"the data's classes ({', '.join(self.template.class_names)}) are not the ones "
                              f"{self.run_dir.name} was trained on ({', '.join(last.class_names)}); resume with "
                              "the same class folders (--data), or start a new run")
        s = self.step
        if s.ema is not None:
            s.model.load_state_dict(state["train_model"])
            s.ema.module.load_state_dict(last.state)
            s.ema.n_averaged.copy_(state["ema_n_averaged"])
        else:
            s.model.load_state_dict(last.state)
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            s.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        self.progress = Progress(**state["progress"])
        p = self.progress
        if p.world != dist.world and p.step:
            raise ConfigError(f"{self.run_dir} stopped in the middle of epoch {p.epoch} training on {p.world} "
                              f"process(es); resume it on {p.world} (torchrun --nproc_per_node={p.world}), or start "
                              "a new run")
        self.tally = Tally(**p.tally) if dist.main else Tally()  # the saved totals count once, on rank 0
        self.saved, self.last_calibration = Progress(**state["progress"]), last.calibration

    # -- signals and out-of-memory

    @contextmanager
    def guard(self, console, batch_size: int, image_size: int):
        """SIGINT/SIGTERM: finish the step, save last.pt, stop (a second Ctrl-C stops at once).
        Out of memory: say what to lower; last.pt keeps the last completed save."""
        def on_signal(signum, frame):
            name = signal.Signals(signum).name
            if self.stop_signal:
                if signum != signal.SIGINT:  # SIGTERM again: already stopping (a launcher that dies tells its
                    return  # ranks once for each of its threads as they end)
                signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C twice: stop now, last.pt
                raise KeyboardInterrupt  # stays as it was
            self.stop_signal = name
            if not self.training:  # computing features: nothing to finish, stop now
                raise _StopBeforeTraining
            console.print(f"[yellow]{name}: finishing this step, then saving last.pt "
                          "(press Ctrl-C again to stop at once)[/]")

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        except _StopBeforeTraining:
            self.save()  # the run as it starts: --resume begins where it would have
            raise self._interrupted() from None
        except KeyboardInterrupt:
            raise RunInterrupted(f"a second Ctrl-C, so at once. {self._last_saved()} "
                                 f"Continue with: {self._resume_command()}", exit_code=130) from None
        except NonFiniteLoss as exc:
            p = self.progress
            raise TrainingDiverged(f"the training loss became {exc.value} in epoch {p.epoch} at step {p.step + 1}, "
                                   f"before that step updated anything: training diverged. {self._lower_lr()} "
                                   f"{self._last_saved()}") from None
        except FinetuneError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise ConfigError(f"train.compile: torch.compile failed on this model here ({type(exc).__name__}: "
                                  f"{str(exc).strip()[:160]}); set train.compile: false") from None
            if not (isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(exc)):
                exc.finetune_run_dir = self.run_dir  # where the command line writes the traceback (crash.log)
                raise
            raise ResourceError(
                f"out of memory in epoch {self.progress.epoch} (train.batch_size {batch_size}, data.image_size "
                f"{image_size}): lower train.batch_size (e.g. --set train.batch_size={max(1, batch_size // 2)}) or "
                f"data.image_size, or use strategy.name: feature-extract, and start a new run. "
                f"{self._last_saved()}") from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _lower_lr(self) -> str:
        lrs = ", ".join(f"{g['name']} {g['lr']:g}" for g in self.step.optimizer.param_groups[::2])
        return (f"Learning rates now: {lrs}; lower strategy.lr (e.g. --set strategy.lr.head=...) and start a new "
                "run.")

    def _last_saved(self) -> str:
        p = self.saved
        if p is None:
            return "Nothing was saved yet."
        where = f"epoch {p.epoch - 1}" if p.step == 0 else f"epoch {p.epoch} step {p.step}"
        return f"{self.run_dir / 'last.pt'} holds the run as of {where}."

    def _interrupted(self) -> RunInterrupted:
        code = 130 if self.stop_signal == "SIGINT" else 143  # 128 + signal number, as shells report it
        p = self.progress
        if not self.training:
            where = "before training started (while computing features)"
        else:
            where = f"after epoch {p.epoch - 1}" if p.step == 0 else f"in epoch {p.epoch} after step {p.step}"
        return RunInterrupted(f"{self.stop_signal} {where}; saved {self.run_dir / 'last.pt'}. "
                              f"Continue with: {self._resume_command()}", exit_code=code)

    def _resume_command(self) -> str:
        world = self.dist.world
        return f"finetune train --resume {self.run_dir}" + (f" --nproc {world}" if world > 1 else "")


class _StopBeforeTraining(BaseException):
    """Raised by the signal handler while nothing has trained yet. A BaseException, as KeyboardInterrupt is, so
    that code which catches Exception around a step of the setup (the frozen-prefix check) cannot swallow it."""


# ---------------------------------------------------------------- --resume


def load_run_recipe(run_dir: Path, overrides: list[str] = (), data: Path | None = None):
    """The recipe a run folder was started with (RUN_DIR/recipe.yaml, safe YAML), with the few changes
    a resume may make; refused when it no longer matches the recipe last.pt was trained with."""
    from ..config import load_recipe, parse_override

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no recipe.yaml); --resume takes a folder written by "
                          "`finetune train`")
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--resume continues a run as it was; --set {key} would change it. Only "
                              f"{', '.join(RESUME_OVERRIDABLE)} can change; start a new run for anything else")
    recipe = load_recipe(run_dir / "recipe.yaml", overrides, data=data)
    trained = _flatten(_with_defaults(Checkpoint.load(require_last(run_dir)).recipe))
    now = _flatten(recipe.model_dump(mode="json"))
    changed = [f"{k}: {trained.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(trained) | set(now))
               if trained.get(k) != now.get(k) and not k.startswith("run.") and k not in RESUME_OVERRIDABLE]
    if changed:
        raise ConfigError(f"{run_dir / 'recipe.yaml'} no longer matches the recipe last.pt was trained with "
                          f"({'; '.join(changed[:3])}); undo the edit, or start a new run")
    return recipe


def require_last(run_dir: Path) -> Path:
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir} has no last.pt: the run stopped before its first checkpoint "
                              f"(train.save_every saves within epochs). Start it again with "
                              f"`finetune train {run_dir / 'recipe.yaml'} --output {run_dir} --exist-ok`")
    return run_dir / "last.pt"


def _with_defaults(tree: dict) -> dict:
    """A run's recipe as this version reads it: keys added since the run started take their defaults."""
    from ..config import build_recipe

    try:
        return build_recipe(tree).model_dump(mode="json")
    except ConfigError:
        return tree


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not (prefix == "strategy." and k == "lr"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
