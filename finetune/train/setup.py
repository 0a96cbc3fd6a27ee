"""prepare(recipe): everything a run needs, made and checked before its folder exists: the split of the data,
the model and what of it trains, the loaders, the frozen part and where its features are stored, and the
training step. Each object is built once, here, from the few recipe sections it needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..config import FeaturePlan, Recipe, TrainSpec, plan_features
from ..data.balance import Balance, resolve_balance
from ..data.doctor import training_screen
from ..data.folders import Splits, resolve_splits
from ..data.loading import Loaders, create_loaders
from ..errors import ConfigError
from ..models.registry import ModelInfo, create_model
from ..runtime.device import Compute, resolve_compute, seed_everything
from ..runtime.distributed import Dist, rank_device
from .batch_size import find_batch_size
from .distill import DistillLoss, Teacher, load_teacher
from .estimate import Workload
from .features.frozen import FrozenFeatures, frozen_split
from .features.key import FeatureKey, train_transform_name
from .features.store import FeatureStore, store_root
from .freeze import FreezePlan, plan_freeze
from .loggers import check_loggers
from .multilabel import MultiLabelLoss
from .optim import build_optimizer, build_scheduler
from .prefix import Split
from .rundir import environment
from .step import TrainStep, moving_average
from .swa import WeightAverage


@dataclass(frozen=True)
class Setup:
    """A run's objects, built once by prepare()."""
    splits: Splits
    info: ModelInfo
    plan: FreezePlan
    features: FeaturePlan
    balance: Balance
    loaders: Loaders
    split: Split | None  # the model cut at its frozen prefix, when its outputs are stored or prefetched
    frozen: FrozenFeatures | None  # where the frozen part's outputs are stored (with `split`)
    train_kind: str  # how train's stored views are made (features.key.train_transform_name)
    step: TrainStep
    template: Checkpoint  # the run's checkpoint without weights
    compute: Compute
    train: TrainSpec
    solve_head: bool  # strategy.head_solver lbfgs: the head is solved on the frozen features, no epochs
    recipe: Recipe  # as the run runs it: train.batch_size auto replaced by the size found (recipe.yaml records it)
    swa: WeightAverage | None = None  # train.swa: the average of the weights from its start epoch on
    teacher: Teacher | None = None  # distill: the checkpoint whose logits teach the model (train.distill)

    @property
    def workload(self) -> Workload:
        """What estimate.py prices: the run's passes over its images."""
        cached = self.split is not None and self.features.fixed and self.plan.strategy == "feature-extract"
        return Workload(len(self.splits.train), len(self.splits.val), self.train.epochs, self.plan.strategy, cached,
                        self.features.train_views, self.info.preprocessing.size, self.compute.device.type)


def prepare(recipe: Recipe, console, dist: Dist = Dist()) -> Setup:
    """Data, model, freeze plan, loaders, the frozen part and the training step, as the recipe says."""
    cfg = recipe.train
    auto = cfg.batch_size == "auto"
    if not auto:
        check_batch(cfg.batch_size, dist.world, dist.main)
    compute = resolve_compute(rank_device(dist, cfg.device), cfg.amp, dist)
    if cfg.sync_bn and dist.enabled and compute.device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only; set it to false")
    check_loggers(recipe.run)
    seed_everything(cfg.seed)
    # data: the split, with unreadable files, label conflicts and train copies of val images left out
    splits = dist.on_main(lambda: resolve_splits(recipe.data.root, recipe.data.val_fraction, cfg.seed,
                                                 screen=lambda tree: training_screen(tree, console, recipe.data.root),
                                                 task=recipe.task))
    # the model, and what of it trains
    model, info = create_model(recipe.model, len(splits.class_names), recipe.data.image_size)
    # distill: the teacher, checked against the data's classes
    teacher = load_teacher(recipe.distill, splits.class_names, info.preprocessing, compute, recipe.data.fixed_inputs)
    plan = plan_freeze(model, info, recipe.strategy)
    plan.apply(model)
    if cfg.sync_bn and dist.enabled:
        synced_batchnorm(model, plan)
    model.to(compute.device, memory_format=torch.channels_last)
    balance = resolve_balance([y for _, y in splits.train], len(splits.class_names), recipe.data.class_weights,
                              recipe.data.sampler, cfg.seed)
    loaders = create_loaders(splits, info.preprocessing, recipe.data, cfg.seed, dist.world if auto else cfg.batch_size,
                             dist, balance.sampler, pin_memory=compute.device.type == "cuda")
    # the frozen prefix runs once per image where it can (its outputs stored); each step trains the rest alone
    features = plan_features(recipe)
    split = frozen_split(model, plan, features, loaders.val_images, compute, console, info.head_input)
    if auto:  # train.batch_size auto: found on real steps of a step of its own, the model left as it was
        size = find_batch_size(lambda: build_step(model, split, plan, recipe, balance, compute, 1, splits.targets),
                               loaders.train_images, split, features.fixed, compute, cfg.seed, console)
        recipe = recipe.model_copy(update={"train": cfg.model_copy(update={"batch_size": size})})
        cfg = recipe.train
        loaders = create_loaders(splits, info.preprocessing, recipe.data, cfg.seed, size, dist, balance.sampler,
                                 pin_memory=compute.device.type == "cuda")
    frozen = None if split is None else FrozenFeatures(
        FeatureStore(store_root(recipe.features.dir, recipe.data.root)),
        FeatureKey.of(recipe.model, info.preprocessing), compute, console, seed=cfg.seed,
        batch_size=loaders.batch_size, workers=loaders.workers)
    step = build_step(model, split, plan, recipe, balance, compute, len(loaders.train), splits.targets)
    check_batchnorm_batches(step, loaders.sampler.smallest_batch, cfg.batch_size, dist.world)
    template = Checkpoint(recipe.model.model_copy(update={"weights": None}), splits.class_names, info.preprocessing,
                          info.head_name, recipe.strategy.name, recipe=recipe.model_dump(mode="json"),
                          environment=environment(cfg.seed, compute.device))
    return Setup(splits, info, plan, features, balance, loaders, split, frozen,
                 train_transform_name(recipe.data, features.train_views, cfg.seed), step, template, compute, cfg,
                 recipe.strategy.head_solver == "lbfgs", recipe,
                 WeightAverage(model, cfg.swa.start_epoch) if cfg.swa is not None else None, teacher)


def build_step(model: nn.Module, split: Split | None, plan: FreezePlan, recipe: Recipe, balance: Balance,
               compute: Compute, batches_per_epoch: int, targets=None) -> TrainStep:
    """One optimizer step (over train.accumulate batches) on the part after the frozen prefix, and the weights'
    moving average. `targets`: task multilabel's multi-hot rows (BCE on them, train.multilabel)."""
    cfg = recipe.train
    optimizer = build_optimizer(recipe.optim, plan.param_groups(model, recipe.optim.weight_decay))
    steps = math.ceil(batches_per_epoch / cfg.accumulate)
    scheduler = build_scheduler(optimizer, recipe.schedule, steps, cfg.epochs)
    criterion = MultiLabelLoss(targets) if targets is not None else \
        nn.CrossEntropyLoss(weight=balance.loss_weights, label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.autocast_dtype == torch.float16)
    ema = moving_average(model, cfg.ema) if cfg.ema else None
    tail_of = split.tail_of if split is not None else (lambda m: m)
    return TrainStep(model=model, net=tail_of(model), criterion=criterion.to(compute.device), optimizer=optimizer,
                     scheduler=scheduler, scaler=scaler, compute=compute, grad_clip=cfg.grad_clip, ema=ema,
                     ema_net=tail_of(ema.module) if ema is not None else None, accumulate=cfg.accumulate,
                     frozen_bn=plan.frozen_bn, compile=cfg.compile,
                     distill=DistillLoss(recipe.distill.alpha, recipe.distill.temperature) if recipe.distill else None)


def check_batch(batch_size: int, world: int, main: bool = True) -> None:
    """train.batch_size is the global batch: it must divide among the processes (said once, by rank 0)."""
    if batch_size % world:
        error = ConfigError(f"train.batch_size {batch_size} is the batch over all {world} processes and must divide "
                            f"evenly among them: use a multiple of {world}")
        error.finetune_shared = not main
        raise error


def check_batchnorm_batches(step: TrainStep, smallest: int, batch_size: int, world: int) -> None:
    """BatchNorm that trains needs two or more images in a batch ("Expected more than 1 value per channel"): refuse
    a run whose smallest batch on some process would hold one, before any work."""
    if smallest > 1:
        return
    step.train_mode()  # the modes the trained part trains in (frozen BatchNorm stays in eval)
    training_bn = [n for n, m in step.net.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    step.model.train()  # as it was: every module in training mode until the loop sets them
    if training_bn:
        where = f" over {world} processes" if world > 1 else ""
        raise ConfigError(f"a training batch would hold a single image (train.batch_size {batch_size}{where}, on this "
                          f"data), and the BatchNorm layers that train ({training_bn[0]}, ...) need two or more: raise "
                          "train.batch_size" + (", or start fewer processes" if world > 1 else ""))


def synced_batchnorm(model: nn.Module, plan: FreezePlan) -> None:
    """train.sync_bn: the trained part's BatchNorm layers normalise over every rank's batch (SyncBatchNorm); the
    frozen prefix keeps plain BatchNorm, in eval mode and folded."""
    roots = list(plan.roots) if plan.freezes_a_prefix else [""]
    for root in roots:
        module = model.get_submodule(root)
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if root and synced is not module:
            model.set_submodule(root, synced)
