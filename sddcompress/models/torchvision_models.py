"""Torchvision classifiers by name, with a small-input stem for 32-px data where it matters.

Torchvision's ImageNet nets downsample by 32, so a 32-px image ends as a 1x1 map: no regions
left for SDD. For the families the SDD paper pairs use (ResNet, MobileNetV2, ShuffleNetV2) the
small-input variant drops the early downsampling so the total stride is 8 (4x4 at 32 px),
the same recipe CIFAR versions of these nets use.
"""

from __future__ import annotations

from torch import nn

from ..data.preprocessing import SMALL_INPUT_MAX  # inputs up to this size get the small-input stem
from ..torchvision_compat import torchvision



def classification_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _small_stem_resnet(model: nn.Module) -> None:
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _small_stem_mobilenet_v2(model: nn.Module) -> None:
    model.features[0][0].stride = (1, 1)
    # the first inverted-residual block that downsamples: make its depthwise conv stride 1
    for block in model.features[1:]:
        depthwise = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        if depthwise and depthwise[0].stride == (2, 2):
            depthwise[0].stride = (1, 1)
            return


def _small_stem_shufflenet_v2(model: nn.Module) -> None:
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()


def _adapter(name: str):
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return _small_stem_resnet
    if name == "mobilenet_v2":
        return _small_stem_mobilenet_v2
    if name.startswith("shufflenet_v2"):
        return _small_stem_shufflenet_v2
    return None


def build_torchvision(name: str, num_classes: int, input_size: int, small_input: bool = True,
                      **kwargs) -> nn.Module:
    """Build torchvision model `name` (random init); adapt its stem for small inputs unless told not to."""
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    adapt = _adapter(name)
    if small_input and adapt is not None and input_size <= SMALL_INPUT_MAX:
        adapt(model)
    return model
