"""Freeze plan and optimizer parameter groups, declared by parameter-name prefixes, never by position.

Every parameter belongs to exactly one group: `head` (the new classifier), `last_stage` (layer4 for
ResNets, the stride-32 stage for timm models) or `backbone` (the rest). A strategy names the groups
it trains; everything else is frozen, and modules whose parameters are all frozen (BatchNorm
included) stay in eval mode so their running statistics never move.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .models.registry import ModelInfo

GROUPS = ("head", "last_stage", "backbone")
TRAINED_GROUPS = {"feature-extract": ("head",), "last-stage": ("head", "last_stage"), "full": GROUPS}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def group_of(param_name: str, info: ModelInfo) -> str:
    if _under(param_name, info.head_name):
        return "head"
    if any(_under(param_name, p) for p in info.last_stage):
        return "last_stage"
    return "backbone"


def plan_freeze(model: nn.Module, info: ModelInfo, strategy: str) -> dict[str, list[str]]:
    """{group: [trainable parameter names]} for the groups the strategy trains."""
    trained = TRAINED_GROUPS[strategy]
    plan: dict[str, list[str]] = {g: [] for g in trained}
    for name, _ in model.named_parameters():
        group = group_of(name, info)
        if group in plan:
            plan[group].append(name)
    if strategy == "last-stage" and not plan["last_stage"]:
        raise ConfigError("this model has no known last stage; use strategy.name: feature-extract or full")
    if not any(plan.values()):
        raise ConfigError(f"strategy {strategy!r} leaves nothing to train")
    return plan


def apply_freeze(model: nn.Module, plan: dict[str, list[str]]) -> None:
    trainable = {n for names in plan.values() for n in names}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except modules whose parameters are all frozen: those (and their BN) stay in eval."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def param_groups(model: nn.Module, plan: dict[str, list[str]], lrs: dict[str, float],
                 weight_decay: float) -> list[dict]:
    """One optimizer group per (group, decay) with its own absolute lr; no weight decay on norm/bias (ndim <= 1)."""
    params = dict(model.named_parameters())
    out = []
    for group, names in plan.items():
        decay = [params[n] for n in names if params[n].ndim > 1]
        no_decay = [params[n] for n in names if params[n].ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                out.append({"name": group, "params": ps, "lr": lrs[group], "weight_decay": wd})
    return out
