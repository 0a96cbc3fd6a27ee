"""The planner (train.planner): a pure function of the data's size, this machine's cost and the budget."""

import pytest

from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train.estimate import SMALL_SIZE
from finetune.train.planner import FILL, MAX_EPOCHS, MIN_EPOCHS, OVERHEAD, DataStats, Machine, plan_run

HYM = DataStats(245, 153, 2)  # hymenoptera's size
CPU = Machine("cpu", decode=0.004, forward=0.013)  # Lite0 on this project's 2-core CPU (planner_costs.py)


@pytest.mark.parametrize("budget, backbone, strategy, size", [
    (12, "lite0", "feature-extract", SMALL_SIZE),  # not even one pass at full size: smaller images
    (30, "lite2", "feature-extract", 260),  # the largest backbone whose feature pass fits
    (120, "lite2", "last-stage", 260),
    (600, "lite2", "last-stage", 260),
])
def test_the_plan_grows_with_the_budget(budget, backbone, strategy, size):
    plan = plan_run(HYM, CPU, budget)
    assert (plan.backbone.key, plan.strategy, plan.image_size) == (backbone, strategy, size)
    if strategy == "last-stage":
        assert MIN_EPOCHS <= plan.epochs <= MAX_EPOCHS
        assert plan.seconds <= FILL * budget  # sized to leave room for the estimate's error
    assert plan.why and plan.next


def test_epochs_are_as_many_as_fit_up_to_the_cap():
    epochs = [plan_run(HYM, CPU, b, model="lite0").epochs for b in (45, 60, 90, 3600)]
    assert epochs == sorted(epochs) and epochs[-1] == MAX_EPOCHS and epochs[0] >= MIN_EPOCHS


def test_more_images_or_a_slower_machine_make_a_smaller_plan():
    big = DataStats(24_500, 1_530, 2)
    assert plan_run(big, CPU, 600).strategy == "feature-extract"
    slow = Machine("cpu", decode=0.004, forward=0.13)
    assert plan_run(HYM, slow, 120).strategy == "feature-extract"
    assert plan_run(HYM, CPU, 120).strategy == "last-stage"


def test_model_names_the_backbone_and_an_unknown_one_is_refused():
    assert plan_run(HYM, CPU, 3600, model="lite0").backbone.key == "lite0"
    with pytest.raises(ConfigError, match="lite0, lite1, lite2"):
        plan_run(HYM, CPU, 600, model="resnet50")


def test_the_plan_is_a_valid_recipe_with_the_budget_and_the_backbones_weights(tmp_path):
    plan = plan_run(HYM, CPU, 300)
    recipe = build_recipe(plan.recipe(str(tmp_path), tmp_path / "run"))
    assert recipe.train.budget == 300 and recipe.model.weights == plan.backbone.weights
    assert recipe.strategy.name == plan.strategy and recipe.data.image_size == plan.image_size
    assert recipe.train.epochs == plan.epochs and plan.seconds >= OVERHEAD
