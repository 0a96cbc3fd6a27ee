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
    assert plan.trainable == {n for n, p in model.named_parameters() if p.requires_grad}
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


@pytest.mark.parametrize("strategy", ["feature-extract", "last-stage"])
def test_frozen_bn_running_stats_are_bit_identical_after_training(strategy, tiny_tree, monkeypatch):
    import finetune.train.loop as loop

    captured = {}
    real_create = loop.create_model

    def spy(*args, **kwargs):
        model, info = real_create(*args, **kwargs)
        captured["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        captured["model"] = model
        return model, info

    monkeypatch.setattr(loop, "create_model", spy)
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
