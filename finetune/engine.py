"""fit(): the one orchestrator of a training run. The loop reads top to bottom and fits on a screen."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import signal
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .balance import resolve_balance
from .calibration import calibrate_checkpoints
from .checkpoint import atomic_write, check_disk_space, save_checkpoint
from .config import OptimSpec, Recipe, RunSpec, dump_recipe
from .data import ImageDataset, Splits, resolve_splits, resolve_workers
from .errors import ConfigError
from .features import frozen_batches
from .filecheck import unusable_files
from .memory import keep_freed_memory, long_lived
from .models.registry import create_model
from .preprocessing import draft_size, eval_transform, train_transform
from .report import CurvesPlot, print_run_summary
from .resume import RunState, Tally, environment, warn_if_environment_changed
from .sampling import EpochSampler, SeededDataset
from .schedule import lr_factor
from .strategy import apply_freeze, param_groups, plan_freeze, set_train_mode


def fit(recipe: Recipe, console=None, resume_dir: Path | None = None) -> Path:
    """Train as the recipe says; returns the run folder (best.pt, last.pt, metrics.csv, recipe.yaml).
    With resume_dir, continue that run from its last.pt (see resume.py) instead of starting a new one."""
    from rich.console import Console

    console = console or Console(stderr=True)
    keep_freed_memory()  # each batch reuses the last one's memory: CPU forward passes ran ~1.8x faster (memory.py)
    cfg = recipe.train
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = resolve_splits(recipe.data.root, recipe.data.val_fraction, cfg.seed,
                            screen=lambda paths: unusable_files(paths, console))  # unreadable files left out
    with long_lived():  # the model (and timm's import) live until exit: the garbage collector skips them
        model, info = create_model(recipe.model, len(splits.class_names), recipe.data.image_size)
    plan = plan_freeze(model, info, recipe.strategy.name)
    apply_freeze(model, plan)
    model.to(device, memory_format=torch.channels_last)
    balance = resolve_balance([y for _, y in splits.train], len(splits.class_names), recipe.data.class_weights,
                              recipe.data.sampler, cfg.seed)

    pre = info.preprocessing
    # order and augmentation from (seed, epoch), balanced or not: resumable mid-epoch (sampling.py)
    sampler = balance.sampler or EpochSampler(len(splits.train), cfg.seed)
    train_loader = make_loader(SeededDataset(ImageDataset(splits.train, train_transform(pre, recipe.data.augment),
                                                        draft_size(pre, recipe.data.augment))),
                               cfg.batch_size, recipe, device, sampler=sampler)
    val_loader = make_loader(ImageDataset(splits.val, eval_transform(pre), pre.resize), cfg.batch_size, recipe, device)
    optimizer = build_optimizer(recipe.optim, param_groups(model, plan, recipe.strategy.lr, recipe.optim.weight_decay))
    steps = math.ceil(len(splits.train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg.epochs, recipe.schedule))
    criterion = nn.CrossEntropyLoss(weight=balance.loss_weights, label_smoothing=cfg.label_smoothing).to(device)
    amp = amp_context(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=getattr(amp, "fast_dtype", None) == torch.float16)
    env = environment(cfg.seed, device)
    meta = {"model": recipe.model.model_dump(mode="json", exclude={"weights"}), "class_names": splits.class_names,
            "preprocessing": pre.to_dict(), "head_name": info.head_name, "strategy": recipe.strategy.name,
            "recipe": recipe.model_dump(mode="json"), "environment": env, "metrics": {}}
    check_disk_space(resume_dir or recipe.run.output or recipe.run.dir, model, optimizer)
    run_dir = resume_dir or create_run_dir(recipe.run)
    run = RunState(run_dir, model, optimizer, scheduler, scaler, meta, cfg.save_every)
    if resume_dir:
        run.restore()
        warn_if_environment_changed(run_dir, env, console)
    else:
        write_run_files(run_dir, recipe, env)
    write_data_summary(run_dir / "data.json", splits, balance, console)
    # feature-extract, last-stage: the frozen prefix runs once per image where it can (cached), after the
    # checks above so a run that cannot be saved fails before that work; each step trains the rest alone
    net, train_batches, val_batches = frozen_batches(recipe, model, info, train_loader, val_loader, device, amp, console)
    console.print(f"[bold]{len(splits.train)}[/] train / [bold]{len(splits.val)}[/] val images, "
                  f"{len(splits.class_names)} classes, {recipe.model.source}:{recipe.model.name}, "
                  f"strategy {recipe.strategy.name}, device {device}" + run.resumed_at(), soft_wrap=True)

    curves = CurvesPlot(run_dir / "curves.png")
    # Ctrl-C/SIGTERM: save last.pt and stop; OOM: say what to lower
    with run.guard(console, cfg.batch_size, pre.size), workers_stopped_after(train_loader, val_loader):
        for epoch in range(run.epoch, cfg.epochs + 1):
            lrs, done = run.begin_epoch(epoch)
            sampler.set_epoch(epoch, skip=done * cfg.batch_size)
            # train, then evaluate
            train_loss, train_acc = run_epoch(net, train_batches, criterion, device, amp, optimizer, scheduler, scaler,
                                              console, f"epoch {epoch}/{cfg.epochs} train", run)
            val_loss, val_acc = run_epoch(net, val_batches, criterion, device, amp, console=console,
                                          label=f"epoch {epoch}/{cfg.epochs} val")
            # log
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, **lrs, "seconds": run.epoch_seconds()}
            best = run.end_epoch(row, val_acc)
            write_metrics(run_dir / "metrics.csv", run.rows)
            curves.update(run.rows, final=epoch == cfg.epochs)
            console.print(f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                          f"val loss {val_loss:.4f} acc {val_acc:.3f} | {row['seconds']:.1f}s")
            # checkpoint: best.pt before last.pt, so a crash between them redoes this epoch and rewrites both
            meta["metrics"] = row
            if best:
                save_checkpoint(run_dir / "best.pt", model.state_dict(), meta)
            run.save()
            run.after_epoch()
        # calibrate (a temperature per checkpoint, fitted on val) and summarise
        calibration = calibrate_checkpoints(run_dir, model, val_batches, device, console, net=net)
        print_run_summary(console, run.rows, calibration, run_dir)
    return run_dir


def run_epoch(model, loader, criterion, device, amp, optimizer=None, scheduler=None, scaler=None, console=None,
              label="", run: RunState | None = None):
    """One pass over loader: trains when an optimizer is given, else evaluates. Returns (mean loss, accuracy).
    With a run, the totals continue the run's epoch in progress and each step is reported to it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    training = optimizer is not None
    set_train_mode(model) if training else model.eval()
    tally = run.tally if run is not None else Tally()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True,
                  disable=console is None or not console.is_terminal) as bar, torch.set_grad_enabled(training):
        task = bar.add_task(label, total=len(loader))
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=_memory_format(images))
            labels = labels.to(device, non_blocking=True)
            with amp:
                logits = model(images)
                loss = criterion(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            tally.add(loss.item(), (logits.argmax(1) == labels).sum().item(), len(labels))
            bar.advance(task)
            if run is not None:
                run.after_step()  # last.pt every train.save_every steps; stops here after Ctrl-C/SIGTERM
    return tally.means()


# ---------------------------------------------------------------- helpers


def _memory_format(batch: torch.Tensor):
    # channels_last: ResNet-50 convs run faster on CPU (README, Speed); cached features are 2-D
    return torch.channels_last if batch.dim() == 4 else torch.preserve_format


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device {name!r}: no such CUDA device here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def amp_context(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; workers ignore it so the main process can finish its step
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset, batch_size: int, recipe: Recipe, device: torch.device, sampler=None):
    """In dataset order, or in the sampler's (training: resume.EpochSampler)."""
    workers = resolve_workers(recipe.data.workers)
    generator = torch.Generator().manual_seed(recipe.train.seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, generator=generator,
        worker_init_fn=_seed_worker, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None)


@contextmanager
def workers_stopped_after(*loaders):
    """Stop the loaders' persistent worker processes when the block ends. Left to exit, torch 2.11 with pin_memory
    (CUDA) never told them to stop and waited 5 s for each before killing it: a 3-epoch run on an H200 spent 20 of
    its 38 s exiting (4 workers)."""
    try:
        yield
    finally:
        for loader in loaders:
            if loader._iterator is not None:  # where DataLoader keeps its persistent workers (private)
                loader._iterator._shutdown_workers()
                loader._iterator = None


def build_optimizer(spec: OptimSpec, groups: list[dict]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=spec.momentum, nesterov=spec.nesterov)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=groups[0]["lr"])


def create_run_dir(run: RunSpec) -> Path:
    """A new folder: run.output exactly (must be new or empty), else runs/NAME, runs/NAME-2, ...
    With run.exist_ok, run.output or runs/NAME is reused as it is."""
    try:
        if run.output is not None:
            out = Path(run.output)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not run.exist_ok:
                raise ConfigError(f"output folder {out} already exists and is not empty; choose another --output "
                                  "or pass --exist-ok to reuse it")
            out.mkdir(parents=True, exist_ok=True)
            return _writable(out)
        base = run.name or "run"
        Path(run.dir).mkdir(parents=True, exist_ok=True)
        for i in range(1, 10_000):
            out = Path(run.dir) / (base if i == 1 else f"{base}-{i}")
            try:
                out.mkdir(exist_ok=run.exist_ok)
                return _writable(out)
            except FileExistsError:
                continue
    except OSError as exc:
        where = run.output if run.output is not None else run.dir
        raise ConfigError(f"cannot create the run folder under {where}: {exc.strerror or exc}. Choose a folder "
                          "you can write to with --output or run.dir") from None
    raise ConfigError(f"too many runs named {base} in {run.dir}")


def write_data_summary(path: Path, splits: Splits, balance, console) -> None:
    """data.json: images per class, the files left out and why, and the class balancing used."""
    if splits.skipped:
        console.print(f"[yellow]left out {len(splits.skipped)} unreadable file(s)[/] (listed in {path})", highlight=False)
    summary = {"train": splits.counts("train"), "val": splits.counts("val"), **balance.to_dict(splits.class_names),
               "skipped": [{"path": str(p), "reason": reason} for p, reason in splits.skipped]}
    atomic_write(path, lambda f: f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode()))


def _writable(folder: Path) -> Path:
    with tempfile.TemporaryFile(dir=folder):  # fail now, not when the first checkpoint is due
        pass
    return folder


def write_run_files(run_dir: Path, recipe: Recipe, env: dict) -> None:
    """recipe.yaml (the fully resolved recipe, what --resume reads) and environment.json (seed, versions)."""
    atomic_write(run_dir / "recipe.yaml", lambda f: f.write(dump_recipe(recipe).encode()))
    atomic_write(run_dir / "environment.json", lambda f: f.write(json.dumps(env, indent=2).encode()))


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
