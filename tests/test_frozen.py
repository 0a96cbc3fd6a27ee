"""The frozen prefix: split off where the model allows it, BatchNorm folded, never a different answer."""

import torch
from torch import nn

from finetune.config import ModelSpec
from finetune.frozen import fold_batchnorm, fold_checked, split_frozen
from finetune.models.registry import create_model
from finetune.strategy import apply_freeze, plan_freeze


def _frozen(strategy, name="resnet18", source="scratch"):
    torch.manual_seed(0)
    model, info = create_model(ModelSpec(source=source, name=name, weights=None), 3)
    apply_freeze(model, plan_freeze(model, info, strategy))
    model.to(memory_format=torch.channels_last)
    roots = [info.head_name, *(info.last_stage if strategy == "last-stage" else [])]
    return model, roots, torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)


def test_last_stage_split_reproduces_the_model_and_trains_only_the_last_stage():
    model, roots, images = _frozen("last-stage")
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
    model, roots, images = _frozen("feature-extract", "resnet10t", "timm")
    split, _ = split_frozen(model, roots, images)
    assert split.boundary == "fc" and split.tail is model.fc
    model.eval()
    with torch.no_grad():
        assert split.prefix(images).shape == (4, 512)
        assert torch.allclose(split.tail(split.prefix(images)), model(images), atol=1e-4)


def test_batchnorm_folds_into_its_conv_with_the_same_output():
    model, _, images = _frozen("feature-extract")
    model.eval()
    with torch.no_grad():
        before, before_2 = model(images), model(images[:2])
        output, replaced = fold_batchnorm(model, images[:2])
        after = model(images)
    assert torch.equal(output, before_2)  # the tracing pass ran the model as it was
    assert len(replaced) == 2 * 20  # a conv and a BatchNorm per fold; resnet18: stem + 2 per block x 8 + 3 downsample
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


class _ConvUsedTwice(nn.Module):
    """The conv's output feeds the BatchNorm and the sum: folding the BatchNorm into it changes the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.bn.running_mean.fill_(0.5)
        self.bn.running_var.fill_(4.0)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_output_is_undone():
    model, images = _ConvUsedTwice(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model.eval()(images)
        assert fold_checked(model, images) is model
        assert isinstance(model.bn, nn.BatchNorm2d)
        assert torch.equal(model(images), before)
        assert not any(p.requires_grad for p in model.parameters())


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
    apply_freeze(model, plan_freeze(model, info, "feature-extract"))
    split, why = split_frozen(model, [info.head_name], torch.randn(2, 3, 32, 32))
    assert split is None and "(model) before classifier is random in training" in why
