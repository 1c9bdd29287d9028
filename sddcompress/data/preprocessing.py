"""The validation preprocessing of a dataset: one record, the torchvision transform built from it.

`ValidationPreprocessing` (resize, crop, interpolation, mean, std) is defined once, torch-free, in
`sddcompress_export.preprocessing`, so the ONNX metadata and the deployment side read the very same record;
this module adds the torch side: the torchvision validation transform, and the rules the datasets use.
"""

from __future__ import annotations

from typing import Callable

from sddcompress_export.preprocessing import Preprocessing as ValidationPreprocessing
from sddcompress_export.preprocessing import legacy_preprocessing

from ..torchvision_compat import torchvision

T = torchvision.transforms

__all__ = ["ValidationPreprocessing", "from_checkpoint", "large_image_preprocessing", "small_image_preprocessing",
           "validation_transform"]


def validation_transform(spec: ValidationPreprocessing) -> Callable:
    """PIL image -> normalised (3, crop, crop) tensor: Resize(short side) -> CenterCrop -> ToTensor -> Normalize."""
    mode = T.InterpolationMode(spec.interpolation)
    return T.Compose([T.Resize(spec.resize, interpolation=mode, antialias=True), T.CenterCrop(spec.crop),
                      T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def small_image_preprocessing(size: int, mean, std) -> ValidationPreprocessing:
    """CIFAR-style data: resize straight to the input size (a no-op at the native size), no margin to crop."""
    return ValidationPreprocessing(size, size, "bilinear", tuple(mean), tuple(std))


def large_image_preprocessing(size: int, mean, std) -> ValidationPreprocessing:
    """ImageNet-style data: short side to size * 256 / 224 (256 for 224), then the centre size x size."""
    return ValidationPreprocessing(round(size * 256 / 224), size, "bilinear", tuple(mean), tuple(std))


def from_checkpoint(ckpt: dict) -> ValidationPreprocessing:
    """The checkpoint's preprocessing record; older checkpoints only stored `normalization` and an input size."""
    if ckpt.get("preprocessing"):
        return ValidationPreprocessing.from_dict(ckpt["preprocessing"])
    norm = ckpt.get("normalization") or {}
    size = (ckpt.get("model") or {}).get("input_size") or 32
    return legacy_preprocessing(size, norm.get("mean", ()), norm.get("std", ()))
