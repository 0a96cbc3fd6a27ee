"""The time a run will take, said before the work: a few val images are decoded and run through the model on
this machine, and the run's passes over the data are counted (the feature pass of a cached feature-extract run,
else every epoch's train and val images). One line, and when it is long on a CPU the cheaper setting.

Rough by design: a training step is taken as 3 forward passes when the whole model trains (forward + backward
through it), 2 for the last stage, and the decode time of the probe images stands for the data loader's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.device import Compute

PROBE_IMAGES = 8  # "the first batches": decoded, transformed and run twice (the first run warms up)
LONG = 600.0  # seconds: a run longer than this on a CPU gets the cheaper setting named
STEP_COST = {"feature-extract": 1.0, "last-stage": 2.0, "full": 3.0}  # a training image, in forward passes
SMALL_SIZE = 160  # the image size suggested when a CPU run is long (cost ~ pixels)


@dataclass(frozen=True)
class Workload:
    """The passes a run makes over its images, from the recipe and the split."""
    train_images: int
    val_images: int
    epochs: int
    strategy: str  # feature-extract | last-stage | full
    cached: bool  # the frozen features are computed once (feature-extract with the cache on)
    views: int  # cached augmented views of each train image (features.views; 1 without augmentation)
    image_size: int
    device: str  # cpu | cuda | mps


def seconds_per_image(model: nn.Module, dataset, compute: Compute) -> tuple[float, float]:
    """(decode + transform, forward) seconds per image, timed on the first PROBE_IMAGES images of `dataset`
    (the val images: no augmentation). The model is put in eval mode and given back in its former mode."""
    n = min(PROBE_IMAGES, len(dataset))
    if n == 0:
        return 0.0, 0.0
    start = time.perf_counter()
    images = torch.stack([dataset[i][0] for i in range(n)])
    decode = (time.perf_counter() - start) / n
    was_training = model.training
    model.eval()
    forward = float("inf")
    try:
        with torch.inference_mode(), compute.autocast():
            batch = compute.to_device(images)
            for _ in range(2):
                start = time.perf_counter()
                model(batch)
                if compute.device.type == "cuda":
                    torch.cuda.synchronize(compute.device)
                forward = min(forward, (time.perf_counter() - start) / n)
    finally:
        model.train(was_training)
    return decode, forward


def estimate_seconds(work: Workload, decode: float, forward: float) -> float:
    """The run's time from the per-image costs: the passes over the images, each priced by what it runs."""
    if work.cached:  # the backbone runs once per image (and view); the head on the features costs next to nothing
        return (work.train_images * max(1, work.views) + work.val_images) * (decode + forward)
    train = work.train_images * (decode + forward * STEP_COST[work.strategy])
    return work.epochs * (train + work.val_images * (decode + forward))


def cheaper_setting(work: Workload, seconds: float, decode: float, forward: float) -> str:
    """What would make a long CPU run shorter, with the time it would take; "" when the run is short or on a GPU."""
    if work.device != "cpu" or seconds < LONG:
        return ""
    hints = []
    if not work.cached:
        frozen = Workload(work.train_images, work.val_images, 1, "feature-extract", True, 1, work.image_size, "cpu")
        hints.append(f"strategy.name feature-extract with data.augment none (the backbone runs once per image): "
                     f"about {_duration(estimate_seconds(frozen, decode, forward))}")
    if work.image_size > SMALL_SIZE:
        scale = (SMALL_SIZE / work.image_size) ** 2  # the convolutions' cost follows the pixels
        hints.append(f"data.image_size {SMALL_SIZE}: about {_duration(seconds * scale)}")
    return "; cheaper: " + ", or ".join(hints) if hints else ""


def estimate_line(work: Workload, decode: float, forward: float) -> str:
    seconds = estimate_seconds(work, decode, forward)
    what = (f"the feature pass over {work.train_images * max(1, work.views) + work.val_images} images" if work.cached
            else f"{work.epochs} epoch(s) of {work.train_images} train + {work.val_images} val images")
    timed = min(PROBE_IMAGES, work.val_images)
    return (f"estimate: about {_duration(seconds)} on this machine ({work.device}) for {what}, at "
            f"{1000 * (decode + forward):.0f} ms per image (decode {1000 * decode:.0f} ms + forward "
            f"{1000 * forward:.0f} ms, timed on {timed} val images)" + cheaper_setting(work, seconds, decode, forward))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
