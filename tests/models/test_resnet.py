"""Our from-scratch ResNets are torchvision's, parameter for parameter and output for output."""

import pytest
import torch
import torchvision

from finetune.models.resnet import resnet

EXPECTED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
            "resnet101": 44_549_160, "resnet152": 60_192_808}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_matches_torchvision(name):
    torch.manual_seed(0)
    ours, theirs = resnet(name), torchvision.models.get_model(name)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == EXPECTED[name]
    ours.load_state_dict(theirs.state_dict(), strict=True)  # identical key names and shapes
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_child_names_match_torchvision():
    names = [n for n, _ in resnet("resnet50").named_children()]
    assert names == [n for n, _ in torchvision.models.resnet50().named_children()]


def test_cifar_stem_keeps_resolution():
    model = resnet("resnet18", num_classes=10, cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32))))))
    assert feats.shape[-1] == 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
