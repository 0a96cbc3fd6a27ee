"""The ResNet variants the seed builds from scratch, on our ResNet's building blocks and child names.

- Pre-activation ResNets (ResNetv2, He et al. 2016, arXiv:1603.05027): BN -> ReLU -> conv inside the
  residual branch, nothing on the identity path, and a final BN-ReLU before pooling (`final_bn`).
- Squeeze-and-Excitation ResNets (Hu et al. 2018, arXiv:1709.01507): an SE module (reduction 16) scales
  the residual branch's channels before the addition.
- Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016, arXiv:1605.07146): WRN-d-k, a 16-channel 3x3 stem,
  three stages of (d-4)/6 pre-activation blocks of 16k/32k/64k channels, 1x1 projection shortcuts.

ResNeXt and Wide ResNet-50/101 (torchvision's) are our Bottleneck with groups / base_width (resnet.py).
Stems keep torchvision's names (conv1, bn1, relu, maxpool), stages are layer1..layer4 (layer1..layer3 for
the CIFAR WRNs), the head is `fc`, so freezing by name, last-stage and the feature cache work unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from .resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # A projection sees the pre-activated input (He et al. 2016, Fig. 4e); the identity sees x itself.
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(ResNet):
    """ResNet v1's stem, pre-activation stages, and the final BN-ReLU the pre-activation blocks leave out."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000,
                 cifar_stem: bool = False, **widths):
        super().__init__(block, layers, num_classes=num_classes, cifar_stem=cifar_stem, **widths)
        self.final_bn = nn.BatchNorm2d(512 * block.expansion)

    def _shortcut(self, inplanes: int, outplanes: int, stride: int) -> nn.Module:
        # no BN on the shortcut: the next block's bn1 normalises the sum (a Sequential keeps the key downsample.0)
        return nn.Sequential(conv1x1(inplanes, outplanes, stride))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(self.relu(self.final_bn(x))).flatten(1)


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, a bottleneck of two 1x1 layers, sigmoid gates per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class SEBasicBlock(BasicBlock):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **widths):
        super().__init__(inplanes, planes, stride, downsample, **widths)
        self.se = SqueezeExcite(planes * self.expansion)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))  # before the addition (Hu et al., Fig. 3)
        return self.relu(out + identity)


class SEBottleneck(Bottleneck):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **widths):
        super().__init__(inplanes, planes, stride, downsample, **widths)
        self.se = SqueezeExcite(planes * self.expansion)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class WideResNet(nn.Module):
    """WRN-depth-k for 32 px images (Zagoruyko & Komodakis 2016, Table 1; without their optional dropout)."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet's depth is 6n+4 (16, 22, 28, 40), not {depth}")
        n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(3, 16)
        self.inplanes = 16
        self.layer1 = self._make_layer(widths[0], n, stride=1)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.final_bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2], num_classes)
        _init(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            step = stride if i == 0 else 1
            downsample = None
            if step != 1 or self.inplanes != planes:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, step))
            layers.append(PreActBasicBlock(self.inplanes, planes, step, downsample))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.avgpool(self.relu(self.final_bn(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# name: (network class, block, blocks per stage)
VARIANTS = {
    "preact_resnet18": (PreActResNet, PreActBasicBlock, [2, 2, 2, 2]),
    "preact_resnet34": (PreActResNet, PreActBasicBlock, [3, 4, 6, 3]),
    "preact_resnet50": (PreActResNet, PreActBottleneck, [3, 4, 6, 3]),
    "seresnet18": (ResNet, SEBasicBlock, [2, 2, 2, 2]),
    "seresnet34": (ResNet, SEBasicBlock, [3, 4, 6, 3]),
    "seresnet50": (ResNet, SEBottleneck, [3, 4, 6, 3]),
}
WIDE_CIFAR = {"wrn_28_10": (28, 10), "wrn_16_4": (16, 4)}
NAMES = (*VARIANTS, *WIDE_CIFAR)


def variant(name: str, num_classes: int = 1000, cifar_stem: bool = False) -> nn.Module:
    """A variant by name. The WRNs are CIFAR networks already: cifar_stem changes nothing for them."""
    if name in WIDE_CIFAR:
        depth, widen = WIDE_CIFAR[name]
        return WideResNet(depth, widen, num_classes=num_classes)
    net, block, layers = VARIANTS[name]
    return net(block, layers, num_classes=num_classes, cifar_stem=cifar_stem)

