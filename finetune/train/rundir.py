"""The run folder: made new (never over another run), checked for room before the first epoch, and the plain
files in it: recipe.yaml, environment.json, data.json and metrics.csv, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..config import Recipe, RunSpec, dump_recipe
from ..console import literal
from ..data.folders import Splits
from ..errors import ConfigError, ResourceError
from ..files import atomic_write, pid_alive, process_start, remove_stale_temporaries, write_text


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


def _writable(folder: Path) -> Path:
    with tempfile.TemporaryFile(dir=folder):  # fail now, not when the first checkpoint is due
        pass
    return folder


def check_disk_space(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fail before the first epoch when best.pt + last.pt (with optimizer state) + one temporary copy
    during an atomic replace would not fit. Optimizer state is estimated per trainable parameter."""
    folder = next(p for p in [Path(folder).absolute(), *Path(folder).absolute().parents] if p.exists())
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    slots = {"Adam": 2, "AdamW": 2}.get(type(optimizer).__name__, 1)  # exp_avg + exp_avg_sq; SGD momentum
    last = model_bytes + slots * trainable
    needed = int(1.1 * (model_bytes + 2 * last))
    existing = sum(f.stat().st_size for f in (Path(folder) / "best.pt", Path(folder) / "last.pt") if f.is_file())
    free = shutil.disk_usage(folder).free + existing
    if free < needed:
        raise ResourceError(f"not enough free disk space in {folder} for this run's checkpoints: they need about "
                            f"{needed / 1e6:.1f} MB (best.pt, last.pt with optimizer state, and a temporary copy "
                            f"while saving), {free / 1e6:.1f} MB is free. Free some space or choose another "
                            "--output / run.dir")


def environment(seed: int, device: torch.device) -> dict:
    """What a run ran with: recorded in environment.json and in each checkpoint."""
    import timm
    import torchvision

    from .. import __version__

    return {"seed": seed, "finetune": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads()}


def warn_if_environment_changed(run_dir: Path, now: dict, console) -> None:
    path = run_dir / "environment.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    keys = ("python", "torch", "torchvision", "timm", "numpy", "finetune", "device", "threads")
    changed = [f"{k} {before.get(k)} -> {now.get(k)}" for k in keys if before.get(k) != now.get(k)]
    if changed:
        console.print(f"[yellow]resuming with a different environment ({literal(', '.join(changed))}): the result "
                      "may differ slightly from an uninterrupted run[/]")


def write_run_files(run_dir: Path, recipe: Recipe, env: dict) -> None:
    """recipe.yaml (the fully resolved recipe, what --resume reads) and environment.json (seed, versions)."""
    write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    write_text(run_dir / "environment.json", json.dumps(env, indent=2))


def write_data_summary(path: Path, splits: Splits, balance, console) -> None:
    """data.json: images per class, the files left out and why, and the class balancing used."""
    if splits.skipped:
        kinds = Counter(reason.split(":")[0] for _, reason in splits.skipped)
        console.print(f"[yellow]left out {len(splits.skipped)} file(s)[/]: "
                      f"{', '.join(f'{n} {kind}' for kind, n in kinds.most_common())} (listed in {literal(path)})",
                      highlight=False)
    summary = {"train": splits.counts("train"), "val": splits.counts("val"), **balance.to_dict(splits.class_names),
               "skipped": [{"path": str(p), "reason": reason} for p, reason in splits.skipped]}
    write_text(path, json.dumps(summary, indent=2, ensure_ascii=False))


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "curves.png", "recipe.yaml", "environment.json", "data.json",
             "crash.log", "mlflow_run_id.txt", "reliability.png", "report.html", "head_sweep.csv", "head_sweep.png")


@contextmanager
def run_lock(run_dir: Path, console):
    """One run per folder at a time: RUN_DIR/.lock holds the pid of the run using it. A lock left by a process
    that is gone (killed, crashed) is taken over with a warning; temporary files its writes left are removed."""
    path = Path(run_dir) / ".lock"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid, started = _lock_owner(path)
            if pid is not None and _alive(pid, started):
                raise ConfigError(f"{run_dir} is in use by another finetune run (pid {pid}); wait for it to end or "
                                  "choose another --output") from None
            console.print(f"[yellow]taking over {literal(path)}, left by a run that is no longer running "
                          f"(pid {pid})[/]", highlight=False)
            path.unlink(missing_ok=True)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {process_start(os.getpid()) or ''}".strip() + "\n")
    remove_stale_temporaries(run_dir)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> tuple[int | None, str | None]:
    """(pid, its start time) from a lock; the start time is missing in a lock written by an older finetune."""
    try:
        pid, *started = path.read_text().split()
        return int(pid), (started[0] if started else None)
    except (OSError, ValueError):
        return None, None


def _alive(pid: int, started: str | None) -> bool:
    # our own pid: a stale lock of a previous fit() in this process that was interrupted mid-way. A live pid whose
    # start time differs is another process that got the number later (after a reboot, say): the lock is stale
    if pid == os.getpid() or not pid_alive(pid):
        return False
    return started is None or process_start(pid) in (None, started)


def clear_previous_run(run_dir: Path) -> None:
    """A new run in a reused folder (--exist-ok): the previous run's files go first, so the folder never holds
    one run's best.pt beside another's last.pt or recipe.yaml."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / "tensorboard", ignore_errors=True)
