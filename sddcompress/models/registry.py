"""The model registry: every name a user can type, and how each one is built."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import UserError
from . import cifar_resnet, vgg, wrn
from .paper_cifar import MobileHalf, ShuffleV1Paper, ShuffleV2Paper
from .shufflenetv1 import ShuffleNetV1
from .timm_models import build_timm
from ..data.preprocessing import SMALL_INPUT_MAX
from .torchvision_models import build_torchvision, classification_names


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    description: str
    build: Callable[[int, int], nn.Module]  # (num_classes, input_size) -> model
    torchvision_name: str | None = None  # the torchvision model with the same weights at large inputs


def _fixed(builder: Callable[[int], nn.Module]) -> Callable[[int, int], nn.Module]:
    return lambda num_classes, input_size: builder(num_classes)


def _tv(name: str, small_kwargs: dict | None = None) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, input_size: int) -> nn.Module:
        kwargs = small_kwargs if (small_kwargs and input_size <= SMALL_INPUT_MAX) else {}
        return build_torchvision(name, num_classes, input_size, **kwargs)

    return build


_PAPER: list[ModelEntry] = [
    *(ModelEntry(f"resnet{d}", "cifar-resnet", f"CIFAR ResNet-{d} (16/32/64 channels)", _fixed(cifar_resnet.resnet(d)))
      for d in (20, 32, 56, 110)),
    ModelEntry("resnet8x4", "cifar-resnet", "CIFAR ResNet-8, 4x wider (32..256 channels)", _fixed(cifar_resnet.resnet(8, wide=True))),
    ModelEntry("resnet32x4", "cifar-resnet", "CIFAR ResNet-32, 4x wider (32..256 channels)", _fixed(cifar_resnet.resnet(32, wide=True))),
    *(ModelEntry(f"wrn_{d}_{k}", "wrn", f"Wide ResNet depth {d}, widen {k}", _fixed(wrn.wrn(d, k)))
      for d, k in ((16, 2), (40, 1), (40, 2))),
    *(ModelEntry(v, "vgg", f"{v.upper()} with batch norm, 4x4 last map at 32 px", _fixed(vgg.vgg(v)))
      for v in ("vgg8", "vgg11", "vgg13")),
    ModelEntry("shufflenetv1", "shufflenet", "ShuffleNetV1 g=3 (small-input stem)", _fixed(ShuffleNetV1)),
    ModelEntry("mobilenetv2", "torchvision", "MobileNetV2: width 0.5 stride-8 variant at <=64 px, torchvision mobilenet_v2 above",
               _tv("mobilenet_v2", {"width_mult": 0.5}), "mobilenet_v2"),
    ModelEntry("shufflenetv2", "torchvision", "ShuffleNetV2 1.0x: stride-8 variant at <=64 px, torchvision above",
               _tv("shufflenet_v2_x1_0"), "shufflenet_v2_x1_0"),
    ModelEntry("resnet50", "torchvision", "ResNet-50: 3x3 stem, no max-pool at <=64 px (the teacher zoo's CIFAR "
               "ResNet50), torchvision resnet50 above", _tv("resnet50"), "resnet50"),
    # the papers' own CIFAR students (teacher-zoo architectures and parameter names)
    ModelEntry("mobile_half", "paper-cifar", "The papers' CIFAR MobileNetV2 (x0.5, 2x2 last map at 32 px)",
               _fixed(MobileHalf)),
    ModelEntry("shufflev1_paper", "paper-cifar", "The papers' CIFAR ShuffleNetV1 g=3 (1x1 stem, 4x4 last map)",
               _fixed(ShuffleV1Paper)),
    ModelEntry("shufflev2_paper", "paper-cifar", "The papers' CIFAR ShuffleNetV2 1.0x (1x1 stem, 4x4 last map)",
               _fixed(ShuffleV2Paper)),
]
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _PAPER}


def list_models() -> list[ModelEntry]:
    """Every named model: the SDD paper's zoo, then torchvision's classifiers."""
    entries = list(REGISTRY.values())
    for name in classification_names():
        if name not in REGISTRY:
            entries.append(ModelEntry(name, "torchvision", "torchvision classifier", _tv(name)))
    return entries


def torchvision_name(name: str) -> str | None:
    """The torchvision model behind registry name `name` at large inputs (None: not a torchvision model)."""
    if name in REGISTRY:
        return REGISTRY[name].torchvision_name
    return name if name in classification_names() else None


def build_model(name: str, num_classes: int, input_size: int = 32, imagenet_stem: bool = False) -> nn.Module:
    """Build model `name` with `num_classes` outputs for square inputs of `input_size` px.

    `imagenet_stem`: a torchvision network exactly as published (the layout its ImageNet weights
    fit) at every input size, never the small-input variant; used with pretrained weights.
    """
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    if name.startswith("timm/"):
        return build_timm(name[5:], num_classes)
    if imagenet_stem:
        tv_name = torchvision_name(name)
        if tv_name is None:
            raise UserError(f"'{name}' is not a torchvision network; only those (and timm/NAME) have ImageNet "
                            "weights")
        return build_torchvision(tv_name, num_classes, input_size, small_input=False)
    if name in REGISTRY:
        return REGISTRY[name].build(num_classes, input_size)
    tv_names = classification_names()
    if name in tv_names:
        return build_torchvision(name, num_classes, input_size)
    close = difflib.get_close_matches(name, list(REGISTRY) + tv_names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown model '{name}'.{hint} Run `sddcompress models` for the list.")
