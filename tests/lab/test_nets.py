"""He et al.'s CIFAR nets: 6n+2 layers, the published sizes, and twins that differ only by the shortcuts."""

import pytest
import torch

from finetune.lab.nets import CifarBlock, CifarNet


@pytest.mark.parametrize("depth, params", [(20, 0.27e6), (56, 0.85e6)])
def test_sizes_are_the_papers(depth, params):
    # He et al. 2015, Table 6: ResNet-20 0.27M, ResNet-56 0.85M parameters (option A shortcuts have none)
    net = CifarNet(depth, residual=True)
    assert len(net.weighted_layers()) == depth
    assert abs(sum(p.numel() for p in net.parameters()) - params) / params < 0.01


def test_twins_start_from_the_same_weights_and_differ_only_by_the_shortcut():
    torch.manual_seed(0)
    plain = CifarNet(14, residual=False)
    torch.manual_seed(0)
    residual = CifarNet(14, residual=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), residual.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), residual.eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x), residual(x))


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    block = CifarBlock(16, 32, stride=2, residual=True)
    torch.nn.init.zeros_(block.bn2.weight)  # the residual branch gives 0: the block is relu(shortcut)
    block.eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], torch.relu(x[:, :, ::2, ::2])) and torch.equal(y[:, 16:], torch.zeros(1, 16, 4, 4))
    plain = CifarBlock(16, 32, stride=2, residual=False)
    torch.nn.init.zeros_(plain.bn2.weight)
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), torch.zeros(1, 32, 4, 4))  # no shortcut: nothing gets through


def test_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarNet(21, residual=True)
