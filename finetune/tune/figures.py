"""study.png: the study's trials in parallel coordinates (one axis per searched key, then the val loss; the best
trial in red, pruned ones grey) beside each key's importance (fANOVA), drawn with the plotting module's
Agg figures (no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

from ..plotting import figure, save_png


def position(distribution, value) -> float:
    """Where `value` sits on its axis, 0 (low, the first choice) to 1 (high, the last): log axes for log ranges."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return choices.index(value) / (len(choices) - 1) if len(choices) > 1 else 0.5
    low, high = float(distribution.low), float(distribution.high)
    if high == low:
        return 0.5
    if distribution.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low)


def _ticks(distribution) -> list[tuple[float, str]]:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return [(position(distribution, c), str(c)) for c in choices]
    return [(0.0, f"{distribution.low:.3g}"), (1.0, f"{distribution.high:.3g}")]


def plot_study(path: Path, trials: list, importances: dict[str, float]) -> Path:
    """Parallel coordinates of the complete and pruned trials, and the importance bars, in one PNG."""
    from matplotlib import colormaps
    from optuna.trial import TrialState

    shown = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.value is not None]
    keys = list(dict.fromkeys(k for t in shown for k in t.params))
    dists = {k: next(t.distributions[k] for t in shown if k in t.params) for k in keys}
    values = [t.value for t in shown]
    low, high = min(values), max(values)
    fig = figure(4 + 1.6 * (len(keys) + 1), 5)
    ax, ax_imp = fig.subplots(1, 2, width_ratios=[max(2, len(keys) + 1), 2])
    cmap = colormaps["viridis_r"]
    complete = [t for t in shown if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    c_low, c_high = (min(t.value for t in complete), max(t.value for t in complete)) if complete else (low, high)
    for t in sorted(shown, key=lambda t: -t.value):  # the better trials drawn last, on top
        ys = [position(dists[k], t.params[k]) if k in t.params else math.nan for k in keys]
        ys.append(0.5 if high == low else (t.value - low) / (high - low))
        if t.state == TrialState.PRUNED:
            ax.plot(range(len(ys)), ys, color="0.75", lw=0.8, ls="--", zorder=1)
        elif t is best:
            ax.plot(range(len(ys)), ys, color="tab:red", lw=3, zorder=3)
        else:  # coloured over the complete trials' range, so pruned ones' high losses do not wash it out
            share = 0.5 if c_high == c_low else (t.value - c_low) / (c_high - c_low)
            ax.plot(range(len(ys)), ys, color=cmap(share), lw=1.3, alpha=0.9, zorder=2)
    for i, key in enumerate(keys):
        ax.axvline(i, color="0.3", lw=0.8)
        for y, text in _ticks(dists[key]):
            ax.text(i + 0.03, y, text, fontsize=7, va="center")
    ax.axvline(len(keys), color="0.3", lw=0.8)
    for y, v in ((0.0, low), (1.0, high)):
        ax.text(len(keys) + 0.03, y, f"{v:.3g}", fontsize=7, va="center")
    ax.set_xticks(range(len(keys) + 1), [*keys, "val loss"], rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(keys) + 0.5)
    ax.set_ylim(-0.05, 1.05)
    n_pruned = sum(t.state == TrialState.PRUNED for t in shown)
    title = (f"{len(complete)} complete trials (colour: their val loss, yellow lowest, purple highest), {n_pruned} "
             "pruned (grey, dashed)")
    ax.set_title(title + (f"; best: trial {best.number} (red)" if best else ""), fontsize=9)
    if importances:
        names = list(importances)[::-1]
        ax_imp.barh(names, [importances[n] for n in names], color="tab:blue")
        ax_imp.set_xlabel("importance (fANOVA, share of the val loss variance)", fontsize=8)
        ax_imp.tick_params(labelsize=8)
    else:
        ax_imp.axis("off")
        ax_imp.text(0.5, 0.5, "parameter importance needs\n3 or more complete trials", ha="center", va="center")
    ax_imp.set_title("parameter importance", fontsize=9)
    return save_png(fig, path)
