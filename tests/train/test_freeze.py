"""The freeze plan: each strategy trains exactly its groups, by parameter name, at their own rates; frozen
modules stay in eval mode; a plan that leaves nothing to train, or a model without a known last stage, is refused."""

import pytest
import torch
from torch import nn

from finetune.config import ModelSpec, OptimSpec, StrategySpec, build_recipe
from finetune.errors import ConfigError
from finetune.models.registry import ModelInfo, create_model
from finetune.train.freeze import plan_freeze, set_train_mode
from finetune.train.loop import fit
from finetune.train.optim import build_optimizer

LRS = {"head": 1e-3, "last_stage": 1e-4, "backbone": 1e-5}


def _resnet():
    return create_model(ModelSpec(source="scratch", name="resnet18", weights=None), 3)


def _plan(model, info, strategy):
    return plan_freeze(model, info, StrategySpec(name=strategy, lr=LRS))


@pytest.mark.parametrize("strategy, trained, roots", [
    ("feature-extract", ("fc.",), ("fc",)),
    ("last-stage", ("fc.", "layer4."), ("fc", "layer4")),
    ("full", ("",), ("fc", "layer4")),
])
def test_each_strategy_freezes_exactly_what_it_claims(strategy, trained, roots):
    model, info = _resnet()
    plan = _plan(model, info, strategy)
    plan.apply(model)
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith(trained), name
    assert plan.trainable() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert plan.roots == roots and plan.freezes_a_prefix == (strategy != "full")


def test_groups_carry_their_declared_lrs_and_no_decay_on_norm_and_bias():
    model, info = _resnet()
    plan = _plan(model, info, "last-stage")
    opt = build_optimizer(OptimSpec(name="sgd", weight_decay=5e-4), plan.param_groups(model, 5e-4))
    by_name = {}
    for g in opt.param_groups:
        by_name.setdefault(g["name"], []).append(g)
    assert set(by_name) == {"head", "last_stage"}
    assert all(g["lr"] == LRS[name] for name, gs in by_name.items() for g in gs)
    for g in opt.param_groups:
        assert all(p.ndim > 1 for p in g["params"]) if g["weight_decay"] else all(p.ndim <= 1 for p in g["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    planned = {n for g in plan.groups for n in g.params}
    assert {names[id(p)] for g in opt.param_groups for p in g["params"]} == planned


def test_frozen_modules_stay_in_eval_mode():
    model, info = _resnet()
    _plan(model, info, "last-stage").apply(model)
    set_train_mode(model)
    assert not model.layer3.training and not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer4.training and model.layer4[0].bn1.training and model.training


def test_a_model_without_a_known_last_stage_cannot_train_its_last_stage():
    import timm

    model = timm.create_model("test_vit")  # no feature stages: no known last stage
    with pytest.raises(ConfigError, match="no known last stage"):
        _plan(model, ModelInfo("head", [], 64, None), "last-stage")


def test_nothing_to_train_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity())  # its head (module "1") has no parameters
    with pytest.raises(ConfigError, match="leaves nothing to train: the model's head has no parameters"):
        _plan(model, ModelInfo("1", [], 4, None), "feature-extract")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["feature-extract", "last-stage"])
def test_frozen_bn_running_stats_are_bit_identical_after_training(strategy, tiny_tree, monkeypatch):
    import finetune.train.setup as setup

    captured = {}
    real_create = setup.create_model

    def spy(*args, **kwargs):
        model, info = real_create(*args, **kwargs)
        captured["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        captured["model"] = model
        return model, info

    monkeypatch.setattr(setup, "create_model", spy)
    tiny_tree["strategy"] = {"name": strategy, "lr": {"head": 0.05, "last_stage": 0.05}}
    tiny_tree["train"]["epochs"] = 1
    fit(build_recipe(tiny_tree))
    after = captured["model"].state_dict()
    frozen_stats = [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                    and not k.startswith(("classifier", "blocks.4", "conv_head", "bn2"))]
    assert frozen_stats
    for k in frozen_stats:
        assert torch.equal(after[k].cpu(), captured["before"][k]), k
    if strategy == "last-stage":  # the trained stage's BN did move
        assert not torch.equal(after["bn2.running_mean"].cpu(), captured["before"]["bn2.running_mean"])


@pytest.mark.slow
def test_freeze_epochs_trains_the_head_alone_first_then_unfreezes(tiny_tree, monkeypatch):
    import csv

    from finetune.train import state

    snapshots = []
    real = state.RunState.save_epoch

    def keep(self, best):
        snapshots.append({k: v.clone() for k, v in self.step.model.state_dict().items()})
        real(self, best)

    monkeypatch.setattr(state.RunState, "save_epoch", keep)
    tiny_tree["strategy"] = {"name": "last-stage", "lr": {"head": 0.05, "last_stage": 0.05}, "freeze_epochs": 1}
    tiny_tree["data"]["augment"] = "flip"
    import finetune.train.setup as setup

    initial = {}
    real_create = setup.create_model

    def spy(*args, **kwargs):
        model, info = real_create(*args, **kwargs)
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return model, info

    monkeypatch.setattr(setup, "create_model", spy)
    run = fit(build_recipe(tiny_tree))
    first, second = snapshots
    for key in ("blocks.4.0.conv_pw.weight", "bn2.weight", "bn2.running_mean"):  # the last stage: still after
        assert torch.equal(first[key], initial[key]), key  # epoch 1 (BN in eval), trained in epoch 2
        assert not torch.equal(second[key], first[key]), key
    assert not torch.equal(first["classifier.weight"], initial["classifier.weight"])  # the head trains from epoch 1
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[0]["lr_last_stage"]) == 0 and float(rows[1]["lr_last_stage"]) > 0
    assert float(rows[0]["lr_head"]) > 0


def test_layer_decay_gives_each_block_its_group_lr_times_decay_to_the_depth():
    from timm.models import group_parameters

    for source, name in (("scratch", "resnet18"), ("timm", "test_efficientnet")):
        model, info = create_model(ModelSpec(source=source, name=name, weights=None), 3)
        plan = plan_freeze(model, info, StrategySpec(name="full", lr=LRS, layer_decay=0.5))
        block_of = group_parameters(model, info.block_matcher, reverse=True)
        top = max(block_of.values())
        names = {id(p): n for n, p in model.named_parameters()}
        groups = plan.param_groups(model, 0.0)
        assert sum(len(g["params"]) for g in groups) == len(names)
        for g in groups:
            for p in g["params"]:
                n = names[id(p)]
                depth = 0 if n.startswith(info.head_name) else top - block_of[n]
                assert g["lr"] == pytest.approx(LRS[g["name"]] * 0.5 ** depth), n
        if source == "scratch":  # layer4.1 sits one block below the head, the stem nine
            lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
            assert lr_of["layer4.1.conv2.weight"] == pytest.approx(LRS["last_stage"] * 0.5)
            assert lr_of["conv1.weight"] == pytest.approx(LRS["backbone"] * 0.5 ** 9)


@pytest.mark.slow
def test_frozen_bn_train_lets_frozen_statistics_adapt_and_turns_the_cache_off(tiny_tree, tmp_path, monkeypatch):
    import finetune.train.setup as setup

    captured = {}
    real_create = setup.create_model

    def spy(*args, **kwargs):
        model, info = real_create(*args, **kwargs)
        captured.update(model=model, before=model.bn1.running_mean.clone())
        return model, info

    monkeypatch.setattr(setup, "create_model", spy)
    tiny_tree["strategy"] = {"name": "feature-extract", "lr": {"head": 0.1}, "frozen_bn": "train"}
    tiny_tree["features"] = {"dir": str(tmp_path / "cache")}
    fit(build_recipe(tiny_tree))
    assert not torch.equal(captured["model"].bn1.running_mean, captured["before"])  # frozen, but adapted
    assert not (tmp_path / "cache").exists() or not any(p for p in (tmp_path / "cache").iterdir()
                                                         if not p.name.startswith("."))
