"""The validation preprocessing of a dataset: one record, the torchvision transform built from it.

`ValidationPreprocessing` (resize, crop, interpolation, mean, std) is defined once, torch-free, in
`sddcompress_export.preprocessing`, so the ONNX metadata and the deployment side read the very same record;
this module adds the torch side: the torchvision validation transform, and the rules the datasets use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from sddcompress_export.preprocessing import Preprocessing as ValidationPreprocessing
from sddcompress_export.preprocessing import legacy_preprocessing

from ..torchvision_compat import torchvision
from .augment import CropFlip

from .bundle import DataBundle

T = torchvision.transforms
SMALL_INPUT_MAX = 64  # up to this size images are resized straight to the input size (no crop margin)

__all__ = ["ValidationPreprocessing", "at_input_size", "from_checkpoint", "large_image_preprocessing",
           "model_preprocessing", "preprocessed_as", "small_image_preprocessing", "validation_transform"]


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


def at_input_size(spec: ValidationPreprocessing, size: int) -> ValidationPreprocessing:
    """`spec` (e.g. what pretrained weights expect at 224 px) for `size`-px inputs: the same mean/std; up to
    64 px the small-image geometry (resize straight to `size`), above it the same resize/crop ratio and
    interpolation."""
    if size == spec.crop:
        return spec
    if size <= SMALL_INPUT_MAX:
        return small_image_preprocessing(size, spec.mean, spec.std)
    return ValidationPreprocessing(round(size * spec.resize / spec.crop), size, spec.interpolation, spec.mean,
                                   spec.std)


def _renormalised(transform: Callable, mean, std) -> Callable:
    """`transform` with each Normalize step using `mean`/`std` (a new Compose; the old one is untouched)."""
    if isinstance(transform, CropFlip):  # small images: crop/flip then its own normalisation
        return replace(transform, mean=tuple(mean), std=tuple(std))
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return transform
    return T.Compose([T.Normalize(list(mean), list(std)) if isinstance(t, T.Normalize) else t for t in steps])


def preprocessed_as(bundle: DataBundle, spec: ValidationPreprocessing) -> DataBundle:
    """`bundle` seen as a model with the preprocessing record `spec` expects (its input size): the validation
    transform built from `spec`, the training augmentation normalised with its mean/std, the record and
    statistics replaced. Unchanged when `spec` is already the bundle's own."""
    spec = at_input_size(spec, bundle.input_size)
    if spec == bundle.preprocessing:
        return bundle
    return replace(bundle, train_transform=_renormalised(bundle.train_transform, spec.mean, spec.std),
                   val_transform=validation_transform(spec), mean=spec.mean, std=spec.std, preprocessing=spec)


def model_preprocessing(ckpt: dict) -> ValidationPreprocessing | None:
    """The preprocessing record of a checkpoint of ours (None for state dicts from elsewhere, which do not say)."""
    if ckpt.get("format") == "foreign" or not (ckpt.get("preprocessing") or (ckpt.get("normalization") or {})
                                                .get("mean")):
        return None
    return from_checkpoint(ckpt)
