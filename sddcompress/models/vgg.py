"""VGG with batch norm for 32-px images (vgg8, vgg11, vgg13).

Only three max-pools, so the last feature map is 4x4 at 32 px: large enough for SDD's 4x4 scale
(the classic CIFAR VGG pools down to 2x2 and could not be split into 16 regions).
"""

from __future__ import annotations

import torch
from torch import nn

# convolutions per stage; a 2x2 max-pool follows each of the first three stages
STAGES = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(nn.Module):
    def __init__(self, stages: list[list[int]], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, stage in enumerate(stages):
            for out_ch in stage:
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg(name: str):
    def build(num_classes: int) -> CifarVGG:
        return CifarVGG(STAGES[name], num_classes)

    return build
