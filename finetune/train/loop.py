"""fit(): one training run, read top to bottom. Each stage's detail lives in its own module: everything the
run needs in setup (data, model, freeze plan, loaders, the frozen part, the step), the frozen features in
features/, one optimizer step in step, where the run is and its checkpoints in state and checkpoints, the
head solved in solved, the temperature in calibration."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..config import Recipe
from ..console import literal, quiet_console, stderr_console, track
from ..data.filecheck import check_files
from ..data.folders import Splits, absolute_root, dataset_folders
from ..data.images import missing_indices
from ..data.loading import stopped_workers
from ..files import refuse_inside
from ..metrics import confusion_matrix, epoch_rank
from ..runtime.distributed import Dist
from .bank import bank_pass
from .budget import Budget
from .calibration import calibrate_run
from .checkpoints import CheckpointWriter
from .curves import CurvesPlot, plot_reliability, print_run_summary
from .estimate import estimate_line, seconds_per_image
from .loggers import Loggers
from .multilabel import val_map
from .progress import Tally
from .rundir import (
    check_disk_space,
    clear_previous_run,
    create_run_dir,
    run_lock,
    warn_if_environment_changed,
    write_data_summary,
    write_metrics,
    write_run_files,
)
from .setup import Setup, prepare
from .solved import solve_head
from .state import RunState
from .step import TrainStep
from .stop import StopGuard
from .swa import finish_average
from .thresholds import calibrate_thresholds, scores_at


def fit(recipe: Recipe, console=None, resume_dir: Path | None = None, dist: Dist = Dist(),
        on_epoch: Callable[[dict], str] | None = None) -> Path:
    """Train as the recipe says; returns the run folder (best.pt, last.pt, metrics.csv, recipe.yaml, ...).
    With resume_dir, continue that run from its last.pt (train.resume) instead of starting a new one.
    `dist`: this process's rank in a data-parallel run (runtime.distributed); rank 0 writes the run folder.
    `on_epoch`: shown each epoch's metrics row; what it returns, when not empty, is why the run stops after that
    epoch, as it stops for train.budget (`finetune tune`'s pruner)."""
    console = (console or stderr_console()) if dist.main else quiet_console()
    budget = Budget(recipe.train.budget)  # counts from here: the model, the feature pass and the epochs
    if recipe.data.root is not None:  # recorded absolute, so report, evaluate and --resume find it from anywhere
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
            update={"root": absolute_root(recipe.data.root)})})
    if recipe.distill is not None:  # the teacher as well
        recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(
            update={"teacher": Path(os.path.abspath(recipe.distill.teacher.expanduser()))})})
    setup = prepare(recipe, console, dist)
    recipe = setup.recipe  # train.batch_size auto: the size found, recorded in recipe.yaml for --resume
    run_dir = open_run_dir(recipe, setup, resume_dir, dist)
    with run_lock(run_dir, console) if dist.main else nullcontext():  # one run in a folder at a time
        run = RunState(CheckpointWriter(run_dir, setup.template, dist.main), setup.step, StopGuard(console),
                       recipe.train.save_every, setup.swa)
        if resume_dir:
            run.restore()
            warn_if_environment_changed(run_dir, setup.template.environment, console)
        elif dist.main:
            clear_previous_run(run_dir)
            write_run_files(run_dir, recipe, setup.template.environment)
        if dist.main:
            write_data_summary(run_dir / "data.json", setup.splits, setup.balance, console)
        loggers = Loggers(recipe.run, run_dir, recipe.model_dump(mode="json"), recipe.data.root, run.epoch) \
            if dist.main else None
        # Ctrl-C/SIGTERM: save last.pt and stop; out of memory or a diverging loss: say what to lower
        with run.running(recipe.train.batch_size, setup.info.preprocessing.size), \
                stopped_workers(setup.loaders.train, setup.loaders.val):
            if dist.main:  # how long the run will take here, from a few val images timed, before the feature pass
                console.print(estimate_line(setup.workload, *seconds_per_image(
                    setup.step.model, setup.loaders.val_images, setup.compute)), style="dim", soft_wrap=True)
            train_batches, val_batches = frozen_batches(setup, console)
            setup.step.wrap()  # DDP / torch.compile around what trains
            console.print(f"[bold]{len(setup.splits.train)}[/] train / [bold]{len(setup.splits.val)}[/] val images, "
                          f"{len(setup.splits.class_names)} classes, {literal(recipe.model.source)}:"
                          f"{literal(recipe.model.name)}, strategy {recipe.strategy.name}, device "
                          f"{setup.compute.device}" + dropped(setup) + run.resumed_at(), soft_wrap=True)
            epochs = Epochs(run, setup, train_batches, val_batches, loggers, console, budget, on_epoch)
            # the head solved on the frozen features, no epochs (solved.py); a run resumed after SGD steps (one
            # started before head_solver existed, whose recipe.yaml now reads as lbfgs) goes on by epochs
            epochs.solve() if setup.solve_head and run.progress.global_step == 0 else epochs.train()
            epochs.finish()
    return run_dir


def open_run_dir(recipe: Recipe, setup: Setup, resume_dir: Path | None, dist: Dist) -> Path:
    """The run folder (new, or the resumed one), after every check that can fail before work: never inside the
    dataset, and room for the checkpoints."""
    folder = resume_dir or recipe.run.output or recipe.run.dir
    refuse_inside(folder, dataset_folders(recipe.data.root), "the run folder")
    if dist.main:
        check_disk_space(folder, setup.step.model, setup.step.optimizer)
    return resume_dir or dist.on_main(lambda: create_run_dir(recipe.run))


def dropped(setup: Setup) -> str:
    """What the banner says of the images each epoch leaves out (the sampler's own words)."""
    return setup.loaders.sampler.epoch_note


def frozen_batches(setup: Setup, console):
    """(train batches, val batches) for the trained part: the frozen part's outputs (stored, or computed per
    batch) when the model is cut at its prefix, else the images; with distill, train's with the teacher's logits."""
    def cut(loaders):
        if setup.split is None:
            return loaders.train, loaders.val
        return setup.frozen.batches(setup.split, loaders, setup.features, setup.train_kind)

    return setup.teacher.taught(setup.loaders, cut, console) if setup.teacher else cut(setup.loaders)


class Epochs:
    """The run's epochs over its batches: train, evaluate, log, checkpoint; then calibration and the summary."""

    def __init__(self, state: RunState, setup: Setup, train_batches, val_batches, loggers: Loggers | None, console,
                 budget: Budget | None = None, on_epoch: Callable[[dict], str] | None = None):
        self.state, self.setup, self.loggers, self.console = state, setup, loggers, console
        self.budget, self.stop_reason, self.on_epoch = budget or Budget(None), "", on_epoch or (lambda row: "")
        self.train_batches, self.val_batches = train_batches, val_batches
        self.curves, self.vanished = CurvesPlot(state.run_dir / "curves.png"), Vanished(setup.splits)
        self.main = setup.compute.dist.main

    def train(self) -> None:
        cfg, plan, step = self.setup.train, self.setup.plan, self.setup.step
        for epoch in range(self.state.epoch, cfg.epochs + 1):
            if stopped_early(self.state.rows, cfg.early_stop):  # a resumed run that had stopped early stays stopped
                break
            plan.apply(step.model, epoch)  # what trains this epoch (strategy.freeze_epochs)
            if plan.unfreezes(epoch):
                self.console.print(f"epoch {epoch}: unfreezing {', '.join(plan.unfreezes(epoch))}")
            step.wrap()  # DDP registers what trains when it wraps: again when that changed
            row = self.epoch(epoch)
            if self.setup.swa is not None:  # train.swa: this epoch's weights join the average from its start on
                self.setup.swa.update(step.model, epoch)
            best = self.state.end_epoch(row)
            out_of_time = epoch < cfg.epochs and not self.budget.allows_another(
                [r["seconds"] for r in self.state.rows], self.setup.compute.dist)
            told = self.on_epoch(row)  # why to stop now, from outside the run (tune's pruner); "" to go on
            self.log(row, final=epoch == cfg.epochs or out_of_time or bool(told) or
                     stopped_early(self.state.rows, cfg.early_stop))
            self.console.print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                               f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}" +
                               (f" mAP {row['val_map']:.3f}" if "val_map" in row else "") +
                               f" | {row['seconds']:.1f}s")
            if self.vanished.report(self.setup.compute.dist) and self.main:  # deleted since the pre-scan
                write_data_summary(self.state.run_dir / "data.json", self.setup.splits, self.setup.balance,
                                   self.console)
            self.state.save_epoch(best)  # best.pt (when best), then last.pt
            if out_of_time or told:
                self.stop_reason = told or self.budget.reason()
                self.console.print(f"epoch {epoch}: stopping, {self.stop_reason}")
                break

    def epoch(self, epoch: int) -> dict:
        """Train one epoch, then evaluate (the moving average and the raw weights, with EMA): its metrics row."""
        step, cfg = self.setup.step, self.setup.train
        lrs, done = self.state.begin_epoch(epoch)
        self.train_batches.set_epoch(epoch, skip=done * cfg.accumulate * cfg.batch_size)  # global positions
        train_loss, train_acc = train_epoch(step, self.train_batches, self.state, self.vanished, self.console,
                                            f"epoch {epoch}/{cfg.epochs} train")
        kept = [] if self.setup.splits.multilabel else None  # multilabel: the val logits, for the mAP
        val_loss, val_acc = evaluate(step, step.scored_net, self.val_batches, self.vanished, self.console,
                                     f"epoch {epoch}/{cfg.epochs} val", kept)
        scores = {} if kept is None else {"val_map": val_map(kept, self.setup.splits.targets, step.compute)}
        raw = {}
        if step.ema is not None:
            loss, acc = evaluate(step, step.runner, self.val_batches, self.vanished, self.console,
                                 f"epoch {epoch} val (raw weights)")
            raw = {"val_loss_raw": loss, "val_acc_raw": acc}
        return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, **scores, **raw, **lrs, "seconds": self.state.epoch_seconds()}

    def solve(self) -> None:
        """strategy.head_solver lbfgs: one solve instead of the epochs; a resumed run that has its head keeps it."""
        if self.state.rows:
            return
        row = solve_head(self.state, self.setup.step, self.setup.step.net, self.train_batches, self.val_batches,
                         len(self.setup.splits.class_names), self.setup.train.seed, self.console,
                         self.setup.splits.targets)
        self.log(row, final=False, curves=False)
        self.state.save_epoch(True)  # the one row is the best; a signal during the solve stops here, all written

    def log(self, row: dict, final: bool, curves: bool = True) -> None:
        if self.main:
            write_metrics(self.state.run_dir / "metrics.csv", self.state.rows)
            if curves:
                self.curves.update(self.state.rows, final=final)
            self.loggers.epoch(row)

    def finish(self) -> None:
        """Calibrate (a temperature and rejection thresholds per checkpoint, on val; multilabel: per-label
        thresholds, train.thresholds), and summarise."""
        run, setup, cfg = self.state, self.setup, self.setup.train
        if setup.swa is not None:  # the average into the model, BatchNorm recomputed, scored: last.pt holds it
            finish_average(run, setup.swa, setup.step, self.train_batches, lambda net: evaluate(
                setup.step, net, self.val_batches, self.vanished, self.console, "swa val"), self.console)
        multilabel = setup.splits.multilabel
        if multilabel:
            calibration, val = calibrate_thresholds(run, setup.step.scored_net, self.val_batches, setup.compute,
                                                    setup.splits.targets, self.console)
        else:
            calibration, val = calibrate_run(run, setup.step.scored_net, self.val_batches, setup.compute,
                                             self.console, bank_pass(setup))
            if val is not None and self.main:
                plot_reliability(run.run_dir / "reliability.png", *val, calibration.temperature)
        if self.loggers is not None:
            k = len(setup.splits.class_names)
            self.loggers.end(calibration, confusion_matrix(val[1], val[0].argmax(1), k)
                             if val and not multilabel else None, setup.splits.class_names)
        early = stopped_early(run.rows, cfg.early_stop)
        best, teacher = max(run.rows, key=epoch_rank), setup.teacher
        if teacher is not None and self.main:
            teacher.record(best, run.run_dir)  # distill.json: teacher against student on val
        print_run_summary(self.console, run.rows, calibration, run.run_dir,
                          f"val {'mAP' if multilabel else 'accuracy'} did not improve for {cfg.early_stop} epochs"
                          if early else self.stop_reason, scores_at(calibration, *val) if val and multilabel else None,
                          run.progress.swa, teacher.summary(best, run.run_dir) if teacher else ())


def train_epoch(step: TrainStep, batches, run: RunState, vanished: Vanished, console,
                label: str) -> tuple[float, float]:
    """One pass of optimizer steps: (mean loss, accuracy). The totals continue the run's epoch in progress."""
    step.train_mode()
    for group in in_groups(track(batches, label, console), step.accumulate):
        for batch in group:
            vanished.note("train", batch[1])
        run.tally.add(*step(group))
        run.after_step()  # last.pt every train.save_every steps; stops here after Ctrl-C/SIGTERM
    return run.tally.means(step.compute.dist)


def evaluate(step: TrainStep, net: nn.Module, batches, vanished: Vanished, console, label: str,
             keep: list | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of `net` over the batches, in eval mode, without gradients; `keep` gets the logits."""
    net.eval()
    tally = Tally()
    with torch.no_grad():
        for inputs, labels, *_ in track(batches, label, console):
            vanished.note("val", labels)
            tally.add(*step.evaluate(net, inputs, labels, keep))
    return tally.means(step.compute.dist)


def in_groups(items, size: int):
    """Lists of `size` consecutive items (the last one shorter): the batches of one optimizer step."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def stopped_early(rows: list[dict], patience: int | None) -> bool:
    """train.early_stop: the best val accuracy (multilabel: val mAP) is more than `patience` epochs old."""
    if not patience or not rows:
        return False
    best = max(range(len(rows)), key=lambda i: (epoch_rank(rows[i])[0], -i))  # the first epoch that reached it
    return len(rows) - 1 - best >= patience


class Vanished:
    """Images that could be read at the pre-scan and not in an epoch (deleted, emptied): each is left out of the
    loss and the scores, said once, and listed in data.json with the reason."""

    def __init__(self, splits: Splits):
        self.splits, self.seen, self.new = splits, set(), []

    def note(self, split: str, labels) -> None:
        for index in missing_indices(labels):
            path = getattr(self.splits, split)[index][0]
            if path not in self.seen:
                self.seen.add(path)
                self.new.append(path)

    def report(self, dist: Dist = Dist()) -> bool:
        """Add what vanished since the last report (on any rank) to splits.skipped; True when there was any."""
        new, self.new = sorted(set(dist.gather(self.new))), []
        if not new:
            return False
        checks = check_files(new)
        self.splits.skipped += [(p, f"{checks[p].problem or 'changed'}: {checks[p].detail} (during training)")
                                for p in new]
        return True
