"""The freeze plan, built once from the recipe: which parameters train, in which group, at which learning
rate, from which epoch, and where the frozen prefix ends. The optimizer, the schedule, the feature cache and
BatchNorm handling all read it.

Groups are declared by parameter-name prefixes, never by position: `head` (the new classifier),
`last_stage` (layer4 for ResNets, the stride-32 stage for timm models) or `backbone` (the rest). Which
groups a strategy trains is `config.TRAINED_GROUPS`, the one table. With `strategy.freeze_epochs: N` the
groups other than the head start at epoch N + 1 (fastai's fine_tune); with `strategy.layer_decay` each block's
lr is its group's lr x decay^(blocks from the top). Everything not trained is frozen, and modules whose
parameters are all frozen (BatchNorm included) stay in eval mode unless `strategy.frozen_bn: train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..config import TRAINED_GROUPS, StrategySpec
from ..errors import ConfigError
from ..models.registry import ModelInfo


@dataclass(frozen=True)
class GroupPlan:
    name: str  # head | last_stage | backbone
    params: tuple[str, ...]  # the trainable parameters' names, in model order
    lr: float  # absolute learning rate (strategy.lr[name])
    start_epoch: int = 1  # the first epoch it trains in (after strategy.freeze_epochs)


@dataclass(frozen=True)
class FreezePlan:
    strategy: str
    groups: tuple[GroupPlan, ...]  # the trained groups
    roots: tuple[str, ...]  # module names of the trained groups: the frozen prefix ends where the first one runs
    frozen_bn: str = "eval"  # eval | train: BatchNorm in frozen modules
    lr_scale: dict[str, float] = field(default_factory=dict)  # layer decay: parameter -> decay^(blocks from top)

    def trainable(self, epoch: int | None = None) -> frozenset[str]:
        """The parameters that train in `epoch` (None: in any epoch, the plan's final state)."""
        return frozenset(n for g in self.groups if epoch is None or g.start_epoch <= epoch for n in g.params)

    @property
    def freezes_a_prefix(self) -> bool:
        """Whether some part of the model runs before the trained part and never changes (not with `full`)."""
        return "backbone" not in {g.name for g in self.groups}

    def unfreezes(self, epoch: int) -> list[str]:
        """The groups that start training in `epoch` after frozen epochs (gradual unfreezing)."""
        return [g.name for g in self.groups if g.start_epoch == epoch > 1]

    def apply(self, model: nn.Module, epoch: int | None = None) -> None:
        """requires_grad on exactly the parameters that train in `epoch`: autograd starts at the first of them."""
        trainable = self.trainable(epoch)
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """Optimizer groups with absolute lrs: one per (group, block scale, decay); no weight decay on norm and
        bias parameters (ndim <= 1). Each carries its name and start_epoch for the schedule and metrics.csv."""
        params = dict(model.named_parameters())
        out = []
        for group in self.groups:
            for scale in sorted({self.lr_scale.get(n, 1.0) for n in group.params}, reverse=True):
                names = [n for n in group.params if self.lr_scale.get(n, 1.0) == scale]
                decay = [params[n] for n in names if params[n].ndim > 1]
                no_decay = [params[n] for n in names if params[n].ndim <= 1]
                for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
                    if ps:
                        out.append({"name": group.name, "params": ps, "lr": group.lr * scale, "weight_decay": wd,
                                    "start_epoch": group.start_epoch})
        return out


def group_of(param_name: str, info: ModelInfo) -> str:
    if _under(param_name, info.head_name):
        return "head"
    if any(_under(param_name, p) for p in info.last_stage):
        return "last_stage"
    return "backbone"


def plan_freeze(model: nn.Module, info: ModelInfo, strategy: StrategySpec) -> FreezePlan:
    """The plan for `strategy` on this model: each trained group's parameters (by name), lr and first epoch."""
    trained = TRAINED_GROUPS[strategy.name]
    names: dict[str, list[str]] = {g: [] for g in trained}
    for name, _ in model.named_parameters():
        group = group_of(name, info)
        if group in names:
            names[group].append(name)
    if strategy.name == "last-stage" and not names["last_stage"]:
        raise ConfigError("this model has no known last stage; use strategy.name: feature-extract or full")
    if not any(names.values()):
        raise ConfigError(f"strategy {strategy.name!r} leaves nothing to train: the model's "
                          f"{', '.join(trained)} has no parameters")
    roots = (info.head_name, *(info.last_stage if "last_stage" in trained else ()))
    groups = tuple(GroupPlan(g, tuple(ps), strategy.lr[g], 1 if g == "head" else strategy.freeze_epochs + 1)
                   for g, ps in names.items() if ps)
    scale = layer_scales(model, info, strategy.layer_decay) if strategy.layer_decay else {}
    return FreezePlan(strategy.name, groups, roots, strategy.frozen_bn, scale)


def layer_scales(model: nn.Module, info: ModelInfo, decay: float) -> dict[str, float]:
    """{parameter: decay^(blocks from the top)}: blocks by name (timm's group_matcher, or ResNets' stem and
    layerN.M), the head on top with scale 1. timm's own grouping, absolute scales, no lr_scale key."""
    from timm.models import group_parameters

    if info.block_matcher is None:
        raise ConfigError("strategy.layer_decay: this model does not say how its layers group into blocks; "
                          "remove layer_decay")
    block_of = group_parameters(model, info.block_matcher, reverse=True)  # {parameter: block}, 0 = input side
    top = max(block_of.values())
    scales = {n: decay ** (top - b) for n, b in block_of.items()}
    head = [n for n, _ in model.named_parameters() if _under(n, info.head_name)]
    scales.update({n: 1.0 for n in head})
    return scales


def set_train_mode(model: nn.Module, frozen_bn: str = "eval") -> None:
    """model.train(), except modules whose parameters are all frozen: those stay in eval, their BatchNorm
    included unless frozen_bn is "train" (then frozen BatchNorm updates its running statistics)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    if frozen_bn == "train":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
