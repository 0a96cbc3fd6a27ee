"""The learning-rate range test (Smith 2017; fastai's lr_find): train a fresh copy of the recipe's model for a
few hundred steps while the learning rate grows exponentially, and read a good rate off the loss curve.

Every group moves together at the recipe's ratios (head : last_stage : backbone), so the suggestion for the
head carries over to the other groups. The run uses the recipe's data, model, freeze plan and frozen-feature
cache, and writes lr_find.csv and lr_find.png into a new folder; it touches no existing run.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Recipe, RunSpec
from ..console import literal, stderr_console, track
from ..data.folders import dataset_folders
from ..errors import ConfigError
from ..files import atomic_write, refuse_inside
from ..plotting import figure, save_png
from .loop import frozen_batches, in_groups
from .rundir import create_run_dir
from .setup import prepare


@dataclass
class LrFind:
    folder: Path
    lrs: list[float]  # the head's lr at each step
    losses: list[float]
    smoothed: list[float]
    suggestion: float  # for the head: a tenth of the lr at the smoothed loss's minimum
    group_lrs: dict[str, float]  # the suggestion for every group, at the recipe's ratios

    @property
    def set_line(self) -> str:
        return " ".join(f"--set strategy.lr.{g}={lr:.3g}" for g, lr in self.group_lrs.items())


MIN_STEPS, MAX_STEPS = 10, 10_000  # the curve needs a few steps per decade; far past 10,000 the sweep only costs
SMOOTHING = 0.9  # about ten steps: 0.98 (fastai's) lags a 200-step sweep by a decade of learning rate


class _Fixed:
    """A scheduler that leaves the learning rates as the sweep sets them."""

    def step(self) -> None:
        pass


def lr_find(recipe: Recipe, output: Path | None = None, steps: int = 200, start: float = 1e-7, end: float = 10.0,
            console=None) -> LrFind:
    """Sweep the head's lr from `start` to `end` over `steps` optimizer steps (fewer when the loss diverges)."""
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise ConfigError(f"lr-find --steps {steps}: the sweep takes {MIN_STEPS} to {MAX_STEPS:,} steps (200 spread "
                          "the 8 decades from 1e-7 to 10 finely enough)")
    console = console or stderr_console()
    setup = prepare(recipe, console)
    spec = RunSpec(dir=recipe.run.dir, name=f"lr-find-{recipe.run.name or 'recipe'}", output=output)
    refuse_inside(output or recipe.run.dir, dataset_folders(recipe.data.root), "the lr-find folder")
    folder = create_run_dir(spec)
    step = replace(setup.step, scheduler=_Fixed(), ema=None, ema_net=None)  # the sweep sets the lrs; no average
    train_batches, _ = frozen_batches(setup, console)
    step.train_mode()
    head = recipe.strategy.lr["head"]
    ratios = [g["lr"] / head for g in step.optimizer.param_groups]
    sweep = np.geomspace(start, end, steps)
    lrs, losses, smoothed, best, avg = [], [], [], math.inf, 0.0
    for i, group in enumerate(track(_batches(train_batches, step.accumulate, steps), "lr-find",
                                    console, total=steps)):
        for g, ratio in zip(step.optimizer.param_groups, ratios):
            g["lr"] = sweep[i] * ratio
        loss, _, n = step(group)
        if not n:
            continue
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss  # an exponential moving average, bias-corrected below
        smooth = avg / (1 - SMOOTHING ** (len(losses) + 1))
        lrs.append(float(sweep[i]))
        losses.append(loss)
        smoothed.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(smooth) or smooth > 4 * best:  # diverged: the rest of the sweep says nothing
            break
    suggestion = suggest(lrs, smoothed)
    result = LrFind(folder, lrs, losses, smoothed, suggestion,
                    {g.name: suggestion * g.lr / head for g in setup.plan.groups})
    _write(result)
    console.print(f"lr-find: suggested head lr {suggestion:.3g} (the recipe has {head:g}); written to "
                  f"{literal(folder)}", soft_wrap=True)
    return result


def _batches(train_batches, accumulate: int, steps: int):
    """`steps` optimizer steps' worth of batch groups, epoch after epoch."""
    done, epoch = 0, 1
    while done < steps:
        train_batches.set_epoch(epoch)
        for group in in_groups(train_batches, accumulate):
            yield group
            done += 1
            if done == steps:
                return
        epoch += 1


def suggest(lrs: list[float], smoothed: list[float]) -> float:
    """A tenth of the lr at the smoothed loss's minimum, past the first few steps, where the average has not settled
    (Smith 2017, fastai's `lr_min`). The steepest point, which we suggested first, sits right before the minimum on a
    noisy sweep: on hymenoptera it said 0.0097 for EfficientNet-Lite0's head, which trained to 0.915 against 0.961
    at the recipe's 0.001; a tenth of the minimum says 0.0011."""
    skip = max(3, len(lrs) // 20)
    if len(lrs) < skip + 3:
        return lrs[len(lrs) // 2] if lrs else float("nan")
    return float(lrs[skip + int(np.argmin(smoothed[skip:]))]) / 10


def _write(result: LrFind) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "lr_head", "loss", "smoothed_loss"])
    writer.writerows([i + 1, f"{lr:.6g}", f"{loss:.6f}", f"{s:.6f}"]
                     for i, (lr, loss, s) in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    atomic_write(result.folder / "lr_find.csv", lambda f: f.write(buf.getvalue().encode()))
    fig = figure(7, 4.2)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    if math.isfinite(result.suggestion):
        ax.axvline(result.suggestion, color="firebrick", linestyle="--",
                   label=f"suggested head lr {result.suggestion:.2g}")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if finite:  # from the lowest loss to a little above where the sweep started
        low, high = min(finite), max(finite[: max(3, len(finite) // 20)])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    ax.set(xscale="log", xlabel="learning rate (head; other groups at the recipe's ratios)", ylabel="training loss",
           title="learning-rate range test")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, result.folder / "lr_find.png")
