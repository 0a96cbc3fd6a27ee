"""The seed's ResNet variants: torchvision's ResNeXt / Wide ResNet parameter for parameter, PreAct's clean
identity path, SE's channel re-weighting, the CIFAR Wide ResNets' published sizes, and the registry."""


import pytest
import torch
import torchvision
from conftest import offline_torchvision_weights

from finetune.config import ModelSpec
from finetune.errors import ConfigError
from finetune.models.registry import create_model
from finetune.models.resnet import resnet
from finetune.models.variants import PreActBasicBlock, PreActBottleneck, SEBasicBlock, SqueezeExcite, variant

TORCHVISION = {"resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
               "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_matches_torchvision(name):
    torch.manual_seed(0)
    ours, theirs = resnet(name), torchvision.models.get_model(name)
    assert _count(ours) == _count(theirs) == TORCHVISION[name]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_imagenet_weights_by_name_load_into_our_resnext(tmp_path, monkeypatch):
    weights = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2
    reference = offline_torchvision_weights(tmp_path, monkeypatch, weights, torchvision.models.resnext50_32x4d())
    model, info = create_model(ModelSpec(source="scratch", name="resnext50_32x4d", weights="IMAGENET1K_V2"), 3)
    assert torch.equal(model.layer4[2].conv2.weight, reference.layer4[2].conv2.weight)
    assert model.layer4[2].conv2.groups == 32
    assert info.preprocessing.resize == 232 and info.last_stage == ["layer4"] and info.feature_dim == 2048


@pytest.mark.parametrize("block", [PreActBasicBlock(64, 64), PreActBottleneck(256, 64)])
def test_preact_identity_path_holds_no_bn_or_relu(block):
    last = block.conv3 if isinstance(block, PreActBottleneck) else block.conv2
    torch.nn.init.zeros_(last.weight)
    block.train()  # batch statistics: BN or ReLU on the identity path would change x
    x = torch.randn(2, block.bn1.num_features, 8, 8)  # negative values too: a ReLU would clip them
    assert torch.equal(block(x), x)


def test_preact_resnet_ends_with_bn_relu_and_trains_it_with_the_last_stage():
    model, info = create_model(ModelSpec(source="scratch", name="preact_resnet18", weights=None), 2)
    assert info.last_stage == ["layer4", "final_bn"]
    assert [n for n, _ in model.named_children()][:8] == ["conv1", "bn1", "relu", "maxpool",
                                                          "layer1", "layer2", "layer3", "layer4"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.layer2[0].downsample.modules())


def test_se_reweights_channels_before_the_addition():
    se = SqueezeExcite(32)
    x = torch.rand(1, 32, 4, 4) + 0.1
    with torch.no_grad():
        ratio = se(x) / x
    # one factor per channel, the same at every position, in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all() and ratio.flatten().unique().numel() > 1
    block = SEBasicBlock(64, 64)
    se_params = _count(block.se)
    assert se_params == 64 * 4 + 4 + 4 * 64 + 64  # reduction 16, biases
    assert se_params < 0.10 * _count(block)
    # the gate acts on the residual branch: gates shut (bias -inf), the block is relu(x)
    torch.nn.init.constant_(block.se.fc2.bias, -1e4)
    torch.nn.init.zeros_(block.se.fc2.weight)
    block.eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(x))


def test_preact_and_se_sizes():
    # PreAct-18 is ResNet-18 less the shortcut BNs (2*(128+256+512)), less the narrower bn1 of each stage's first
    # block (128+256+512), plus the final BN (2*512)
    assert _count(variant("preact_resnet18")) == 11_689_512 - 2 * 896 - 896 + 2 * 512
    # SE-ResNet-50: Hu et al. 2018 (~28.1M, ResNet-50 + ~10%), and timm's seresnet50 to the parameter. (timm's
    # seresnet18 rounds layer1's 64/16 = 4 hidden SE channels up to 8: 1,032 parameters more than the paper's r=16.)
    import timm

    assert _count(variant("seresnet50")) == _count(timm.create_model("seresnet50")) == 28_088_024
    assert _count(variant("seresnet18")) == 11_778_592


@pytest.mark.parametrize("name, reference", [("wrn_28_10", 36.5e6), ("wrn_16_4", 2.7e6)])
def test_wide_cifar_resnets_have_the_published_size(name, reference):
    # Zagoruyko & Komodakis 2016, Table 1/4: WRN-28-10 36.5M, WRN-16-4 2.7M parameters (10 classes)
    model = variant(name, num_classes=10)
    assert abs(_count(model) - reference) / reference < 0.02
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["preact_resnet50", "seresnet34", "wrn_16_4", "resnext50_32x4d"])
def test_every_variant_takes_the_cifar_stem_and_freezes_by_name(name):
    model, info = create_model(ModelSpec(source="scratch", name=name, weights=None, cifar_stem=True), 10)
    assert (info.preprocessing.size, info.preprocessing.resize) == (32, 32)
    names = [n for n, _ in model.named_parameters()]
    assert all(any(n.startswith(p + ".") for n in names) for p in info.last_stage)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_variants_without_torchvision_weights_say_so():
    with pytest.raises(ConfigError, match="no pretrained weights by name"):
        create_model(ModelSpec(source="scratch", name="seresnet18", weights="IMAGENET1K_V1"), 2)
