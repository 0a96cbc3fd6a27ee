"""The shipped recipes: each validates, and the seed's three train what the seed trained, at its rates."""

from pathlib import Path

import pytest
import torch

from finetune.config import Recipe, load_recipe
from finetune.models.registry import create_model
from finetune.train.freeze import plan_freeze
from finetune.train.optim import build_optimizer, build_scheduler

RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.run.name == path.stem


def optimizer_of(name: str, steps_per_epoch: int = 10):
    recipe = load_recipe(RECIPES / name, ["model.weights=null"])  # no download: the plan is by name, not weights
    model, info = create_model(recipe.model, 10, recipe.data.image_size)
    plan = plan_freeze(model, info, recipe.strategy)
    plan.apply(model)
    optimizer = build_optimizer(recipe.optim, plan.param_groups(model, recipe.optim.weight_decay))
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)].split(".")[0]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return recipe, model, optimizer, lrs


def test_feature_extract_trains_the_new_head_alone():
    recipe, model, optimizer, lrs = optimizer_of("resnet50-feature-extract.yaml")
    assert lrs == {"fc": 1e-3} and model.fc.out_features == 10
    assert recipe.data.augment == "none"  # the frozen features are computed once


def test_last_stage_trains_layer4_slower_than_the_head():
    _, model, _, lrs = optimizer_of("resnet50-last-stage.yaml")
    assert lrs == {"layer4": 1e-4, "fc": 1e-3}
    assert not any(p.requires_grad for p in model.layer3.parameters())


def test_cifar_recipe_is_the_seeds_sgd_on_everything_with_cosine_to_zero():
    recipe, model, optimizer, lrs = optimizer_of("resnet18-cifar-scratch.yaml")
    assert set(lrs.values()) == {0.1} and set(lrs) == {n.split(".")[0] for n, _ in model.named_parameters()}
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    decayed = {g["weight_decay"] for g in optimizer.param_groups if all(p.ndim > 1 for p in g["params"])}
    assert decayed == {5e-4}  # on weights; norm and bias parameters get none
    assert model.conv1.kernel_size == (3, 3) and recipe.data.image_size == 32  # the CIFAR stem
    scheduler = build_scheduler(optimizer, recipe.schedule, 10, recipe.train.epochs)
    for _ in range(10 * recipe.train.epochs - 1):
        optimizer.step()
        scheduler.step()
    assert recipe.train.epochs == 200 and optimizer.param_groups[0]["lr"] < 1e-5
