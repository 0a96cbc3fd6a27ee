"""The search space of `finetune tune`: the file's shape, the recipe's own validation of each key and range, the
keys a study refuses, and the base every trial starts from."""

import pytest
from conftest import write_yaml

from finetune.config import build_recipe, check_space, default_space, load_space, override_tree, search_base
from finetune.errors import ConfigError


def test_a_space_file_reads_floats_ints_and_choices(tmp_path):
    space = load_space(write_yaml(tmp_path / "space.yaml", {
        "strategy.lr.head": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "train.batch_size": {"type": "int", "low": 8, "high": 32},
        "optim.name": {"type": "categorical", "choices": ["adam", "sgd"]},
    }))
    assert space["strategy.lr.head"].log and space["strategy.lr.head"].ends() == [1e-4, 0.1]
    assert space["train.batch_size"].ends() == [8, 32] and all(isinstance(v, int) for v in space["train.batch_size"]
                                                               .ends())
    assert space["optim.name"].ends() == ["adam", "sgd"]


@pytest.mark.parametrize("entry, message", [
    ({"type": "categorical"}, "categorical needs choices"),
    ({"type": "float", "low": 0.1}, "float needs low and high"),
    ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log needs low above 0"),
    ({"type": "float", "low": 1.0, "high": 0.5}, "is above high"),
    ({"type": "int", "low": 1.5, "high": 4}, "whole numbers"),
    ({"type": "float", "low": 0, "high": 1, "step": 0.1}, "unknown field 'step'"),
    ({"type": "uniform", "low": 0, "high": 1}, "type"),
    ({"type": "categorical", "choices": ["a"], "low": 1}, "not low, high or log"),
    ("0.1..0.5", "must be a mapping"),
])
def test_a_malformed_range_is_one_line_naming_its_key(tmp_path, entry, message):
    path = write_yaml(tmp_path / "space.yaml", {"model.head.dropout": entry})
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert "model.head.dropout" in str(info.value) and "\n" not in str(info.value)


def test_a_space_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("- strategy.lr.head\n")
    with pytest.raises(ConfigError, match="must map dotted recipe keys"):
        load_space(path)


def test_an_unknown_key_gets_the_recipes_own_did_you_mean(tiny_tree, tmp_path):
    space = load_space(write_yaml(tmp_path / "space.yaml", {"optim.weight_decy": {"type": "float", "low": 0,
                                                                                  "high": 0.1}}))
    with pytest.raises(ConfigError, match="unknown key 'optim.weight_decy'; did you mean 'weight_decay'"):
        check_space(space, search_base(tiny_tree), "space.yaml")


def test_a_range_past_the_recipes_limit_is_refused_with_that_limit(tiny_tree, tmp_path):
    space = load_space(write_yaml(tmp_path / "space.yaml", {"model.head.dropout": {"type": "float", "low": 0,
                                                                                   "high": 1.0}}))
    with pytest.raises(ConfigError, match=r"model.head.dropout = 1.0.*less than 1"):
        check_space(space, search_base(tiny_tree), "space.yaml")


@pytest.mark.parametrize("key", ["train.seed", "data.val_fraction", "train.label_smoothing", "run.name",
                                 "train.budget"])
def test_keys_that_would_make_trials_incomparable_are_refused(tiny_tree, tmp_path, key):
    space = load_space(write_yaml(tmp_path / "space.yaml", {key: {"type": "float", "low": 0.1, "high": 0.2}}))
    with pytest.raises(ConfigError, match=f"{key} cannot be searched"):
        check_space(space, search_base(tiny_tree), "space.yaml")


def test_the_base_trains_the_head_by_epochs_and_writes_every_rate_out(tiny_tree):
    tree = {**tiny_tree, "strategy": {"name": "last-stage"}}
    base = search_base(tree)
    assert base["strategy"]["head_solver"] == "sgd"
    # a trial that sets only the head's rate keeps last_stage's default, where a bare dict would lose it
    trial = build_recipe(override_tree(base, flags={"strategy.lr.head": 0.05}))
    assert trial.strategy.lr == {"head": 0.05, "last_stage": 1e-4, "backbone": 1e-5}
    with pytest.raises(ConfigError, match=r"trains \['last_stage'\] but strategy.lr has no rate"):
        build_recipe(override_tree(tree, flags={"strategy.lr": {"head": 0.05}}))


def test_a_recipe_that_solves_its_head_is_refused(tiny_tree):
    tiny_tree["strategy"]["head_solver"] = "lbfgs"
    with pytest.raises(ConfigError, match="head_solver lbfgs"):
        search_base(tiny_tree)


@pytest.mark.parametrize("strategy, groups", [("feature-extract", ["head"]), ("last-stage", ["head", "last_stage"]),
                                              ("full", ["head", "last_stage", "backbone"])])
def test_the_default_space_tunes_the_rates_the_strategy_trains_and_passes_its_own_check(tiny_tree, strategy, groups):
    tiny_tree["strategy"] = {"name": strategy}
    base = search_base(tiny_tree)
    space = default_space(build_recipe(base))
    assert [k.removeprefix("strategy.lr.") for k in space if k.startswith("strategy.lr.")] == groups
    assert {"optim.name", "optim.weight_decay", "model.head.dropout"} <= set(space)
    check_space(space, base, "the default space")
