"""ShuffleNet V1 (groups=3) for 32-px images; the last feature map is 4x4 at 32 px."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        first_groups = 1 if in_ch == 24 else groups
        self.groups = first_groups
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return torch.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, groups: int = 3) -> None:
        super().__init__()
        widths, repeats = [240, 480, 960], [4, 8, 4]
        self.conv1 = nn.Conv2d(3, 24, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, in_ch = [], 24
        for out_ch, n in zip(widths, repeats):
            units = []
            for j in range(n):
                units.append(ShuffleUnit(in_ch, out_ch, 2 if j == 0 else 1, groups))
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
