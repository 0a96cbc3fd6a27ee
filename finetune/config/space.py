"""The search space of `finetune tune`: dotted recipe keys, each with the values a trial may give it.

A space file (`--space space.yaml`) maps keys to `{type: float|int|categorical, low, high, log, choices}`:

    strategy.lr.head: {type: float, low: 1.0e-4, high: 0.1, log: true}
    optim.name: {type: categorical, choices: [adam, adamw, sgd]}

Every key and both ends of its range (or each choice) go through the recipe's own validation before any trial
runs, so an unknown key gets the recipe's "did you mean" and a value out of its range the recipe's limit. Keys
that would make the trials' scores incomparable (the val split, the val loss itself) or that say where things go
are refused. Without a file, `default_space` is searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..files import read_yaml_file, unreadable_file
from .load import build_recipe
from .recipe import Recipe
from .strategies import TRAINED_GROUPS

Choice = Union[bool, int, float, str, None]  # what Optuna's categorical distribution can hold

# keys a study does not search, and why: a trial's score must mean the same thing in every trial
NOT_SEARCHED = {
    "data.root": "the data is what the study is about",
    "data.val_fraction": "it changes the val split the trials are compared on",
    "train.seed": "it changes the val split the trials are compared on",
    "train.label_smoothing": "it changes the val loss the trials are compared by",
    "data.class_weights": "it changes the val loss the trials are compared by",
    "train.budget": "--budget is the study's; each trial gets what is left of it",
    "train.device": "where a trial runs is not a hyper-parameter",
    "data.workers": "where a trial runs is not a hyper-parameter",
    "features.dir": "the trials share one feature cache",
    "run": "each trial's run folder is the study's trial-K",
}


class SearchParam(BaseModel):
    """One key's range in the space: a float or int between low and high (log: on a log scale), or one of choices."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["float", "int", "categorical"] = Field(description="float, int (between low and high) or "
                                                                     "categorical (one of choices)")
    low: Optional[Union[int, float]] = Field(None, description="float, int: the smallest value")
    high: Optional[Union[int, float]] = Field(None, description="float, int: the largest value")
    log: bool = Field(False, description="float, int: sample on a log scale (needs low > 0)")
    choices: Optional[list[Choice]] = Field(None, description="categorical: the values to choose from")

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices: [a, b, ...]")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical takes choices, not low, high or log")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low and high, not choices (or say type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high)):
            raise ValueError(f"int needs whole numbers for low and high, got {self.low} and {self.high}")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low above 0, got {self.low}")
        return self

    def ends(self) -> list:
        """The values checked against the recipe before any trial: low and high, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def describe(self) -> str:
        if self.type == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.type} {self.low:g} to {self.high:g}" + (" (log)" if self.log else "")


Space = dict[str, SearchParam]


def _float(low: float, high: float, log: bool = False) -> SearchParam:
    return SearchParam(type="float", low=low, high=high, log=log)


def default_space(recipe: Recipe) -> Space:
    """What `finetune tune` searches without --space: the learning rate of each group the strategy trains (log),
    the optimizer and its weight decay, the schedule and its warmup, and dropout before the head. None of these
    changes the frozen features, so feature-extract trials share one feature pass."""
    lrs = {"head": (1e-4, 1e-1), "last_stage": (1e-5, 1e-2), "backbone": (1e-6, 1e-3)}
    space = {f"strategy.lr.{group}": _float(*lrs[group], log=True) for group in TRAINED_GROUPS[recipe.strategy.name]}
    space.update({
        "optim.name": SearchParam(type="categorical", choices=["adam", "adamw", "sgd"]),
        "optim.weight_decay": _float(1e-6, 1e-2, log=True),
        "schedule.name": SearchParam(type="categorical", choices=["constant", "cosine"]),
        "schedule.warmup_epochs": _float(0.0, min(1.0, recipe.train.epochs / 2)),
        "model.head.dropout": _float(0.0, 0.5),
    })
    return space


def load_space(path: Path) -> Space:
    """A space file, each entry checked for its own shape (not yet against a recipe: check_space)."""
    path = Path(path)
    if why := unreadable_file(path, "space file"):
        raise ConfigError(why)
    tree = read_yaml_file(path, "space file")
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"space file {path} must map dotted recipe keys to {{type, low, high, log, choices}}, "
                          "e.g. 'strategy.lr.head: {type: float, low: 1.0e-4, high: 0.1, log: true}'")
    space = {}
    for key, entry in tree.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"space file {path}: {key} must be a mapping such as {{type: categorical, choices: "
                              f"[adam, sgd]}}, got {entry!r}")
        try:
            space[str(key)] = SearchParam.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(f"space file {path}: {key}: " + "; ".join(_message(e) for e in exc.errors())) from None
    return space


def _message(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"])
    text = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r} (a range has type, low, high, log, choices)"
    return f"{where}: {text}" if where else text


def check_space(space: Space, tree: dict, source: str) -> None:
    """Every key is one a study may search, and each end of its range makes a valid recipe of `tree`."""
    for key, param in space.items():
        refused = next((why for prefix, why in NOT_SEARCHED.items() if key == prefix or key.startswith(prefix + ".")),
                       None)
        if refused:
            raise ConfigError(f"{source}: {key} cannot be searched: {refused}")
        for value in param.ends():
            build_recipe(tree, source=f"{source} ({key} = {value!r})", flags={key: value})


def search_base(tree: dict) -> dict:
    """The recipe tree every trial starts from: the head trained by epochs (strategy.head_solver sgd, unless the
    recipe chose: lbfgs solves it with its own L2 sweep, leaving nothing per epoch to prune and no rate to tune), and
    strategy.lr written out, so a trial that sets one group's rate keeps the others'."""
    recipe = build_recipe(tree, source="the recipe")
    strategy = tree.get("strategy") or {}
    if strategy.get("head_solver") == "lbfgs":
        raise ConfigError("strategy.head_solver lbfgs solves the head with its own L2 sweep, without epochs to "
                          "prune or learning rates to tune: set strategy.head_solver sgd (or leave it out) to tune")
    base = dict(tree)
    base["strategy"] = {**strategy, "head_solver": "sgd", "lr": dict(recipe.strategy.lr)}
    return base
