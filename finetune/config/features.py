"""FeaturePlan: whether the frozen part's outputs are computed once and stored, decided once from the recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .strategies import TRAINED_GROUPS

if TYPE_CHECKING:  # a Recipe is what plan_features reads; recipe.py resolves its head solver with plan_features
    from .recipe import Recipe


@dataclass(frozen=True)
class FeaturePlan:
    """Whether the frozen part's outputs are computed once and stored (the feature cache), decided once from the
    recipe: the head-solver default, the time estimate, the feature pass and the audit all read this."""
    cached: bool  # there is a frozen part and its outputs are stored: val always, train as `train_views` says
    train_views: int  # stored views of each train image: 1 (no random augmentation), K (features.views), 0 (none:
    # the frozen part runs on fresh augmentations every epoch)
    reason: str = ""  # why nothing, or nothing of train, is stored ("" when both are)

    @property
    def fixed(self) -> bool:
        """Every train image's features are stored: a head can be solved on them, and they are priced once."""
        return self.cached and self.train_views > 0


def plan_features(recipe: Recipe) -> FeaturePlan:
    """The recipe's FeaturePlan. The frozen part is what the strategy does not train (config.TRAINED_GROUPS, which
    the freeze plan is built from too); train's features are fixed unless augmentation or mixing changes them."""
    if "backbone" in TRAINED_GROUPS[recipe.strategy.name]:
        return FeaturePlan(False, 0, f"strategy.name {recipe.strategy.name} trains every layer: nothing is frozen")
    if recipe.features.cache == "off":
        return FeaturePlan(False, 0, "features.cache off")
    if recipe.strategy.frozen_bn == "train":
        return FeaturePlan(False, 0, "strategy.frozen_bn train (the frozen BatchNorm statistics change every step)")
    data = recipe.data
    if data.mixup or data.cutmix:
        return FeaturePlan(True, 0, "data.mixup/data.cutmix mix each batch anew")
    if data.augment != "none" or data.random_erasing > 0:
        views = recipe.features.views
        what = f"data.augment {data.augment}" + (" with data.random_erasing" if data.random_erasing else "")
        return FeaturePlan(True, views, "" if views else f"{what} with features.views 0 (fresh features every "
                                                          "epoch; features.views: K caches K augmented views)")
    return FeaturePlan(True, 1)
