"""The planner (train.planner): a pure function of the data's size, this machine's cost and the budget."""

import pytest

from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train import planner
from finetune.train.estimate import SMALL_SIZE
from finetune.train.planner import FILL, MAX_EPOCHS, MIN_EPOCHS, OVERHEAD, DataStats, Machine, auto_budget, plan_run

HYM = DataStats(245, 153, 2)  # hymenoptera's size
CPU = Machine("cpu", decode=0.004, forward=0.013)  # Lite0 on this project's 2-core CPU (planner_costs.py)


@pytest.mark.parametrize("budget, first, size, then", [
    (12, "lite0", SMALL_SIZE, None),  # not even one pass at full size: smaller images, and nothing after
    (30, "lite2", 260, None),  # the largest backbone whose feature pass fits; no room for 3 epochs
    (120, "lite2", 260, "lite2"),
    (600, "lite2", 260, "lite2"),
])
def test_the_solved_head_first_then_last_stage_as_the_budget_grows(budget, first, size, then):
    plan = plan_run(HYM, CPU, budget)
    head = plan.phases[0]
    assert (head.name, head.strategy, head.backbone.key, head.image_size) == ("solved-head", "feature-extract",
                                                                               first, size)
    assert [p.backbone.key for p in plan.phases[1:]] == ([then] if then else [])
    if then:
        last = plan.phases[1]
        assert last.strategy == "last-stage" and MIN_EPOCHS <= last.epochs <= MAX_EPOCHS
        assert plan.seconds <= FILL * budget  # sized to leave room for the estimate's error
    assert all(p.why for p in plan.phases) and plan.next


def test_epochs_are_as_many_as_fit_up_to_the_cap():
    epochs = [plan_run(HYM, CPU, b, model="lite0").phases[-1].epochs for b in (60, 90, 120, 3600)]
    assert epochs == sorted(epochs) and epochs[-1] == MAX_EPOCHS and epochs[0] >= MIN_EPOCHS


def test_more_images_or_a_slower_machine_make_a_smaller_plan():
    big = DataStats(24_500, 1_530, 2)
    assert len(plan_run(big, CPU, 600).phases) == 1
    slow = Machine("cpu", decode=0.004, forward=0.13)
    assert len(plan_run(HYM, slow, 120).phases) == 1
    assert len(plan_run(HYM, CPU, 120).phases) == 2


def test_model_names_the_backbone_and_an_unknown_one_is_refused():
    assert {p.backbone.key for p in plan_run(HYM, CPU, 3600, model="lite0").phases} == {"lite0"}
    with pytest.raises(ConfigError, match="lite0, lite1, lite2"):
        plan_run(HYM, CPU, 600, model="resnet50")


def test_each_phase_is_a_valid_recipe_with_the_budget_and_the_backbones_weights(tmp_path):
    plan = plan_run(HYM, CPU, 300)
    for phase in plan.phases:
        recipe = build_recipe(phase.recipe(str(tmp_path), tmp_path / phase.name, 300))
        assert recipe.train.budget == 300 and recipe.model.weights == phase.backbone.weights
        assert recipe.strategy.name == phase.strategy and recipe.data.image_size == phase.image_size
        assert phase.seconds >= OVERHEAD
    assert build_recipe(plan.phases[1].recipe(str(tmp_path), None, 300)).train.epochs == plan.phases[1].epochs


@pytest.mark.parametrize("data, machine, model", [
    (HYM, CPU, None), (HYM, CPU, "lite0"), (DataStats(2_000, 500, 10), CPU, None),
    (HYM, Machine("cuda", decode=0.004, forward=0.0005), None),  # a GPU: the whole plan in much less time
])
def test_budget_auto_is_the_budget_that_cuts_nothing(data, machine, model):
    budget = auto_budget(data, machine, model)
    plan = plan_run(data, machine, budget, model)
    largest = model or "lite2"
    assert [(p.name, p.backbone.key) for p in plan.phases] == [("solved-head", largest), ("last-stage", largest)]
    assert plan.phases[1].epochs == MAX_EPOCHS and budget < planner.AUTO_CAP
    assert plan_run(data, machine, budget * 0.8, model).seconds < plan.seconds  # any less and something is cut


def test_budget_auto_stops_at_an_hour():
    assert auto_budget(DataStats(200_000, 20_000, 100), CPU) == planner.AUTO_CAP
    assert auto_budget(HYM, Machine("cuda", 0.004, 0.0005)) < auto_budget(HYM, CPU) / 2
