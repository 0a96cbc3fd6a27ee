"""The frozen prefix: split off where the model allows it, BatchNorm folded, never a different answer."""

import torch
from torch import nn

from finetune.config import ModelSpec, StrategySpec
from finetune.models.registry import create_model
from finetune.train.freeze import plan_freeze
from finetune.train.prefix import split_frozen


def frozen(strategy, name="resnet18", source="scratch"):
    """A model frozen as `strategy` says, the plan's roots, and a batch of images."""
    torch.manual_seed(0)
    model, info = create_model(ModelSpec(source=source, name=name, weights=None), 3)
    plan = plan_freeze(model, info, StrategySpec(name=strategy, lr={"head": 0.1, "last_stage": 0.1}))
    plan.apply(model)
    model.to(memory_format=torch.channels_last)
    return model, list(plan.roots), torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)


def test_last_stage_split_reproduces_the_model_and_trains_only_the_last_stage():
    model, roots, images = frozen("last-stage")
    keys = list(model.state_dict())
    split, why = split_frozen(model, roots, images)
    assert why == "" and split.boundary == "layer4"
    assert split.skipped == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    model.eval()
    with torch.no_grad():
        features = split.prefix(images)
        assert features.shape == (4, 256, 4, 4)  # layer4's input
        assert torch.allclose(split.tail(features), model(images), atol=1e-4)
    assert list(model.state_dict()) == keys and isinstance(model.conv1, nn.Conv2d)  # the swap is undone
    split.tail.train()
    split.tail(features).sum().backward()
    assert model.layer4[0].conv1.weight.grad is not None and model.fc.weight.grad is not None
    assert all(p.grad is None for p in model.layer3.parameters())


def test_feature_extract_split_trains_the_head_alone():
    model, roots, images = frozen("feature-extract", "resnet10t", "timm")
    split, _ = split_frozen(model, roots, images)
    assert split.boundary == "fc" and split.tail is model.fc
    model.eval()
    with torch.no_grad():
        assert split.prefix(images).shape == (4, 512)
        assert torch.allclose(split.tail(split.prefix(images)), model(images), atol=1e-4)


class _ExtraOp(nn.Module):
    """A forward that does more than call its modules in order: skipping `a` would lose the doubling."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.b(self.a(x) * 2).mean((2, 3)))


def test_a_forward_the_split_cannot_reproduce_is_not_split():
    model = _ExtraOp()
    model.a.requires_grad_(False)
    split, why = split_frozen(model, ["b", "head"], torch.randn(2, 3, 8, 8))
    assert split is None and "does not reproduce" in why


def test_a_random_prefix_is_not_split():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    split, why = split_frozen(model, ["2"], torch.randn(3, 4))
    assert split is None and "1 before 2 is random in training" in why


def test_model_level_dropout_before_the_head_is_not_skipped():
    model, info = create_model(ModelSpec(source="timm", name="test_efficientnet", weights=None), 2)
    model.drop_rate = 0.3  # timm applies it between the pooling and the classifier, outside any module
    plan_freeze(model, info, StrategySpec()).apply(model)
    split, why = split_frozen(model, [info.head_name], torch.randn(2, 3, 32, 32))
    assert split is None and "(model) before classifier is random in training" in why


def test_feature_extract_takes_the_heads_input_from_the_adapters_seam_with_the_generic_cuts_numbers():
    for source, name in (("scratch", "resnet18"), ("timm", "test_efficientnet")):
        torch.manual_seed(0)
        model, info = create_model(ModelSpec(source=source, name=name, weights=None), 3)
        plan = plan_freeze(model, info, StrategySpec(name="feature-extract"))
        plan.apply(model)
        images = torch.randn(4, 3, 32, 32)
        seam, why = split_frozen(model, list(plan.roots), images, head_input=info.head_input)
        generic, _ = split_frozen(model, list(plan.roots), images)
        assert why == "" and seam.head_input is info.head_input and generic.head_input is None
        with torch.no_grad():
            assert torch.equal(seam.prefix(images), generic.prefix(images))  # the same stored features as before
        # a seam that does not give the head's input is not used: the generic cut stands in
        zeros = torch.zeros(len(images), info.feature_dim)
        wrong, why = split_frozen(model, list(plan.roots), images, head_input=lambda m, x, zeros=zeros: zeros)
        assert why == "" and wrong.head_input is None
