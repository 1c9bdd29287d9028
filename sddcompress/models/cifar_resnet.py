"""CIFAR-style ResNets (3x3 stem, three stages): resnet20/32/56/110, resnet8x4, resnet32x4."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def three_stages(block, widths, n: int) -> tuple[list[nn.Sequential], int]:
    """Three stages of `n` blocks with widths[1:], the 2nd and 3rd halving the resolution; returns
    (stages, output channels)."""
    stages, in_ch = [], widths[0]
    for i, out_ch in enumerate(widths[1:]):
        blocks = []
        for j in range(n):
            blocks.append(block(in_ch, out_ch, 2 if (i > 0 and j == 0) else 1))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return stages, in_ch


class CifarResNet(nn.Module):
    """ResNet for 32-px images; the last feature map is input/4 (8x8 at 32 px)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_ch = three_stages(BasicBlock, widths, n)
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, wide: bool = False):
    widths = (32, 64, 128, 256) if wide else (16, 16, 32, 64)

    def build(num_classes: int) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes)

    return build
