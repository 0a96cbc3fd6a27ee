"""fit(): one training run, read top to bottom. Each stage's detail lives in its own module: the split in
data.folders, the model in models.registry, what trains in freeze, one optimizer step in step, the frozen
prefix and its cache in features, last.pt/best.pt and signals in resume, the temperature in calibration."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..config import DataSpec, Recipe, TrainSpec
from ..console import literal, quiet_console, stderr_console, track
from ..data.balance import Balance, resolve_balance
from ..data.doctor import training_screen
from ..data.filecheck import check_files
from ..data.folders import Splits, resolve_splits
from ..data.images import ImageDataset, missing_indices
from ..data.loading import Loaders, make_loader, resolve_workers, stopped_workers
from ..data.mixing import MixedBatches
from ..data.sampling import EpochSampler, SeededDataset, Shard
from ..data.transforms import draft_size, eval_transform, train_transform
from ..errors import ConfigError
from ..files import refuse_inside
from ..metrics import confusion_matrix
from ..models.registry import ModelInfo, create_model
from ..preprocessing import Preprocessing
from ..runtime.device import Compute, resolve_compute, seed_everything
from ..runtime.distributed import Dist, rank_device
from .calibration import calibrate_run
from .curves import CurvesPlot, plot_reliability, print_run_summary
from .estimate import Workload, estimate_line, seconds_per_image
from .features import FeatureCache, frozen_batches, image_dataset
from .freeze import FreezePlan, plan_freeze
from .loggers import Loggers, check_loggers
from .optim import build_optimizer, build_scheduler
from .resume import RunState, Tally
from .rundir import (
    check_disk_space,
    clear_previous_run,
    create_run_dir,
    environment,
    run_lock,
    warn_if_environment_changed,
    write_data_summary,
    write_metrics,
    write_run_files,
)
from .solved import solve_head
from .step import TrainStep, compiled, data_parallel, moving_average


@dataclass
class Setup:
    """Everything a run needs, made and checked before its folder exists."""
    splits: Splits
    info: ModelInfo
    plan: FreezePlan
    balance: Balance
    loaders: Loaders
    step: TrainStep
    cache: FeatureCache
    template: Checkpoint  # the run's checkpoint without weights
    compute: Compute


def fit(recipe: Recipe, console=None, resume_dir: Path | None = None, dist: Dist = Dist()) -> Path:
    """Train as the recipe says; returns the run folder (best.pt, last.pt, metrics.csv, recipe.yaml, ...).
    With resume_dir, continue that run from its last.pt (see resume.py) instead of starting a new one.
    `dist`: this process's rank in a data-parallel run (runtime.distributed); rank 0 writes the run folder."""
    console = console or stderr_console()
    console = console if dist.main else quiet_console()
    if recipe.data.root is not None:  # recorded absolute, so report, evaluate and --resume find it from anywhere
        root = Path(os.path.abspath(Path(recipe.data.root).expanduser()))
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"root": root})})
    cfg = recipe.train
    setup = prepare(recipe, console, dist)
    # the run folder, after every check that can fail before work; one run in it at a time
    refuse_inside(resume_dir or recipe.run.output or recipe.run.dir, recipe.data.root, "the run folder")
    if dist.main:
        check_disk_space(resume_dir or recipe.run.output or recipe.run.dir, setup.step.model, setup.step.optimizer)
    run_dir = resume_dir or dist.on_main(lambda: create_run_dir(recipe.run))
    with run_lock(run_dir, console) if dist.main else nullcontext():
        run = RunState(run_dir, setup.step, setup.template, cfg.save_every)
        if resume_dir:
            run.restore()
            warn_if_environment_changed(run_dir, setup.template.environment, console)
        elif dist.main:
            clear_previous_run(run_dir)
            write_run_files(run_dir, recipe, setup.template.environment)
        if dist.main:
            write_data_summary(run_dir / "data.json", setup.splits, setup.balance, console)
        # Ctrl-C/SIGTERM: save last.pt and stop; out of memory or a diverging loss: say what to lower
        with run.guard(console, cfg.batch_size, setup.info.preprocessing.size), \
                stopped_workers(setup.loaders.train, setup.loaders.val):
            run_epochs(run, setup, recipe, console)
    return run_dir


def prepare(recipe: Recipe, console, dist: Dist = Dist()) -> Setup:
    """Data, model, freeze plan, loaders and the training step, as the recipe says."""
    cfg = recipe.train
    check_batch(cfg.batch_size, dist.world, dist.main)
    compute = resolve_compute(rank_device(dist, cfg.device), cfg.amp, dist)
    if cfg.sync_bn and dist.enabled and compute.device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only; set it to false")
    check_loggers(recipe.run)
    seed_everything(cfg.seed)
    # data: the split, with unreadable files, label conflicts and train copies of val images left out
    splits = dist.on_main(lambda: resolve_splits(recipe.data.root, recipe.data.val_fraction, cfg.seed,
                                                 screen=lambda tree: training_screen(tree, console, recipe.data.root)))
    # the model, and what of it trains
    model, info = create_model(recipe.model, len(splits.class_names), recipe.data.image_size)
    plan = plan_freeze(model, info, recipe.strategy)
    plan.apply(model)
    if cfg.sync_bn and dist.enabled:
        synced_batchnorm(model, plan)
    model.to(compute.device, memory_format=torch.channels_last)
    balance = resolve_balance([y for _, y in splits.train], len(splits.class_names), recipe.data.class_weights,
                              recipe.data.sampler, cfg.seed)
    loaders = create_loaders(splits, info.preprocessing, recipe.data, cfg, balance, compute)
    # one optimizer step (over `accumulate` batches), and the weights' moving average
    optimizer = build_optimizer(recipe.optim, plan.param_groups(model, recipe.optim.weight_decay))
    steps = math.ceil(math.ceil(len(splits.train) / cfg.batch_size) / cfg.accumulate)
    scheduler = build_scheduler(optimizer, recipe.schedule, steps, cfg.epochs)
    criterion = nn.CrossEntropyLoss(weight=balance.loss_weights, label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.autocast_dtype == torch.float16)
    ema = moving_average(model, cfg.ema) if cfg.ema else None
    step = TrainStep(model, model, criterion.to(compute.device), optimizer, scheduler, scaler, compute,
                     cfg.grad_clip, ema, ema and ema.module, cfg.accumulate, plan.frozen_bn)
    cache = FeatureCache.from_recipe(recipe, info, enabled=plan.freezes_a_prefix)
    template = Checkpoint(recipe.model.model_copy(update={"weights": None}), splits.class_names, info.preprocessing,
                          info.head_name, recipe.strategy.name, recipe=recipe.model_dump(mode="json"),
                          environment=environment(cfg.seed, compute.device))
    return Setup(splits, info, plan, balance, loaders, step, cache, template, compute)


def run_epochs(run: RunState, setup: Setup, recipe: Recipe, console) -> None:
    """The frozen features, then the epochs (train, evaluate, log, checkpoint), then calibration."""
    step, cfg, run_dir = setup.step, recipe.train, run.run_dir
    # how long the run will take here, from a few val images timed, before the feature pass or the first epoch
    if setup.compute.dist.main:
        console.print(estimate_line(workload(setup, recipe), *seconds_per_image(
            step.model, image_dataset(setup.loaders.val), setup.compute)), style="dim", soft_wrap=True)
    # the frozen prefix runs once per image where it can (cached); each step trains the rest alone
    tail_of, train_batches, val_batches = frozen_batches(step.model, setup.plan, setup.loaders, setup.cache,
                                                         setup.compute, console)
    def trained_part():  # data parallel: wrapped again when gradual unfreezing changes what trains
        net = data_parallel(tail_of(step.model), setup.compute)
        return compiled(net) if cfg.compile else net

    step.net, dist, wrapped = trained_part(), setup.compute.dist, setup.plan.trainable()
    step.ema_net = tail_of(step.ema.module) if step.ema is not None else None
    console.print(f"[bold]{len(setup.splits.train)}[/] train / [bold]{len(setup.splits.val)}[/] val images, "
                  f"{len(setup.splits.class_names)} classes, {literal(recipe.model.source)}:"
                  f"{literal(recipe.model.name)}, strategy {recipe.strategy.name}, device {setup.compute.device}"
                  + run.resumed_at(), soft_wrap=True)
    curves, vanished = CurvesPlot(run_dir / "curves.png"), Vanished(setup.splits)
    loggers = Loggers(recipe.run, run_dir, recipe.model_dump(mode="json"), recipe.data.root, run.epoch) \
        if dist.main else None
    # the head solved on the frozen features, no epochs (solved.py); a run resumed after SGD steps (one started
    # before head_solver existed, whose recipe.yaml now reads as lbfgs) goes on by epochs
    if recipe.strategy.head_solver == "lbfgs" and run.progress.global_step == 0:
        if not run.rows:  # a resumed run that has its solved head keeps it
            row = solve_head(run, step, tail_of(step.model), train_batches, val_batches,
                             len(setup.splits.class_names), cfg.seed, console)
            if dist.main:
                write_metrics(run_dir / "metrics.csv", run.rows)
                loggers.epoch(row)
            run.save_epoch(True)  # the one row is the best; a signal during the solve stops here, all written
    else:
        for epoch in range(run.epoch, cfg.epochs + 1):
            if stopped_early(run.rows, cfg.early_stop):  # a resumed run that had stopped early stays stopped
                break
            setup.plan.apply(step.model, epoch)  # what trains this epoch (strategy.freeze_epochs)
            if setup.plan.unfreezes(epoch):
                console.print(f"epoch {epoch}: unfreezing {', '.join(setup.plan.unfreezes(epoch))}")
            if setup.plan.trainable(epoch) != wrapped:
                step.net, wrapped = trained_part(), setup.plan.trainable(epoch)
            lrs, done = run.begin_epoch(epoch)
            setup.loaders.sampler.set_epoch(epoch, skip=done * cfg.accumulate * cfg.batch_size)  # global positions
            # train, then evaluate (the moving average and the raw weights, with EMA)
            train_loss, train_acc = train_epoch(step, train_batches, run, vanished, console,
                                                f"epoch {epoch}/{cfg.epochs} train")
            val_loss, val_acc = evaluate(step, step.scored_net, val_batches, vanished, console,
                                         f"epoch {epoch}/{cfg.epochs} val")
            raw = {}
            if step.ema is not None:
                loss, acc = evaluate(step, step.net, val_batches, vanished, console, f"epoch {epoch} val (raw weights)")
                raw = {"val_loss_raw": loss, "val_acc_raw": acc}
            # log
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, **raw, **lrs, "seconds": run.epoch_seconds()}
            best = run.end_epoch(row)
            if dist.main:
                write_metrics(run_dir / "metrics.csv", run.rows)
                curves.update(run.rows, final=epoch == cfg.epochs or stopped_early(run.rows, cfg.early_stop))
                loggers.epoch(row)
            console.print(f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                          f"val loss {val_loss:.4f} acc {val_acc:.3f} | {row['seconds']:.1f}s")
            if vanished.report(dist) and dist.main:  # deleted or emptied since the pre-scan: left out, in data.json
                write_data_summary(run_dir / "data.json", setup.splits, setup.balance, console)
            # checkpoint: best.pt (when best), then last.pt
            run.save_epoch(best)
    # calibrate (a temperature per checkpoint, fitted on val) and summarise
    calibration, val = calibrate_run(run, step.scored_net, val_batches, setup.compute, console)
    if val is not None and dist.main:
        plot_reliability(run_dir / "reliability.png", *val, calibration["temperature"])
    if loggers is not None:
        k = len(setup.splits.class_names)
        loggers.end(calibration, confusion_matrix(val[1], val[0].argmax(1), k) if val else None,
                    setup.splits.class_names)
    early = stopped_early(run.rows, cfg.early_stop)
    print_run_summary(console, run.rows, calibration, run_dir,
                      f"val accuracy did not improve for {cfg.early_stop} epochs" if early else "")


def workload(setup: Setup, recipe: Recipe) -> Workload:
    """What estimate.py prices: the run's passes over its images."""
    random = recipe.data.augment != "none"
    cached = setup.cache.enabled and recipe.strategy.name == "feature-extract" and \
        (not random or recipe.features.views > 0)
    return Workload(len(setup.splits.train), len(setup.splits.val), recipe.train.epochs, recipe.strategy.name,
                    cached, recipe.features.views if random else 1, setup.info.preprocessing.size,
                    setup.compute.device.type)


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


def evaluate(step: TrainStep, net: nn.Module, batches, vanished: Vanished, console, label: str) -> tuple[float, float]:
    """(mean loss, accuracy) of `net` over the batches, in eval mode, without gradients."""
    net.eval()
    tally = Tally()
    with torch.no_grad():
        for inputs, labels, *_ in track(batches, label, console):
            vanished.note("val", labels)
            tally.add(*step.evaluate(net, inputs, labels))
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
    """train.early_stop: the best val accuracy is more than `patience` epochs old."""
    if not patience or not rows:
        return False
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -i))  # the first epoch that reached it
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


def create_loaders(splits: Splits, pre: Preprocessing, data: DataSpec, train: TrainSpec, balance: Balance,
                   compute: Compute) -> Loaders:
    """Train batches in an order and with augmentations fixed by (seed, epoch), balanced or not, so a run can
    resume mid-epoch (data.sampling); val in file order."""
    workers, pin, dist = resolve_workers(data.workers), compute.device.type == "cuda", compute.dist
    sampler = balance.sampler or EpochSampler(len(splits.train), train.seed)
    val_sampler = None
    if dist.enabled:  # each rank its part of every global batch, and its share of val
        sampler, val_sampler = sampler.shard(dist.rank, dist.world, train.batch_size), \
            Shard(len(splits.val), dist.rank, dist.world)
    batch = train.batch_size // dist.world
    images = ImageDataset(splits.train, train_transform(pre, data.augment, data.random_erasing),
                          draft_size(pre, data.augment), pre.size)
    val = ImageDataset(splits.val, eval_transform(pre), pre.resize, pre.size)
    batches = make_loader(SeededDataset(images), batch, workers, train.seed, pin, sampler)
    if data.mixup or data.cutmix:
        batches = MixedBatches(batches, len(splits.class_names), data.mixup, data.cutmix, train.seed)
    return Loaders(batches, make_loader(val, batch, workers, train.seed, pin, val_sampler))


def check_batch(batch_size: int, world: int, main: bool = True) -> None:
    """train.batch_size is the global batch: it must divide among the processes (said once, by rank 0)."""
    if batch_size % world:
        error = ConfigError(f"train.batch_size {batch_size} is the batch over all {world} processes and must divide "
                            f"evenly among them: use a multiple of {world}")
        error.finetune_shared = not main
        raise error


def synced_batchnorm(model: nn.Module, plan: FreezePlan) -> None:
    """train.sync_bn: the trained part's BatchNorm layers normalise over every rank's batch (SyncBatchNorm); the
    frozen prefix keeps plain BatchNorm, in eval mode and folded."""
    roots = list(plan.roots) if plan.freezes_a_prefix else [""]
    for root in roots:
        module = model.get_submodule(root)
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if root and synced is not module:
            model.set_submodule(root, synced)
