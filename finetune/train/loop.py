"""fit(): one training run, read top to bottom. Each stage's detail lives in its own module: the split in
data.folders, the model in models.registry, what trains in freeze, one optimizer step in step, the frozen
prefix and its cache in features, last.pt/best.pt and signals in resume, the temperature in calibration."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..config import DataSpec, Recipe, TrainSpec
from ..console import literal, stderr_console, track
from ..data.balance import Balance, resolve_balance
from ..data.filecheck import unusable_files
from ..data.folders import Splits, resolve_splits
from ..data.images import ImageDataset
from ..data.loading import Loaders, make_loader, resolve_workers, stopped_workers
from ..data.sampling import EpochSampler, SeededDataset
from ..data.transforms import draft_size, eval_transform, train_transform
from ..models.registry import create_model
from ..preprocessing import Preprocessing
from ..runtime.device import Compute, resolve_compute, seed_everything
from .calibration import calibrate_run
from .curves import CurvesPlot, print_run_summary
from .features import FeatureCache, frozen_batches
from .freeze import plan_freeze, set_train_mode
from .optim import build_optimizer, build_scheduler
from .resume import RunState, Tally
from .rundir import (
    check_disk_space,
    create_run_dir,
    environment,
    warn_if_environment_changed,
    write_data_summary,
    write_metrics,
    write_run_files,
)
from .step import TrainStep


def fit(recipe: Recipe, console=None, resume_dir: Path | None = None) -> Path:
    """Train as the recipe says; returns the run folder (best.pt, last.pt, metrics.csv, recipe.yaml, ...).
    With resume_dir, continue that run from its last.pt (see resume.py) instead of starting a new one."""
    console = console or stderr_console()
    cfg = recipe.train
    compute = resolve_compute(cfg.device, cfg.amp)
    seed_everything(cfg.seed)
    # data: the split, unreadable files left out
    splits = resolve_splits(recipe.data.root, recipe.data.val_fraction, cfg.seed,
                            screen=lambda paths: unusable_files(paths, console))
    # the model, and what of it trains
    model, info = create_model(recipe.model, len(splits.class_names), recipe.data.image_size)
    plan = plan_freeze(model, info, recipe.strategy)
    plan.apply(model)
    model.to(compute.device, memory_format=torch.channels_last)
    balance = resolve_balance([y for _, y in splits.train], len(splits.class_names), recipe.data.class_weights,
                              recipe.data.sampler, cfg.seed)
    loaders = create_loaders(splits, info.preprocessing, recipe.data, cfg, balance, compute)
    # one optimizer step
    optimizer = build_optimizer(recipe.optim, plan.param_groups(model, recipe.optim.weight_decay))
    scheduler = build_scheduler(optimizer, recipe.schedule, math.ceil(len(splits.train) / cfg.batch_size), cfg.epochs)
    criterion = nn.CrossEntropyLoss(weight=balance.loss_weights, label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.autocast_dtype == torch.float16)
    step = TrainStep(model, model, criterion.to(compute.device), optimizer, scheduler, scaler, compute)
    # the run folder, after every check that can fail before work
    cache = FeatureCache.from_recipe(recipe, info, enabled=plan.freezes_a_prefix)
    env = environment(cfg.seed, compute.device)
    template = Checkpoint(recipe.model.model_copy(update={"weights": None}), splits.class_names, info.preprocessing,
                          info.head_name, recipe.strategy.name, recipe=recipe.model_dump(mode="json"), environment=env)
    check_disk_space(resume_dir or recipe.run.output or recipe.run.dir, model, optimizer)
    run_dir = resume_dir or create_run_dir(recipe.run)
    run = RunState(run_dir, step, template, cfg.save_every)
    if resume_dir:
        run.restore()
        warn_if_environment_changed(run_dir, env, console)
    else:
        write_run_files(run_dir, recipe, env)
    write_data_summary(run_dir / "data.json", splits, balance, console)
    # the frozen prefix runs once per image where it can (cached); each step trains the rest alone
    step.net, train_batches, val_batches = frozen_batches(model, plan, loaders, cache, compute, console)
    console.print(f"[bold]{len(splits.train)}[/] train / [bold]{len(splits.val)}[/] val images, "
                  f"{len(splits.class_names)} classes, {literal(recipe.model.source)}:{literal(recipe.model.name)}, "
                  f"strategy {recipe.strategy.name}, device {compute.device}" + run.resumed_at(), soft_wrap=True)

    curves = CurvesPlot(run_dir / "curves.png")
    # Ctrl-C/SIGTERM: save last.pt and stop; OOM: say what to lower
    with run.guard(console, cfg.batch_size, info.preprocessing.size), stopped_workers(loaders.train, loaders.val):
        for epoch in range(run.epoch, cfg.epochs + 1):
            lrs, done = run.begin_epoch(epoch)
            loaders.sampler.set_epoch(epoch, skip=done * cfg.batch_size)
            # train, then evaluate
            train_loss, train_acc = train_epoch(step, train_batches, run, console, f"epoch {epoch}/{cfg.epochs} train")
            val_loss, val_acc = evaluate(step, val_batches, console, f"epoch {epoch}/{cfg.epochs} val")
            # log
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, **lrs, "seconds": run.epoch_seconds()}
            best = run.end_epoch(row)
            write_metrics(run_dir / "metrics.csv", run.rows)
            curves.update(run.rows, final=epoch == cfg.epochs)
            console.print(f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                          f"val loss {val_loss:.4f} acc {val_acc:.3f} | {row['seconds']:.1f}s")
            # checkpoint: best.pt (when best), then last.pt
            run.save_epoch(best)
        # calibrate (a temperature per checkpoint, fitted on val) and summarise
        calibration = calibrate_run(run, step.net, val_batches, compute, console)
        print_run_summary(console, run.rows, calibration, run_dir)
    return run_dir


def train_epoch(step: TrainStep, batches, run: RunState, console, label: str) -> tuple[float, float]:
    """One pass of optimizer steps: (mean loss, accuracy). The totals continue the run's epoch in progress."""
    set_train_mode(step.net)
    for inputs, labels in track(batches, label, console):
        run.tally.add(*step(inputs, labels))
        run.after_step()  # last.pt every train.save_every steps; stops here after Ctrl-C/SIGTERM
    return run.tally.means()


def evaluate(step: TrainStep, batches, console, label: str) -> tuple[float, float]:
    """(mean loss, accuracy) over the batches, in eval mode, without gradients."""
    step.net.eval()
    tally = Tally()
    with torch.no_grad():
        for inputs, labels in track(batches, label, console):
            tally.add(*step.evaluate(inputs, labels))
    return tally.means()


def create_loaders(splits: Splits, pre: Preprocessing, data: DataSpec, train: TrainSpec, balance: Balance,
                   compute: Compute) -> Loaders:
    """Train batches in an order and with augmentations fixed by (seed, epoch), balanced or not, so a run can
    resume mid-epoch (data.sampling); val in file order."""
    workers, pin = resolve_workers(data.workers), compute.device.type == "cuda"
    sampler = balance.sampler or EpochSampler(len(splits.train), train.seed)
    images = ImageDataset(splits.train, train_transform(pre, data.augment), draft_size(pre, data.augment))
    return Loaders(make_loader(SeededDataset(images), train.batch_size, workers, train.seed, pin, sampler),
                   make_loader(ImageDataset(splits.val, eval_transform(pre), pre.resize), train.batch_size, workers,
                               train.seed, pin))
