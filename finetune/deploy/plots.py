"""What an evaluation shows as pictures: the confusion matrix and the most confident mistakes as PNGs (the tables
`finetune evaluate` prints are deploy.render's)."""

from __future__ import annotations

import math
from pathlib import Path

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
    from ..data.images import load_rgb, sample_at

    rows = math.ceil(len(mistakes) / columns)
    fig = figure(3.0 * columns, 3.3 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, m in zip(axes, mistakes):
        ax.imshow(_as_seen(load_rgb(sample_at(m["path"])), image_size))
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
