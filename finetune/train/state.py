"""RunState: where a run is, and the loop's calls that move it on: begin an epoch, after each step, end an
epoch, save. It holds the Progress (train.progress) and the epoch's running totals, writes through the run's
CheckpointWriter, stops through its StopGuard, and words failures through train.failures.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict

import torch

from ..checkpoint import Calibration, Checkpoint
from ..errors import CheckpointError, ConfigError, FinetuneError, RunInterrupted, TrainingDiverged
from ..metrics import epoch_rank
from ..runtime.distributed import Dist
from .checkpoints import CheckpointWriter
from .failures import Situation, as_user_error, group_lrs, lower_lr
from .progress import Progress, Tally, capture_rng, restore_rng
from .step import TrainStep
from .stop import StopBeforeTraining, StopGuard
from .swa import WeightAverage


class RunState:
    """A run in progress. Every rank keeps one; rank 0's writer writes the files."""

    def __init__(self, writer: CheckpointWriter, step: TrainStep, stop: StopGuard, save_every: int | None = None,
                 swa: WeightAverage | None = None):
        self.writer, self.step, self.stop, self.save_every = writer, step, stop, save_every
        self.swa = swa  # train.swa: its average goes into last.pt's resume state
        self.progress, self.tally = Progress(), Tally()
        self.last_calibration: Calibration | None = None  # last.pt's, once calibrated
        self.saved: Progress | None = None  # what last.pt holds
        self._epoch_start = time.perf_counter()

    @property
    def run_dir(self):
        return self.writer.run_dir

    @property
    def dist(self) -> Dist:
        return self.step.compute.dist if self.step is not None else Dist()

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def rows(self) -> list[dict]:
        return self.progress.rows

    @property
    def last_metrics(self) -> dict:
        """What last.pt's weights scored: the last epoch's row, or train.swa's average once scored."""
        p = self.progress
        return p.swa or (p.rows[-1] if p.rows else {})

    def resumed_at(self) -> str:
        p = self.progress
        if p.global_step == 0:
            return ""
        return "; resuming " + (f"epoch {p.epoch} after step {p.step}" if p.step else f"after epoch {p.epoch - 1}")

    # -- the loop's calls, in order

    def begin_epoch(self, epoch: int) -> tuple[dict, int]:
        """(learning rates at the epoch's start, steps of it already done) - nonzero when resumed mid-epoch."""
        p = self.progress
        self.stop.training = True
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
        self._stop_if_asked()
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
                                       f"{lower_lr(group_lrs(self.step.optimizer))} {self.last_saved()}")
        p = self.progress
        best = not p.rows or epoch_rank(row) > max(map(epoch_rank, p.rows))
        p.best_acc = max(p.best_acc, row["val_acc"])
        p.rows.append(row)
        p.epoch, p.step, p.seconds, p.lrs = p.epoch + 1, 0, 0.0, {}
        self.tally = Tally()
        return best

    def end_average(self, row: dict, best: bool) -> None:
        """train.swa: the average, now in the model, scored (`row`): best.pt when it is the best, then last.pt."""
        self.progress.swa = row
        if best:
            self.writer.write_best(self.step.scored.state_dict(), row)
        self.save()

    def save_epoch(self, best: bool) -> None:
        """best.pt (when the epoch is the best so far), then last.pt; then a signal that arrived during validation
        stops the run here. Weights that are not finite are never saved: predict, export and resume would
        inherit them."""
        bad = next((k for m in {self.step.model, self.step.scored} for k, v in m.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise TrainingDiverged(f"the weights became non-finite ({bad}) in epoch {self.rows[-1]['epoch']}. "
                                   f"{lower_lr(group_lrs(self.step.optimizer))} {self.last_saved()}")
        if best:
            self.writer.write_best(self.step.scored.state_dict(), self.rows[-1])
        self.save()
        self._stop_if_asked(save=False)

    def save(self, calibration: Calibration | None = None) -> None:
        """last.pt (every rank calls this at the same step: the epoch's totals so far are summed over the ranks)."""
        p = self.progress
        if p.step:
            p.seconds = self.epoch_seconds()
        p.tally = asdict(self.tally.total(self.dist) if self.stop.training else self.tally)
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
        if self.swa is not None:
            resume.update(self.swa.state())
        self.writer.write_last(s.scored.state_dict(), self.last_metrics, resume, calibration)

    def best_checkpoint(self) -> Checkpoint:
        """best.pt as written this session, or read (by rank 0, shared) when a resumed run had already finished."""
        return self.writer.best or self.dist.share(Checkpoint.load(self.writer.best_path) if self.dist.main else None)

    def restore(self) -> None:
        """Back to where last.pt is (rank 0 reads it and hands it to the others)."""
        last = self.dist.share(self.writer.read_last() if self.dist.main else None)
        state = last.resume
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.writer.last_path} has no resume state (written by an older finetune?); "
                                  "start a new run")
        if last.class_names != self.writer.template.class_names:
            raise ConfigError(f"the data's classes ({', '.join(self.writer.template.class_names)}) are not the ones "
                              f"{self.run_dir.name} was trained on ({', '.join(last.class_names)}); resume with "
                              "the same class folders (--data), or start a new run")
        self._load(last.state, state)
        restore_rng(state["rng"])
        self.progress = p = Progress(**state["progress"])
        if p.world != self.dist.world and p.step:
            raise ConfigError(f"{self.run_dir} stopped in the middle of epoch {p.epoch} training on {p.world} "
                              f"process(es); resume it on {p.world} (torchrun --nproc_per_node={p.world}), or start "
                              "a new run")
        self.tally = Tally(**p.tally) if self.dist.main else Tally()  # the saved totals count once, on rank 0
        self.saved, self.last_calibration = Progress(**state["progress"]), last.calibration

    def _load(self, weights: dict, state: dict) -> None:
        s = self.step
        if s.ema is not None:
            s.model.load_state_dict(state["train_model"])
            s.ema.module.load_state_dict(weights)
            s.ema.n_averaged.copy_(state["ema_n_averaged"])
        else:
            s.model.load_state_dict(weights)
        if self.swa is not None and "swa_model" in state:
            self.swa.load(state)
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            s.scaler.load_state_dict(state["scaler"])

    # -- stopping and failing

    @contextmanager
    def running(self, batch_size: int, image_size: int):
        """The run's body: signals stop it after a step with last.pt saved (StopGuard); what goes wrong becomes
        a user error where it is one (train.failures); the rest is a bug whose traceback goes to RUN_DIR."""
        with self.stop:
            try:
                yield self
            except StopBeforeTraining:
                self.save()  # the run as it starts: --resume begins where it would have
                raise self._interrupted() from None
            except KeyboardInterrupt:
                raise RunInterrupted(f"a second Ctrl-C, so at once. {self.last_saved()} "
                                     f"Continue with: {self._resume_command()}", exit_code=130) from None
            except FinetuneError:
                raise
            except Exception as exc:
                error = as_user_error(exc, Situation(self.progress.epoch, self.progress.step,
                                                     group_lrs(self.step.optimizer), self.last_saved(), batch_size,
                                                     image_size, self.dist.world, self._resume_command()))
                if error is None:
                    exc.finetune_run_dir = self.run_dir  # where the command line writes the traceback (crash.log)
                    raise
                raise error from None

    def last_saved(self) -> str:
        p = self.saved
        if p is None:
            return "Nothing was saved yet."
        where = f"epoch {p.epoch - 1}" if p.step == 0 else f"epoch {p.epoch} step {p.step}"
        return f"{self.writer.last_path} holds the run as of {where}."

    def _stop_if_asked(self, save: bool = True) -> None:
        if self.dist.any(self.stop.requested is not None):  # every rank stops after the same step
            self.stop.requested = self.stop.requested or "SIGTERM"
            if save:
                self.save()
            raise self._interrupted()

    def _interrupted(self) -> RunInterrupted:
        signal = self.stop.requested
        code = 130 if signal == "SIGINT" else 143  # 128 + signal number, as shells report it
        p = self.progress
        if not self.stop.training:
            where = "before training started (while computing features)"
        else:
            where = f"after epoch {p.epoch - 1}" if p.step == 0 else f"in epoch {p.epoch} after step {p.step}"
        return RunInterrupted(f"{signal} {where}; saved {self.writer.last_path}. "
                              f"Continue with: {self._resume_command()}", exit_code=code)

    def _resume_command(self) -> str:
        world = self.dist.world
        return f"finetune train --resume {self.run_dir}" + (f" --nproc {world}" if world > 1 else "")
