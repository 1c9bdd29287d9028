"""The SDD/DKD/CRD papers' own CIFAR students, as their public teacher zoo defines them.

`mobile_half` (MobileNetV2, expansion 6, width 0.5, ending on a 2x2 map at 32 px),
`shufflev1_paper` (ShuffleNetV1 g=3 with a 1x1 stem) and `shufflev2_paper` (ShuffleNetV2 1.0x
with a 1x1 stem). Parameter names follow the zoo's, so its state dicts load unchanged; the
architectures differ from our `mobilenetv2` / `shufflenetv1` / `shufflenetv2` (see the registry).
Each ends with a global average pool module and the classifier, which is what SDD splits on.
"""

from __future__ import annotations

import torch
from torch import nn

from .shufflenetv1 import channel_shuffle


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ExpandDepthwiseProject(nn.Module):
    """MobileNetV2 block; unlike torchvision's it keeps the 1x1 expansion even at ratio 1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


# (expansion, channels at width 1, blocks, first stride); the stem already halves the input
_MOBILE_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))


class MobileHalf(nn.Module):
    """The papers' CIFAR MobileNetV2 (`mobile_half`): total stride 16, a 2x2 last map at 32 px."""

    def __init__(self, num_classes: int, width: float = 0.5) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for expand, base, repeats, stride in _MOBILE_STAGES:
            out_ch = int(base * width)
            stage = []
            for j in range(repeats):
                stage.append(ExpandDepthwiseProject(channels, out_ch, stride if j == 0 else 1, expand))
                channels = out_ch
            self.blocks.append(nn.Sequential(*stage))
        self.conv2 = _conv_bn_relu(channels, 1280, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(torch.flatten(self.avgpool(self.conv2(x)), 1))


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit; `out_ch` is the branch width (the unit's width minus the input's when it
    downsamples and concatenates), the bottleneck a quarter of it."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.stride = stride
        self.first_groups = 1 if in_ch == 24 else groups
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(out)))))
        joined = torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x
        return torch.relu(joined)


class ShuffleV1Paper(nn.Module):
    """The papers' CIFAR ShuffleNetV1 (g=3, 1x1 stem): 4x4 last map at 32 px."""

    def __init__(self, num_classes: int, groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch, stages = 24, []
        for width, repeats in ((240, 4), (480, 8), (960, 4)):
            units = []
            for j in range(repeats):
                units.append(ShuffleV1Unit(in_ch, width - in_ch if j == 0 else width, 2 if j == 0 else 1, groups))
                in_ch = width
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


class ShuffleV2Unit(nn.Module):
    """ShuffleNetV2 unit without downsampling: half the channels pass, half go through the branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x.chunk(2, dim=1)
        branch = torch.relu(self.bn1(self.conv1(branch)))
        branch = torch.relu(self.bn3(self.conv3(self.bn2(self.conv2(branch)))))
        return channel_shuffle(torch.cat([keep, branch], 1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNetV2 downsampling unit: two stride-2 branches (conv1-2 and conv3-5), concatenated."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = out_ch // 2
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 2, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, half, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(in_ch, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2Paper(nn.Module):
    """The papers' CIFAR ShuffleNetV2 1.0x (1x1 stem, no max-pool): 4x4 last map at 32 px."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch, stages = 24, []
        for width, repeats in ((116, 3), (232, 7), (464, 3)):
            stages.append(nn.Sequential(ShuffleV2Down(in_ch, width), *(ShuffleV2Unit(width) for _ in range(repeats))))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_ch, 1024, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1024)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))
