"""The recipe schema, defined once: typed, documented fields; load, override, dump.

Precedence: defaults < recipe file < CLI flags (--data/--output) < --set key.path=value.
Imports only pydantic and yaml (and errors and files, leaves) so the CLI can validate without torch.

- `recipe`: the Recipe and its sections (ModelSpec, DataSpec, ...), their limits
- `strategies`: which parameter groups each strategy trains (TRAINED_GROUPS)
- `features`: FeaturePlan, whether the frozen part's outputs are cached (plan_features)
- `load`: read a recipe file, apply flags and --set overrides, validate with a "did you mean", dump
- `space`: the search space of `finetune tune` (SearchParam, default_space, load_space, check_space)
"""

from .features import FeaturePlan, plan_features
from .load import build_recipe, dump_recipe, load_recipe, override_tree, parse_override, read_yaml
from .recipe import (
    MAX_IMAGE_SIZE,
    MAX_LR,
    DataSpec,
    DistillSpec,
    FeaturesSpec,
    HeadSpec,
    ModelSpec,
    OptimSpec,
    Recipe,
    RunSpec,
    ScheduleSpec,
    StrategySpec,
    SwaSpec,
    TrainSpec,
)
from .space import SearchParam, Space, check_space, default_space, load_space, search_base
from .strategies import TRAINED_GROUPS

__all__ = [
    "MAX_IMAGE_SIZE", "MAX_LR", "TRAINED_GROUPS", "DataSpec", "DistillSpec", "FeaturePlan", "FeaturesSpec",
    "HeadSpec", "ModelSpec",
    "OptimSpec", "Recipe", "RunSpec", "ScheduleSpec", "SearchParam", "Space", "StrategySpec", "SwaSpec",
    "TrainSpec",
    "build_recipe", "check_space", "default_space", "dump_recipe", "load_recipe", "load_space", "override_tree",
    "parse_override", "plan_features", "read_yaml", "search_base",
]
