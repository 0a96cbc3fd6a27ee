"""What `finetune ablate` writes: ablation.csv, gradflow.csv, errors.png (the seed's two panels: training and
validation error per epoch) and gradflow.png (per-layer gradient norms, plain vs residual)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import write_text
from ..plotting import figure, save_png

ABLATION_COLUMNS = ["net", "kind", "depth", "epoch", "train_error", "val_error", "train_loss", "val_loss", "lr",
                    "seconds"]
GRADFLOW_COLUMNS = ["net", "kind", "depth", "moment", "layer_index", "layer", "grad_norm"]


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_csvs(out: Path, rows: list[dict], grad_rows: list[dict]) -> list[Path]:
    paths = [out / "ablation.csv", out / "gradflow.csv"]
    write_text(paths[0], _csv(rows, ABLATION_COLUMNS))
    write_text(paths[1], _csv(grad_rows, GRADFLOW_COLUMNS))
    return paths


def _by_net(rows: list[dict]) -> dict[str, list[dict]]:
    nets: dict[str, list[dict]] = {}
    for row in rows:
        nets.setdefault(row["net"], []).append(row)
    return nets


def _colours(depths) -> dict[int, str]:
    palette = ["tab:orange", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown"]
    return {d: palette[i % len(palette)] for i, d in enumerate(sorted(set(depths)))}


def write_figures(out: Path, rows: list[dict], grad_rows: list[dict]) -> list[Path]:
    return [_errors_png(out / "errors.png", rows), _gradflow_png(out / "gradflow.png", grad_rows)]


def _errors_png(path: Path, rows: list[dict]) -> Path:
    """He et al. 2015, Fig. 1 / Fig. 6: plain nets dashed, residual nets solid, one colour per depth."""
    colour = _colours(r["depth"] for r in rows)
    fig = figure(10, 4)
    axes = fig.subplots(1, 2, sharey=True)
    for net, series in _by_net(rows).items():
        epochs = [r["epoch"] for r in series]
        style = dict(color=colour[series[0]["depth"]], ls="--" if series[0]["kind"] == "plain" else "-",
                     marker="o", ms=3, label=net)
        axes[0].plot(epochs, [100 * r["train_error"] for r in series], **style)
        axes[1].plot(epochs, [100 * r["val_error"] for r in series], **style)
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(axes, ("training error", "validation error")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[1].legend(title="dashed: plain, solid: residual", fontsize=8, title_fontsize=8)
    return save_png(fig, path)


def _gradflow_png(path: Path, grad_rows: list[dict]) -> Path:
    """One panel per depth: gradient norm per weighted layer (input side left), log scale; plain dashed, residual
    solid; at initialisation in light, after the first epoch in full colour."""
    depths = sorted({r["depth"] for r in grad_rows})
    fig = figure(5 * len(depths), 4)
    axes = fig.subplots(1, len(depths), squeeze=False)[0]
    colour = {"plain": "tab:red", "residual": "tab:blue"}
    for ax, depth in zip(axes, depths):
        for key, series in _by_moment(r for r in grad_rows if r["depth"] == depth).items():
            kind, moment = key
            ax.plot([r["layer_index"] for r in series], [r["grad_norm"] for r in series],
                    color=colour[kind], ls="--" if kind == "plain" else "-", alpha=0.45 if moment == "init" else 1.0,
                    lw=1.2, marker=".", ms=3, label=f"{kind}, {moment}")
        ax.set_yscale("log")
        ax.set_title(f"{depth} layers: gradient norm per layer")
        ax.set_xlabel("weighted layer (1 = first conv, last = fc)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||dL/dW|| on a fixed batch")
    return save_png(fig, path)


def _by_moment(rows) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["moment"]), []).append(r)
    return groups
