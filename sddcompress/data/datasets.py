"""Datasets by name: cifar10, cifar100, imagefolder:PATH and the offline `digits` set."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import UserError
from ..torchvision_compat import torchvision
from .preprocessing import (SMALL_INPUT_MAX, large_image_preprocessing,
                            small_image_preprocessing, validation_transform)
from .augment import CropFlip
from .bundle import DataBundle

T = torchvision.transforms
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_FILES = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DATASET_HELP = "cifar10, cifar100, digits (offline, ships with scikit-learn) or imagefolder:PATH"


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def default_input_size(name: str) -> int:
    return 224 if name.startswith("imagefolder:") else 32


def _small_transforms(size: int, native: int | None, mean, std, flip: bool) -> tuple[Callable, Callable]:
    """Small images: resize (shorter side) and centre-crop to `size` unless already `native` x `native`,
    then (training) seeded pad + random crop + flip (`CropFlip`, shared with the device pipeline)."""
    pre = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)]) if size != native else _identity
    train = CropFlip(pre, pad=max(size // 8, 1), flip=flip, mean=tuple(mean), std=tuple(std))
    return train, validation_transform(small_image_preprocessing(size, mean, std))


def _identity(image):
    return image


def _large_transforms(size: int, mean, std) -> tuple[Callable, Callable]:
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()] + tail)
    return train, validation_transform(large_image_preprocessing(size, mean, std))


def _digits(input_size: int) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx_train, idx_val = train_test_split(np.arange(len(pixels)), test_size=0.2, stratify=d.target,
                                          random_state=0)

    def split(indices) -> ListDataset:
        return ListDataset([(Image.fromarray(pixels[i]).convert("RGB"), int(d.target[i])) for i in indices])

    level = pixels[idx_train] / 255.0
    mean, std = (float(level.mean()),) * 3, (float(level.std()),) * 3
    train_tf, val_tf = _small_transforms(input_size, 8, mean, std, flip=False)
    return DataBundle("digits", split(idx_train), split(idx_val), train_tf, val_tf,
                      [str(n) for n in d.target_names], mean, std, input_size, in_memory=True,
                      preprocessing=small_image_preprocessing(input_size, mean, std))


def in_memory_bundle(name: str, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                     class_names: list[str], mean, std) -> DataBundle:
    """Small images given as arrays -- (N, H, W, 3) uint8 pixels and (N,) labels per split -- with the
    CIFAR-style transforms at their own size; for feeding generated data through the trainer."""
    size = int(train[0].shape[1])

    def split(pixels: np.ndarray, labels: np.ndarray) -> ListDataset:
        return ListDataset([(Image.fromarray(p), int(y)) for p, y in zip(pixels, labels)])

    train_tf, val_tf = _small_transforms(size, size, mean, std, flip=True)
    return DataBundle(name, split(*train), split(*val), train_tf, val_tf, list(class_names), tuple(mean), tuple(std),
                      size, in_memory=True, preprocessing=small_image_preprocessing(size, mean, std))


def _cifar(name: str, root: str, input_size: int, download: bool) -> DataBundle:
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if not download and not (Path(root) / _CIFAR_FILES[name]).is_dir():
        raise UserError(
            f"{name} not found in '{root}': put the extracted '{_CIFAR_FILES[name]}/' folder there "
            "(python version from https://www.cs.toronto.edu/~kriz/cifar.html) or pass --download"
        )
    try:
        train, val = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except (RuntimeError, OSError) as exc:
        what = "download failed (no network?)" if download else "files are incomplete or corrupt"
        raise UserError(f"{name} in '{root}': {what}: {str(exc).splitlines()[0]}") from None
    mean, std = _CIFAR_STATS[name]
    train_tf, val_tf = _small_transforms(input_size, 32, mean, std, flip=True)
    return DataBundle(name, train, val, train_tf, val_tf, list(train.classes), mean, std, input_size,
                      preprocessing=small_image_preprocessing(input_size, mean, std))


def load_image(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}); remove or replace it (train and "
                        "distill can leave it out with --skip-bad-images)") from None


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _image_folder(root: str, input_size: int, skip_bad: bool) -> DataBundle:
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"data dir '{root}' does not exist")
    missing = [s for s in ("train", "val") if not (base / s).is_dir()]
    if missing:
        raise UserError(f"image folder '{root}' needs train/ and val/ subfolders (one folder per class "
                        f"inside each); missing: {', '.join(missing)}")
    splits, skipped = {}, 0
    for s in ("train", "val"):
        try:
            ds = torchvision.datasets.ImageFolder(str(base / s), loader=load_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"image folder '{base / s}': {str(exc).splitlines()[0]}") from None
        if skip_bad:
            good = [(p, y) for p, y in ds.samples if _readable(p)]
            skipped += len(ds.samples) - len(good)
            if not good:
                raise UserError(f"every image in '{base / s}' is unreadable ({len(ds.samples)} skipped); "
                                "--skip-bad-images leaves nothing to train or score: fix or replace the images")
            ds.samples = ds.imgs = good
            ds.targets = [y for _, y in good]
        splits[s] = ds
    if splits["train"].classes != splits["val"].classes:
        raise UserError(f"image folder '{root}': train/ and val/ have different class folders")
    train_tf, val_tf = (_small_transforms(input_size, None, IMAGENET_MEAN, IMAGENET_STD, True)
                        if input_size <= SMALL_INPUT_MAX else _large_transforms(input_size, IMAGENET_MEAN, IMAGENET_STD))
    return DataBundle(f"imagefolder:{root}", splits["train"], splits["val"], train_tf, val_tf,
                      list(splits["train"].classes), IMAGENET_MEAN, IMAGENET_STD, input_size, skipped,
                      preprocessing=(small_image_preprocessing if input_size <= SMALL_INPUT_MAX else large_image_preprocessing)(
                          input_size, IMAGENET_MEAN, IMAGENET_STD))


def readable_samples(bundle: DataBundle) -> dict | None:
    """An image folder's (path, class) samples per split and its skipped count (None for other datasets):
    what one process's --skip-bad-images scan found, to hand to the others (`keep_samples`)."""
    if not hasattr(bundle.train, "samples"):
        return None
    return {"train": list(bundle.train.samples), "val": list(bundle.val.samples), "skipped": bundle.skipped_images}


def keep_samples(bundle: DataBundle, kept: dict | None) -> DataBundle:
    """`bundle` cut to the samples `readable_samples` listed (unchanged for None)."""
    if kept is None:
        return bundle
    for ds, samples in ((bundle.train, kept["train"]), (bundle.val, kept["val"])):
        ds.samples = ds.imgs = [(path, label) for path, label in samples]
        ds.targets = [label for _, label in ds.samples]
    return replace(bundle, skipped_images=kept["skipped"])


def load_dataset(name: str, data_dir: str | None = None, input_size: int | None = None,
                 download: bool = False, skip_bad_images: bool = False) -> DataBundle:
    """Resolve a dataset name to a DataBundle; every failure is a one-line UserError."""
    size = input_size or default_input_size(name)
    if size < 8:
        raise UserError(f"--input-size must be >= 8, got {size}")
    if name == "digits":
        return _digits(size)
    if name in _CIFAR_FILES:
        root = data_dir or os.path.join("data", name)
        return _cifar(name, root, size, download)
    if name.startswith("imagefolder:"):
        return _image_folder(name.split(":", 1)[1], size, skip_bad_images)
    raise UserError(f"unknown dataset '{name}'; use {DATASET_HELP}")
