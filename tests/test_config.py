"""The recipe schema: defaults, precedence, refusals with a nearest-key hint, and safe parsing."""

from pathlib import Path

import pytest
from conftest import write_yaml

from finetune.config import Recipe, build_recipe, dump_recipe, load_recipe, parse_override, read_yaml
from finetune.errors import ConfigError


def test_default_augmentation_follows_the_strategy_and_explicit_settings_stay():
    assert build_recipe({}).data.augment == "none"  # feature-extract: frozen features, cached
    assert build_recipe({"strategy": {"name": "last-stage"}}).data.augment == "standard"
    assert build_recipe({"strategy": {"name": "full"}}).data.augment == "standard"
    assert build_recipe({"data": {"augment": "flip"}}).data.augment == "flip"
    assert build_recipe({"strategy": {"name": "last-stage"}, "data": {"augment": "none"}}).data.augment == "none"


def test_unknown_key_suggests_the_nearest(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", {"optim": {"nmae": "sgd"}})
    with pytest.raises(ConfigError, match=r"unknown key 'optim.nmae'.*did you mean 'name'"):
        load_recipe(path)
    path = write_yaml(tmp_path / "r.yaml", {"trian": {"epochs": 1}})
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        load_recipe(path)


def test_wrong_type_names_the_key(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"train.epochs.*'many'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"strategy.name"):
        build_recipe({"strategy": {"name": "freeze-all"}})


def test_precedence_defaults_file_flags_set(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", {"data": {"root": "from-file"}, "train": {"epochs": 3}})
    r = load_recipe(path, ["train.epochs=7", "data.root=from-set"], data=Path("from-flag"))
    assert r.train.epochs == 7 and str(r.data.root) == "from-set"
    r = load_recipe(path, [], data=Path("from-flag"))
    assert str(r.data.root) == "from-flag" and r.train.batch_size == Recipe().train.batch_size


def test_override_values_are_yaml_scalars_not_code():
    assert parse_override("optim.weight_decay=3e-4") == (["optim", "weight_decay"], 3e-4)
    assert parse_override("model.weights=null") == (["model", "weights"], None)
    assert parse_override("run.name=__import__('os')") == (["run", "name"], "__import__('os')")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optim.lr")


def test_missing_lr_for_a_trained_group():
    with pytest.raises(ConfigError, match="last_stage"):
        build_recipe({"strategy": {"name": "last-stage", "lr": {"head": 0.1}}})


def test_python_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        read_yaml(path)
    assert not marker.exists()


def test_dump_round_trips(tmp_path):
    r = build_recipe({"train": {"epochs": 2}, "data": {"root": "x"}})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_recipe(r))
    assert load_recipe(path).model_dump(exclude={"run"}) == r.model_dump(exclude={"run"})


def test_features_cache_off_as_yaml_writes_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("features:\n  cache: off\n")  # YAML 1.1 reads a bare off as false
    assert load_recipe(path).features.cache == "off"
    assert load_recipe(path, ["features.cache=auto"]).features.cache == "auto"
    assert load_recipe(tmp_path / "r.yaml", ["features.cache=off"]).features.cache == "off"


@pytest.mark.parametrize("tree, cached, views, reason", [
    ({}, True, 1, ""),
    ({"strategy": {"name": "full"}}, False, 0, "trains every layer"),
    ({"features": {"cache": "off"}}, False, 0, "features.cache off"),
    ({"strategy": {"frozen_bn": "train"}}, False, 0, "frozen_bn train"),
    ({"data": {"augment": "flip"}}, True, 0, "data.augment flip with features.views 0"),
    ({"data": {"augment": "flip"}, "features": {"views": 3}}, True, 3, ""),
    ({"data": {"random_erasing": 0.25}}, True, 0, "random_erasing"),
    ({"data": {"mixup": 0.2}, "features": {"views": 3}}, True, 0, "mixup"),
    ({"strategy": {"name": "last-stage"}}, True, 0, "data.augment standard"),  # its default augmentation
], ids=["fixed", "full", "off", "frozen-bn-train", "flip", "flip-views", "erasing", "mixup", "last-stage"])
def test_the_feature_plan_is_decided_once_from_the_recipe(tree, cached, views, reason):
    from finetune.config import plan_features

    plan = plan_features(build_recipe(tree))
    assert (plan.cached, plan.train_views) == (cached, views)
    assert reason in plan.reason and bool(plan.reason) == bool(reason)
    # the head-solver default reads the same plan: solved only where every train feature is stored
    assert (build_recipe(tree).strategy.head_solver == "lbfgs") == (plan.fixed and "strategy" not in tree)
