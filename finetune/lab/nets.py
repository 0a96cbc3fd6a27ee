"""The CIFAR networks of He et al. 2015, §4.2 (arXiv:1512.03385): a 3x3 conv of 16 channels, three stages
of n blocks of two 3x3 convs at 16 / 32 / 64 channels (stride 2 at each new stage), global average pooling
and a linear classifier: 6n+2 weighted layers. `residual=False` is the plain net; `residual=True` its twin
with identity shortcuts. Where a stage halves the size and doubles the channels, the shortcut is the
paper's option A (the CIFAR choice): subsample by 2 and pad the new channels with zeros. It has no
parameters, so a plain net and its residual twin have exactly the same weights to learn.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (16, 32, 64)


class CifarBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual, self.stride, self.pad = residual, stride, planes - inplanes

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x  # option A: zeros for the new channels

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x) if self.residual else out)


class CifarNet(nn.Module):
    def __init__(self, depth: int, residual: bool, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), not {depth}")
        n = (depth - 2) // 6
        self.depth, self.residual = depth, residual
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        stages, inplanes = [], WIDTHS[0]
        for i, planes in enumerate(WIDTHS):
            blocks = [CifarBlock(inplanes if b == 0 else planes, planes, 2 if (b == 0 and i > 0) else 1, residual)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for m in self.modules():  # He init (the paper's ref. [13]), the same for both twins
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def name(self) -> str:
        return f"{'resnet' if self.residual else 'plain'}-{self.depth}"

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def weighted_layers(self) -> list[tuple[str, nn.Parameter]]:
        """(name, weight) of the 6n+2 weighted layers from input to output: the gradient-flow plot's x axis."""
        return [(n, p) for n, p in self.named_parameters() if n.endswith("weight") and p.dim() > 1]
