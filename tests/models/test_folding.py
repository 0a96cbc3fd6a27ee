"""BatchNorm folded into its conv: the same output, and undone where folding would change it."""

import torch
from torch import nn

from finetune.config import ModelSpec
from finetune.models.folding import fold_batchnorm, fold_checked
from finetune.models.registry import create_model


def resnet18_eval():
    torch.manual_seed(0)
    model, _ = create_model(ModelSpec(source="scratch", name="resnet18", weights=None), 3)
    return model.eval(), torch.randn(4, 3, 64, 64)


def test_batchnorm_folds_into_its_conv_with_the_same_output():
    model, images = resnet18_eval()
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


