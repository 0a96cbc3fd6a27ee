"""The freeze plan, built once from the recipe: which parameters train, in which group, at which learning
rate, and where the frozen prefix ends. The optimizer, the feature cache and BatchNorm handling all read it.

Groups are declared by parameter-name prefixes, never by position: `head` (the new classifier),
`last_stage` (layer4 for ResNets, the stride-32 stage for timm models) or `backbone` (the rest). Which
groups a strategy trains is `config.TRAINED_GROUPS`, the one table. Everything else is frozen, and modules
whose parameters are all frozen (BatchNorm included) stay in eval mode so their running statistics never move.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import TRAINED_GROUPS, StrategySpec
from ..errors import ConfigError
from ..models.registry import ModelInfo


@dataclass(frozen=True)
class GroupPlan:
    name: str  # head | last_stage | backbone
    params: tuple[str, ...]  # the trainable parameters' names, in model order
    lr: float  # absolute learning rate (strategy.lr[name])


@dataclass(frozen=True)
class FreezePlan:
    strategy: str
    groups: tuple[GroupPlan, ...]  # the trained groups
    roots: tuple[str, ...]  # module names of the trained groups: the frozen prefix ends where the first one runs

    @property
    def trainable(self) -> frozenset[str]:
        return frozenset(n for g in self.groups for n in g.params)

    @property
    def freezes_a_prefix(self) -> bool:
        """Whether some part of the model runs before the trained part and never changes (not with `full`)."""
        return "backbone" not in {g.name for g in self.groups}

    def apply(self, model: nn.Module) -> None:
        """requires_grad on exactly the planned parameters: autograd then starts at the first trained layer."""
        trainable = self.trainable
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """One optimizer group per (group, decay) with its own absolute lr; no weight decay on norm/bias (ndim <= 1)."""
        params = dict(model.named_parameters())
        out = []
        for group in self.groups:
            decay = [params[n] for n in group.params if params[n].ndim > 1]
            no_decay = [params[n] for n in group.params if params[n].ndim <= 1]
            for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
                if ps:
                    out.append({"name": group.name, "params": ps, "lr": group.lr, "weight_decay": wd})
        return out


def group_of(param_name: str, info: ModelInfo) -> str:
    if _under(param_name, info.head_name):
        return "head"
    if any(_under(param_name, p) for p in info.last_stage):
        return "last_stage"
    return "backbone"


def plan_freeze(model: nn.Module, info: ModelInfo, strategy: StrategySpec) -> FreezePlan:
    """The plan for `strategy` on this model: each trained group's parameters (by name) and learning rate."""
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
    groups = tuple(GroupPlan(g, tuple(ps), strategy.lr[g]) for g, ps in names.items() if ps)
    return FreezePlan(strategy.name, groups, roots)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except modules whose parameters are all frozen: those (and their BN) stay in eval."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
