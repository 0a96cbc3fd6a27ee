"""What people look at: PNG plots (training curves, confusion matrix, confident mistakes) and the
terminal summaries of a run and of an evaluation.

matplotlib is imported inside the functions (it costs ~0.5 s) and used through its object API with
the Agg canvas: no pyplot global state, no display needed. PNGs are written atomically.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .checkpoint import atomic_write
from .metrics import epoch_rank


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


# ---------------------------------------------------------------- training curves


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
    fig = _figure(13, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", label="val")
        ax.set(title=title, xlabel="epoch", ylabel=title)
        ax.legend()  # redrawn for accuracy below, with the best epoch
        ax.grid(alpha=0.3)
    best = max(rows, key=epoch_rank)
    ax_acc.plot([best["epoch"]], [best["val_acc"]], "*", color="black", markersize=13,
                label=f"best val {best['val_acc']:.3f} (epoch {best['epoch']})")
    ax_acc.legend()
    for key in [k for k in rows[0] if k.startswith("lr_")]:
        ax_lr.plot(epochs, [r[key] for r in rows], "o-", label=key[3:])
    ax_lr.set(title="learning rate (start of epoch)", xlabel="epoch", ylabel="lr", yscale="log")
    ax_lr.legend()
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


# ---------------------------------------------------------------- evaluation plots


def plot_confusion(path: Path, cm, class_names: list[str], normalize: bool, title: str = "") -> Path:
    """Rows: true class, columns: predicted class. Colour is always the row share, so a small class's
    errors show as clearly as a big one's; cells print counts, or row shares when normalize."""
    import numpy as np

    cm = np.asarray(cm)
    k = len(class_names)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(30.0, max(4.5, 0.55 * k + 2.5))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_xticks(range(k), class_names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted label", ylabel="true label",
           title=title + (" (row-normalised)" if normalize else " (counts)"))
    if k <= 40:  # beyond that the numbers would overlap; colour still tells the story
        size = 10 if k <= 10 else max(5, 12 - k // 5)
        for i in range(k):
            for j in range(k):
                text = f"{share[i, j]:.2f}" if normalize else str(int(cm[i, j]))
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_mistakes(path: Path, mistakes: list[dict], image_size: int, columns: int = 4) -> Path:
    """A grid of images with their true and predicted labels, most confident mistake first.

    mistakes: [{"path", "true", "predicted", "prob"}]; images shown center-cropped to a square,
    as the model sees them (without the normalisation).
    """
    from .data import load_rgb

    rows = math.ceil(len(mistakes) / columns)
    fig = _figure(3.0 * columns, 3.3 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, m in zip(axes, mistakes):
        ax.imshow(_as_seen(load_rgb(Path(m["path"])), image_size))
        ax.set_title(f"true: {m['true']}\npredicted: {m['predicted']} ({m['prob']:.2f})", fontsize=9, color="firebrick")
        ax.set_xlabel(Path(m["path"]).name[:32], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(mistakes):]:
        ax.axis("off")
    fig.suptitle("most confident mistakes (predicted-class probability)")
    return _save(fig, path, dpi=90)


def _as_seen(image, size: int):
    from PIL import ImageOps

    return ImageOps.fit(image, (size, size))


# ---------------------------------------------------------------- terminal summaries


def print_run_summary(console, rows: list[dict], calibration: dict, run_dir: Path) -> None:
    """End of `finetune train`: best and last epoch, time, calibration, and where the files are."""
    from rich.table import Table

    best = max(rows, key=epoch_rank)
    last = rows[-1]
    table = Table(title=f"run summary: {run_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("best.pt", f"epoch {best['epoch']}: val acc {best['val_acc']:.4f}, val loss {best['val_loss']:.4f}")
    table.add_row("last.pt", f"epoch {last['epoch']}: val acc {last['val_acc']:.4f}, val loss {last['val_loss']:.4f}, "
                             f"train acc {last['train_acc']:.4f}")
    table.add_row("time", f"{sum(r['seconds'] for r in rows):.1f}s for {len(rows)} epoch(s)")
    c = calibration
    if c["fitted"]:
        table.add_row("calibration", f"temperature {c['temperature']:.3f} (best.pt, fitted on {c['images']} val images)")
    else:
        table.add_row("calibration", "temperature kept at 1: validation NLL has no finite optimum "
                                     "(every val image is classified right)")
    table.add_row("ECE on val", f"{c['ece_before']:.4f} raw -> {c['ece_after']:.4f} calibrated "
                                f"(NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}; same images T was fitted on)")
    table.add_row("files", "best.pt, last.pt, metrics.csv, curves.png, recipe.yaml")
    console.print(table)


def print_evaluation(console, report: dict) -> None:
    """The rich table form of `finetune evaluate`."""
    from rich.table import Table

    r = report
    head = Table(title=f"evaluate {r['checkpoint']} on {r['data']}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("images", f"{r['images']} scored")
    head.add_row("top-1 accuracy", f"{r['top1']:.4f}")
    if r["top5"] is not None:
        head.add_row("top-5 accuracy", f"{r['top5']:.4f}")
    c = r["calibration"]
    probs = "raw softmax" if r["raw"] else f"calibrated, T = {c['temperature']:.3f}"
    head.add_row("ECE", f"{r['ece']:.4f} ({probs}; raw {c['ece_raw']:.4f}, calibrated {c['ece_calibrated']:.4f})")
    head.add_row("NLL", f"raw {c['nll_raw']:.4f}, calibrated {c['nll_calibrated']:.4f}")
    head.add_row("TTA", "horizontal flip (mean of logits)" if r["tta"] else "off")
    if r["unknown_classes"]:
        unknown = ", ".join(f"{k} ({n} images)" for k, n in r["unknown_classes"].items())
        head.add_row("[yellow]not scored[/]", f"classes the checkpoint does not know: {unknown}")
    if r["unreadable"]:
        head.add_row("[yellow]unreadable[/]", f"{len(r['unreadable'])} file(s), listed in the JSON output")
    console.print(head)

    per = Table("class", "precision", "recall", "F1", "support", title="per class", title_justify="left")
    for row in r["per_class"]:
        per.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    per.add_section()
    for name in ("macro", "weighted"):
        a = r[name]
        per.add_row(f"[bold]{name} avg[/]", f"{a['precision']:.4f}", f"{a['recall']:.4f}", f"{a['f1']:.4f}", str(a["support"]))
    console.print(per)

    names = r["classes"]
    if len(names) <= 12:
        cm = Table("true \\ predicted", *names, title="confusion matrix", title_justify="left")
        for name, counts in zip(names, r["confusion_matrix"]):
            cm.add_row(name, *(f"[bold]{n}[/]" if j == names.index(name) else str(n) for j, n in enumerate(counts)))
        console.print(cm)
    files = Table(show_header=False, title=f"written to {r['output']}", title_justify="left")
    for key, value in r["files"].items():
        files.add_row(key, Path(value).name if value else "[dim]none (no mistakes)[/]")
    console.print(files)
