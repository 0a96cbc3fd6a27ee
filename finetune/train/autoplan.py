"""`finetune train PHOTOS/` without a recipe: measure the data and this machine, then plan (train.planner).

The data is split as a run will split it (the recipe defaults: data.val_fraction 0.2, seed 0, or train/ and
val/ folders); the machine is timed on a few val images through Lite0 (decode, then forward), which the
planner scales to the other backbones.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..config import DataSpec, ModelSpec, TrainSpec
from ..data.folders import resolve_splits
from ..data.images import ImageDataset
from ..data.transforms import eval_transform
from ..metrics import wilson_interval
from ..models.registry import create_model
from ..runtime.device import resolve_compute
from .estimate import PROBE_IMAGES, seconds_per_image
from .planner import BACKBONES, DataStats, Machine, Plan, plan_run


def plan_folder(root: Path, budget: float, model: str | None = None, device: str = "auto") -> Plan:
    """The plan for the photos under `root` within `budget` seconds on this machine."""
    splits = resolve_splits(root, DataSpec.model_fields["val_fraction"].default, TrainSpec.model_fields["seed"].default)
    stats = DataStats(len(splits.train), len(splits.val), len(splits.class_names))
    compute = resolve_compute(device)
    probe, info = create_model(ModelSpec(source="timm", name=BACKBONES[0].name, weights=None), stats.classes)
    probe.to(compute.device, memory_format=torch.channels_last)
    images = ImageDataset((splits.val or splits.train)[:PROBE_IMAGES + 1], eval_transform(info.preprocessing),
                          info.preprocessing.resize)
    decode, forward = seconds_per_image(probe, images, compute)
    return plan_run(stats, Machine(compute.device.type, decode, forward), budget, model)


def outcome(plan: Plan, run_dir: Path, seconds: float) -> list[str]:
    """The end of a planned run: the time by phase against the estimate and budget, the best val accuracy with
    its 95% interval, and what a bigger budget would try."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", encoding="utf-8")))
    epochs = sum(float(r["seconds"]) for r in rows)
    best = max(float(r["val_acc"]) for r in rows)
    n = plan.data.val_images
    low, high = wilson_interval(round(best * n), n)
    trained = f"{len(rows)} epoch(s)" if plan.strategy == "last-stage" else "the solved head"
    return [f"planned run: {seconds:.0f} s of the {plan.budget:.0f} s budget (estimate {plan.seconds:.0f} s): "
            f"{epochs:.0f} s in {trained}, {seconds - epochs:.0f} s before and after (model, data checks, "
            f"features, calibration)",
            f"best val accuracy {best:.3f} (95% interval {low:.3f}-{high:.3f}, {n} val images)",
            f"a bigger budget would try {plan.next}"]
