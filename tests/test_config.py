from pathlib import Path

import pytest

from finetune.config import Recipe, build_recipe, dump_recipe, load_recipe, parse_override, read_yaml
from finetune.errors import ConfigError

from conftest import write_yaml

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "resnet50-feature-extract.yaml", "resnet50-last-stage.yaml",
            "resnet18-cifar-scratch.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.run.name == path.stem


def test_seed_recipes_say_what_the_seed_did():
    fe = load_recipe(Path("recipes/resnet50-feature-extract.yaml"))
    ls = load_recipe(Path("recipes/resnet50-last-stage.yaml"))
    cifar = load_recipe(Path("recipes/resnet18-cifar-scratch.yaml"))
    assert (fe.model.name, fe.strategy.name, fe.strategy.lr) == ("resnet50", "feature-extract", {"head": 1e-3})
    assert ls.strategy.name == "last-stage" and ls.strategy.lr == {"head": 1e-3, "last_stage": 1e-4}
    assert cifar.model.cifar_stem and cifar.optim.name == "sgd" and cifar.optim.momentum == 0.9
    assert cifar.optim.weight_decay == 5e-4 and cifar.schedule.name == "cosine" and cifar.train.epochs == 200
    assert set(cifar.strategy.lr.values()) == {0.1}


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
