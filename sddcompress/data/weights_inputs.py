"""Images as pretrained weights expect them: their mean/std, and at large inputs their resize and crop.

A network fine-tuned from ImageNet weights keeps working only if it sees images normalised like its
pretraining data; a CIFAR dataset's own statistics would shift every activation. Small inputs
(<= 64 px) keep the dataset's resize-to-size geometry; larger ones take the weights' short-side
resize ratio and interpolation before the centre crop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..torchvision_compat import torchvision
from .datasets import DataBundle

T = torchvision.transforms
SMALL_INPUT_MAX = 64


def _renormalised(transform: Callable, mean, std) -> Callable:
    """`transform` with every Normalize step using `mean`/`std` (a new Compose; the old one is untouched)."""
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return transform
    return T.Compose([T.Normalize(list(mean), list(std)) if isinstance(t, T.Normalize) else t for t in steps])


def as_weights_expect(bundle: DataBundle, expected) -> DataBundle:
    """`bundle` with its transforms and recorded statistics switched to what `expected` (resize, crop,
    interpolation, mean, std; see models.pretrained.WeightsPreprocessing) describes."""
    size = bundle.input_size
    mean, std = tuple(float(m) for m in expected.mean), tuple(float(s) for s in expected.std)
    train = _renormalised(bundle.train_transform, mean, std)
    if size <= SMALL_INPUT_MAX:
        val = _renormalised(bundle.val_transform, mean, std)
        resize, interpolation = size, "bilinear"
    else:
        resize, interpolation = round(size * expected.resize / expected.crop), expected.interpolation
        val = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode(interpolation), antialias=True),
                         T.CenterCrop(size), T.ToTensor(), T.Normalize(list(mean), list(std))])
    from .preprocessing import ValidationPreprocessing

    return replace(bundle, train_transform=train, val_transform=val, mean=mean, std=std,
                   preprocessing=ValidationPreprocessing(resize, size, interpolation, mean, std))
