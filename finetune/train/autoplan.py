"""`finetune train PHOTOS/` without a recipe: measure the data and this machine, plan (train.planner), run the
plan's phases and keep the better.

The data is split as a run will split it (the recipe defaults: data.val_fraction 0.2, seed 0, or train/ and
val/ folders); the machine is timed on a few val images through Lite0 (decode, then forward), which the
planner scales to the other backbones.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataSpec, ModelSpec, Recipe, TrainSpec
from ..data.folders import resolve_splits
from ..data.images import ImageDataset
from ..data.transforms import eval_transform
from ..metrics import epoch_rank, wilson_interval
from ..models.registry import create_model
from ..runtime.device import resolve_compute
from .estimate import PROBE_IMAGES, seconds_per_image
from .loop import fit
from .planner import BACKBONES, MIN_EPOCHS, OVERHEAD, DataStats, Machine, Phase, Plan, auto_budget, plan_run


def plan_folder(root: Path, budget: float | None, model: str | None = None, device: str = "auto") -> Plan:
    """The plan for the photos under `root` within `budget` seconds on this machine (None: --budget auto, the
    budget in which nothing is cut)."""
    splits = resolve_splits(root, DataSpec.model_fields["val_fraction"].default, TrainSpec.model_fields["seed"].default)
    stats = DataStats(len(splits.train), len(splits.val), len(splits.class_names))
    compute = resolve_compute(device)
    probe, info = create_model(ModelSpec(source="timm", name=BACKBONES[0].name, weights=None), stats.classes)
    probe.to(compute.device, memory_format=torch.channels_last)
    images = ImageDataset((splits.val or splits.train)[:PROBE_IMAGES + 1], eval_transform(info.preprocessing),
                          info.preprocessing.resize)
    decode, forward = seconds_per_image(probe, images, compute)
    machine = Machine(compute.device.type, decode, forward)
    return plan_run(stats, machine, auto_budget(stats, machine, model) if budget is None else budget, model)


@dataclass(frozen=True)
class PhaseRun:
    phase: Phase
    run_dir: Path
    seconds: float
    best: dict  # its best epoch's row of metrics.csv (val_acc, val_loss as numbers)


def run_plan(plan: Plan, recipes: list[Recipe], echo) -> list[PhaseRun]:
    """Each phase's run in turn, each with the budget that is left; a phase for which fewer than MIN_EPOCHS of
    its epochs are left is skipped, saying so."""
    start, runs = time.monotonic(), []
    for phase, recipe in zip(plan.phases, recipes):
        left = plan.budget - (time.monotonic() - start)
        epoch = (phase.seconds - OVERHEAD) / phase.epochs
        if runs and left < OVERHEAD + MIN_EPOCHS * epoch:
            echo(f"{phase.name}: skipped, {left:.0f} s of the budget left (it needs about "
                 f"{OVERHEAD + MIN_EPOCHS * epoch:.0f} s for {MIN_EPOCHS} epochs)")
            break
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"budget": round(left, 1)})})
        begun = time.monotonic()
        run_dir = fit(recipe)
        runs.append(PhaseRun(phase, run_dir, time.monotonic() - begun, _best_row(run_dir)))
    return runs


def kept(runs: list[PhaseRun]) -> PhaseRun:
    """The run whose best epoch is best on val, as best.pt picks epochs (a tie keeps the earlier: the solved head)."""
    return max(runs, key=lambda r: epoch_rank(r.best))


def _best_row(run_dir: Path) -> dict:
    rows = [{k: float(v) for k, v in r.items() if k in ("val_acc", "val_loss", "epoch")}
            for r in csv.DictReader(open(run_dir / "metrics.csv", encoding="utf-8"))]
    return max(rows, key=epoch_rank)


def outcome(plan: Plan, runs: list[PhaseRun], seconds: float) -> list[str]:
    """The end of a planned run: the time of each phase against the estimate and budget, its best val accuracy,
    the one kept with its 95% interval, and what a bigger budget would try."""
    n = plan.data.val_images
    lines = [f"planned run: {seconds:.0f} s of the {plan.budget:.0f} s budget (estimate {plan.seconds:.0f} s)"]
    for r in runs:
        lines.append(f"  {r.phase.name}: val accuracy {r.best['val_acc']:.3f} (epoch {r.best['epoch']:.0f}) in "
                     f"{r.seconds:.0f} s (estimate {r.phase.seconds:.0f} s): {r.run_dir}")
    best = kept(runs)
    low, high = wilson_interval(round(best.best["val_acc"] * n), n)
    lines.append(f"kept: {best.phase.name}, val accuracy {best.best['val_acc']:.3f} (95% interval {low:.3f}-"
                 f"{high:.3f}, {n} val images)")
    lines.append(f"a bigger budget would try {plan.next}")
    return lines
