import pytest
import torch

from finetune.config import ModelSpec, OptimSpec, build_recipe
from finetune.engine import build_optimizer, fit
from finetune.errors import ConfigError
from finetune.models.registry import create_model
from finetune.strategy import apply_freeze, param_groups, plan_freeze, set_train_mode

LRS = {"head": 1e-3, "last_stage": 1e-4, "backbone": 1e-5}


def _resnet():
    return create_model(ModelSpec(source="scratch", name="resnet18", weights=None), 3)


@pytest.mark.parametrize("strategy, trained", [
    ("feature-extract", ("fc.",)),
    ("last-stage", ("fc.", "layer4.")),
    ("full", ("",)),
])
def test_each_strategy_freezes_exactly_what_it_claims(strategy, trained):
    model, info = _resnet()
    apply_freeze(model, plan_freeze(model, info, strategy))
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith(trained), name


def test_groups_carry_their_declared_lrs_and_no_decay_on_norm_and_bias():
    model, info = _resnet()
    plan = plan_freeze(model, info, "last-stage")
    opt = build_optimizer(OptimSpec(name="sgd", weight_decay=5e-4), param_groups(model, plan, LRS, 5e-4))
    by_name = {}
    for g in opt.param_groups:
        by_name.setdefault(g["name"], []).append(g)
    assert set(by_name) == {"head", "last_stage"}
    assert all(g["lr"] == LRS[name] for name, gs in by_name.items() for g in gs)
    for g in opt.param_groups:
        assert all(p.ndim > 1 for p in g["params"]) if g["weight_decay"] else all(p.ndim <= 1 for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(plan["head"]) + len(plan["last_stage"])


def test_frozen_modules_stay_in_eval_mode():
    model, info = _resnet()
    apply_freeze(model, plan_freeze(model, info, "last-stage"))
    set_train_mode(model)
    assert not model.layer3.training and not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer4.training and model.layer4[0].bn1.training and model.training


def test_nothing_to_train_is_an_error():
    import timm

    model = timm.create_model("test_vit")  # no feature stages: no known last stage
    from finetune.models.registry import ModelInfo

    info = ModelInfo("head", [], 64, None)
    with pytest.raises(ConfigError, match="no known last stage"):
        plan_freeze(model, info, "last-stage")


@pytest.mark.parametrize("strategy", ["feature-extract", "last-stage"])
def test_frozen_bn_running_stats_are_bit_identical_after_training(strategy, tiny_tree, monkeypatch):
    import finetune.engine as engine

    captured = {}
    real_create = engine.create_model

    def spy(*args, **kwargs):
        model, info = real_create(*args, **kwargs)
        captured["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        captured["model"] = model
        return model, info

    monkeypatch.setattr(engine, "create_model", spy)
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
