"""What an evaluation shows: the confusion matrix and the most confident mistakes as PNGs, and the tables
printed by `finetune evaluate`."""

from __future__ import annotations

import math
from pathlib import Path

from ..console import literal
from ..plotting import figure, save_png


def plot_confusion(path: Path, cm, class_names: list[str], normalize: bool, title: str = "") -> Path:
    """Rows: true class, columns: predicted class. Colour is always the row share, so a small class's
    errors show as clearly as a big one's; cells print counts, or row shares when normalize."""
    import numpy as np

    cm = np.asarray(cm)
    k = len(class_names)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(30.0, max(4.5, 0.55 * k + 2.5))
    fig = figure(side + 1.2, side)
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
    return save_png(fig, path)


def plot_mistakes(path: Path, mistakes: list[dict], image_size: int, columns: int = 4) -> Path:
    """A grid of images with their true and predicted labels, most confident mistake first.

    mistakes: [{"path", "true", "predicted", "prob"}]; images shown center-cropped to a square,
    as the model sees them (without the normalisation).
    """
    from ..data.images import load_rgb

    rows = math.ceil(len(mistakes) / columns)
    fig = figure(3.0 * columns, 3.3 * rows)
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
    return save_png(fig, path, dpi=90)


def _as_seen(image, size: int):
    from PIL import ImageOps

    return ImageOps.fit(image, (size, size))


def print_evaluation(console, report: dict) -> None:
    """The rich table form of `finetune evaluate`."""
    from rich.table import Table

    r = report
    head = Table(title=f"evaluate {literal(r['checkpoint'])} on {literal(r['data'])}", show_header=False,
                 title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("images", f"{r['images']} scored")
    lo, hi = r["top1_interval"]
    head.add_row("top-1 accuracy", f"{r['top1']:.4f} (95% interval {lo:.3f}-{hi:.3f}, Wilson, {r['images']} images)")
    if r["top5"] is not None:
        head.add_row("top-5 accuracy", f"{r['top5']:.4f}")
    c = r["calibration"]
    probs = "raw softmax" if r["raw"] else f"calibrated, T = {c['temperature']:.3f}"
    head.add_row("ECE", f"{r['ece']:.4f} ({probs}; raw {c['ece_raw']:.4f}, calibrated {c['ece_calibrated']:.4f})")
    head.add_row("NLL", f"raw {c['nll_raw']:.4f}, calibrated {c['nll_calibrated']:.4f}")
    head.add_row("TTA", "horizontal flip (mean of logits)" if r["tta"] else "off")
    if r["unknown_classes"]:
        unknown = literal(", ".join(f"{k} ({n} images)" for k, n in r["unknown_classes"].items()))
        head.add_row("[yellow]not scored[/]", f"classes the checkpoint does not know: {unknown}")
    if r["unreadable"]:
        head.add_row("[yellow]unreadable[/]", f"{len(r['unreadable'])} file(s), listed in the JSON output")
    console.print(head)

    per = Table("class", "precision", "recall", "recall 95%", "F1", "support", title="per class",
                title_justify="left")
    def scores(s: dict) -> list[str]:
        interval = f"{s['recall_interval'][0]:.3f}-{s['recall_interval'][1]:.3f}" if "recall_interval" in s else ""
        return [f"{s['precision']:.4f}", f"{s['recall']:.4f}", interval, f"{s['f1']:.4f}", str(s["support"])]

    for row in r["per_class"]:
        per.add_row(literal(row["class"]), *scores(row))
    per.add_section()
    for name in ("macro", "weighted"):
        per.add_row(f"[bold]{name} avg[/]", *scores(r[name]))
    console.print(per)

    names = r["classes"]
    if len(names) <= 12:
        cm = Table("true \\ predicted", *map(literal, names), title="confusion matrix", title_justify="left")
        for name, counts in zip(names, r["confusion_matrix"]):
            i = names.index(name)
            cm.add_row(literal(name), *(f"[bold]{n}[/]" if j == i else str(n) for j, n in enumerate(counts)))
        console.print(cm)
    files = Table(show_header=False, title=f"written to {literal(r['output'])}", title_justify="left")
    for key, value in r["files"].items():
        files.add_row(key, literal(Path(value).name) if value else "[dim]none (no mistakes)[/]")
    console.print(files)
