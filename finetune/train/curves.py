"""What a run shows as it goes: curves.png (loss, accuracy and each group's learning rate per epoch) and the
summary printed at the end of `finetune train`."""

from __future__ import annotations

import time
from pathlib import Path

from ..console import literal
from ..metrics import epoch_rank
from ..plotting import figure, save_png
from .swa import average_is_best


class CurvesPlot:
    """curves.png, redrawn as the run goes but at most ~5% of the run's time: a plot costs ~0.5 s on a
    laptop (10 s seen on a GPU box without a font cache), which would dominate second-long GPU epochs.
    Until one has been timed a plot is assumed to cost `estimate`, so a run shorter than estimate/budget
    (10 s) draws once, at the end."""

    def __init__(self, path: Path, budget: float = 0.05, estimate: float = 0.5):
        self.path, self.budget = Path(path), budget
        self.last, self.cost = time.perf_counter(), estimate

    def update(self, rows: list[dict], final: bool = False) -> None:
        now = time.perf_counter()
        if final or now - self.last >= self.cost / self.budget:
            plot_curves(self.path, rows)
            self.last, self.cost = time.perf_counter(), time.perf_counter() - now


def plot_curves(path: Path, rows: list[dict]) -> Path:
    """Loss, accuracy (train and val) and the learning rate of each group, per epoch."""
    fig = figure(13, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", label="val")
        ax.set(title=title, xlabel="epoch", ylabel=title)
        ax.legend()  # redrawn for accuracy below, with the best epoch
        ax.grid(alpha=0.3)
    best = max(rows, key=epoch_rank)
    score = "val_map" if "val_map" in best else "val_acc"  # task multilabel: mAP chooses best.pt
    if score == "val_map":
        ax_acc.plot(epochs, [r["val_map"] for r in rows], "o-", label="val mAP")
        ax_acc.set(title="exact-match accuracy and val mAP")
    ax_acc.plot([best["epoch"]], [best[score]], "*", color="black", markersize=13,
                label=f"best val {'mAP ' if score == 'val_map' else ''}{best[score]:.3f} (epoch {best['epoch']})")
    ax_acc.legend()
    for key in [k for k in rows[0] if k.startswith("lr_")]:
        ax_lr.plot(epochs, [r[key] for r in rows], "o-", label=key[3:])
    ax_lr.set(title="learning rate (start of epoch)", xlabel="epoch", ylabel="lr", yscale="log")
    ax_lr.legend()
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save_png(fig, path)


def plot_reliability(path: Path, logits, labels, temperature: float, bins: int = 10) -> Path:
    """The reliability diagram of best.pt on val: accuracy against confidence per bin, before and after the
    temperature (a calibrated model follows the diagonal)."""
    import numpy as np

    from ..metrics import softmax

    fig = figure(5.2, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for t, label, style in ((1.0, "raw softmax", "o-"), (temperature, f"calibrated (T = {temperature:.2f})", "s-")):
        probs = softmax(logits, t)
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        ax.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used], style,
                label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top-1 probability)", ylabel="accuracy",
           title=f"reliability on val ({len(labels)} images)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def print_run_summary(console, rows: list[dict], calibration: dict, run_dir: Path, stopped: str = "",
                      multilabel: dict | None = None, swa: dict | None = None, extra: tuple | list = ()) -> None:
    """End of `finetune train`: best and last epoch, time, calibration, and where the files are. `stopped`:
    why training stopped before its last epoch (early stopping), if it did. `multilabel`: best.pt's val mAP and
    F1s at its thresholds (train.thresholds.scores_at). `swa`: train.swa's average's row. `extra`: more (name, text)
    rows (distill: the teacher against the student)."""
    from rich.table import Table

    best = max(rows, key=epoch_rank)
    last = rows[-1]
    table = Table(title=f"run summary: {literal(run_dir)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if swa is not None:
        first, end = swa["swa_epochs"]
        average = f"the average of epochs {first}-{end}: val acc {swa['val_acc']:.4f}, val loss {swa['val_loss']:.4f}"
        table.add_row("swa", f"{average} (epoch {last['epoch']} alone: val acc {last['val_acc']:.4f})")
    if swa is not None and average_is_best(swa, rows):
        table.add_row("best.pt", average)
    elif "val_map" in best:  # task multilabel: val mAP chooses best.pt; acc is the exact-match share at 0.5
        table.add_row("best.pt", f"epoch {best['epoch']}: val mAP {best['val_map']:.4f} (what chooses best.pt), "
                                 f"exact-match acc {best['val_acc']:.4f}, val loss {best['val_loss']:.4f}")
    else:
        table.add_row("best.pt", f"epoch {best['epoch']}: val acc {best['val_acc']:.4f}, "
                                 f"val loss {best['val_loss']:.4f}")
    if swa is not None:
        table.add_row("last.pt", average)
    else:
        table.add_row("last.pt", f"epoch {last['epoch']}: val acc {last['val_acc']:.4f}, val loss "
                                 f"{last['val_loss']:.4f}, train acc {last['train_acc']:.4f}")
    if "head_l2" in last:  # strategy.head_solver lbfgs: one solve, no epochs
        table.add_row("head", f"L-BFGS, l2 {last['head_l2']:.3g} chosen on the sweep (head_sweep.csv, head_sweep.png)")
        table.add_row("time", f"{last['seconds']:.1f}s to read the features and solve the head")
    else:
        table.add_row("time", f"{sum(r['seconds'] for r in rows):.1f}s for {len(rows)} epoch(s)")
    if stopped:
        table.add_row("stopped early", f"after epoch {last['epoch']}: {stopped}")
    c = calibration
    if c.thresholds is not None:
        table.add_row("thresholds", f"per label, F1-optimal on {c.images} val images (no temperature): " +
                      ", ".join(f"{t:.3f}" for t in c.thresholds))
        if multilabel:
            table.add_row("val at them", f"mAP {multilabel['map']:.4f}, micro-F1 {multilabel['micro_f1']:.4f}, "
                                         f"macro-F1 {multilabel['macro_f1']:.4f} (the images they were chosen on)")
    elif c.fitted:
        table.add_row("calibration", f"temperature {c.temperature:.3f} (best.pt, fitted on {c.images} val images)")
    else:
        table.add_row("calibration", f"temperature kept at 1: {c.kept_because or 'no temperature lowers the NLL'}")
    if c.ece_before is not None:
        table.add_row("ECE on val", f"{c.ece_before:.4f} raw -> {c.ece_after:.4f} calibrated "
                                    f"(NLL {c.nll_before:.4f} -> {c.nll_after:.4f}; same images T was fitted on)")
    plots = "head_sweep.csv, head_sweep.png" if "head_l2" in last else "curves.png"
    if r := c.reject_knn:  # what --reject auto uses with best.pt (deploy.reject)
        table.add_row("predict --reject auto", f"unknown below a cosine similarity of {r.threshold:.3f} to the "
                      f"nearest training image: rejects {r.rejected_correct:.1%} of the {r.correct_images} "
                      f"correctly classified val images (target {r.false_rejection:.0%}); an .onnx: below a "
                      f"calibrated confidence of {c.reject.threshold:.3f}")
    elif r := c.reject:
        table.add_row("predict --reject auto", f"unknown below a calibrated confidence of {r.threshold:.3f}: "
                      f"rejects {r.rejected_correct:.1%} of the {r.correct_images} correctly classified val "
                      f"images (target {r.false_rejection:.0%})")
    for name, text in extra:
        table.add_row(name, text)
    table.add_row("files", f"best.pt, last.pt, metrics.csv, {plots}, recipe.yaml")
    console.print(table)
