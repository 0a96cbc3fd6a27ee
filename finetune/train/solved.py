"""strategy.head_solver lbfgs: fit() solves the head on the frozen features instead of running epochs.

The features (cached, or computed once by the frozen prefix) are gathered in memory, head_solver sweeps the L2
strength on val, and the chosen head is written into the model's own Linear head, so best.pt and last.pt are the
same kind of checkpoint as after SGD epochs: calibration, predict, evaluate and export do not know the difference.
metrics.csv holds one row, "epoch" 1: the solved head's loss and accuracy on train and val (the same loss as an
SGD epoch reports: the run's criterion, with class weights and label smoothing), the chosen head_l2, and the
seconds of the whole solve. The sweep itself goes to head_sweep.csv and head_sweep.png.
"""

from __future__ import annotations

import csv
import io
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..console import progress
from ..errors import ConfigError, TrainingDiverged
from ..files import atomic_write
from ..metrics import mean_average_precision, sigmoid
from ..plotting import figure, save_png
from ..runtime.threads import one_thread
from .calibration import collect_logits
from .head_solver import COARSE_GRID, FINE_STEPS, HeadSweep, sweep_l2
from .multilabel import MultiLabelLoss
from .state import RunState
from .step import TrainStep

SWEEP_FILES = ("head_sweep.csv", "head_sweep.png")


def solve_head(run: RunState, step: TrainStep, head: nn.Module, train_batches, val_batches, num_classes: int,
               seed: int, console, targets: np.ndarray | None = None) -> dict:
    """Fit the head by the L2 sweep, write it into `head` (the model's head module: every batch's inputs are its
    inputs) and record it as the run's one epoch; returns the metrics row. `targets`: task multilabel's multi-hot
    rows, which the batches' ints index: one-vs-rest logistic regression (head_solver), and the row has val_map.
    The caller writes metrics.csv, then saves best.pt and last.pt with `run.save_epoch(True)`, where a signal
    during the solve stops the run."""
    if not isinstance(head, nn.Linear):
        raise ConfigError("strategy.head_solver lbfgs needs the frozen features at the head's input, but the whole "
                          "model runs every step here (see the features: line above); set strategy.head_solver sgd")
    compute = step.compute
    run.begin_epoch(1)
    identity = nn.Identity()
    train_x, train_y = collect_logits(identity, train_batches, compute, "head: reading train features", console)
    val_x, val_y = collect_logits(identity, val_batches, compute, "head: reading val features", console)
    if train_x.ndim != 2:
        raise ConfigError(f"strategy.head_solver lbfgs fits a head on pooled features; the head's input here has "
                          f"shape {tuple(train_x.shape[1:])}; set strategy.head_solver sgd")
    if not (np.isfinite(train_x).all() and np.isfinite(val_x).all()):
        raise TrainingDiverged("the frozen features hold NaN or inf, so no head can be fitted on them (damaged "
                               "weights, or activations beyond float16 with train.amp): nothing was saved")
    criterion = step.criterion
    weights = criterion.weight.cpu() if criterion.weight is not None else None
    fits = len(COARSE_GRID) + len(FINE_STEPS)
    # tiny matmuls: one thread (runtime.threads; 10 s against 40 s for this sweep on hymenoptera, busy 2 cores)
    with progress(console) as bar, _diverged(), one_thread():
        task = bar.add_task("head: L-BFGS over the L2 grid", total=fits)
        sweep = sweep_l2(torch.from_numpy(train_x), _labels(train_y, targets), torch.from_numpy(val_x),
                         _labels(val_y, targets), num_classes, weights, criterion.label_smoothing,
                         seed=seed, progress=lambda done: bar.update(task, completed=done))
    with torch.no_grad():
        head.weight.copy_(sweep.head.weight)
        head.bias.copy_(sweep.head.bias)
    train_loss, train_acc = _scores(head, criterion, train_x, train_y, compute.device)
    val_loss, val_acc = _scores(head, criterion, val_x, val_y, compute.device)
    row = {"epoch": 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
           **({} if targets is None else {"val_map": mean_average_precision(  # val_x: every rank's already
               sigmoid(sweep.head.logits(torch.from_numpy(val_x)).numpy()), targets[val_y])[0]}),
           "head_l2": sweep.chosen, "seconds": run.epoch_seconds()}
    run.end_epoch(row)  # a non-finite loss stops here (TrainingDiverged), before anything is saved
    if run.dist.main:
        write_sweep(run.run_dir, sweep)
    console.print(f"head: L-BFGS, l2 {sweep.chosen:.3g} chosen by {sweep.selected_by} loss from "
                  f"{len(sweep.points)} strengths (1e-6..1e5) in {sweep.seconds:.1f}s | train loss {train_loss:.4f} "
                  f"acc {train_acc:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}" +
                  (f" mAP {row['val_map']:.3f}" if "val_map" in row else ""), soft_wrap=True)
    return row


@contextmanager
def _diverged():
    try:
        yield
    except FloatingPointError as exc:
        raise TrainingDiverged(f"{exc}: nothing was saved; set strategy.head_solver sgd to train it by epochs") \
            from None


def _labels(y: np.ndarray, targets: np.ndarray | None) -> torch.Tensor:
    """The class of each image, or (multilabel) its row of multi-hot targets, which its int indexes."""
    return torch.from_numpy(y).long() if targets is None else torch.from_numpy(targets[y])


def _scores(head: nn.Module, criterion: nn.Module, x, y, device) -> tuple[float, float]:
    if len(y) == 0:
        return math.nan, math.nan
    with torch.no_grad():
        logits = head(torch.from_numpy(x).to(device)).float()
        labels = torch.from_numpy(y).long().to(device)
        if isinstance(criterion, MultiLabelLoss):
            return float(criterion(logits, labels)), criterion.correct(logits, labels) / len(labels)
        return float(criterion(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def write_sweep(run_dir: Path, sweep: HeadSweep) -> None:
    """head_sweep.csv (one row per strength) and head_sweep.png (held-out loss and accuracy against l2)."""
    rows = sweep.rows()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "head_sweep.csv", lambda f: f.write(buf.getvalue().encode()))
    fig = figure(9, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    l2 = [p.l2 for p in sweep.points]
    ax_loss.plot(l2, [p.train_loss for p in sweep.points], "o-", label="train")
    ax_loss.plot(l2, [p.val_loss for p in sweep.points], "o-", label=sweep.selected_by)
    ax_acc.plot(l2, [p.val_acc for p in sweep.points], "o-", color="tab:orange", label=sweep.selected_by)
    for ax, title in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.axvline(sweep.chosen, color="black", linestyle="--", label=f"chosen l2 {sweep.chosen:.3g}")
        ax.set(xscale="log", xlabel="l2 strength", title=title)
        ax.legend()
        ax.grid(alpha=0.3)
    save_png(fig, run_dir / "head_sweep.png")
