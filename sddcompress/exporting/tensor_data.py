"""Preprocess a dataset's images once into the `.npz` tensor file the torch-free stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sddcompress_export.tensor_file import save_tensor_file

from ..data import DataBundle, SeededTransform
from ..data.sampling import dataset_labels, stratified_indices


def preprocess(base, transform, indices: Iterable[int], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (validation-transform) tensors and labels of base[indices]."""
    loader = DataLoader(SeededTransform(Subset(base, list(indices)), transform), batch_size=batch_size)
    images, labels = [], []
    for x, y in loader:
        images.append(x.numpy())
        labels.append(np.asarray(y))
    if not images:
        return np.zeros((0, 3, 1, 1), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int64)


def calibration_indices(bundle: DataBundle, calib_size: int, seed: int = 0) -> list[int]:
    """The indices into `bundle.train` of the `calib_size` calibration images, drawn with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(bundle.train), generator=g)[: max(calib_size, 0)].tolist()


def calibration_split(bundle: DataBundle, calib_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of `calib_size` training images drawn with a fixed seed, preprocessed like validation
    images (no augmentation): the images INT8 is calibrated on, wherever the chain is run from."""
    return preprocess(bundle.train, bundle.val_transform, calibration_indices(bundle, calib_size, seed))


def write_tensor_file(bundle: DataBundle, path: str | Path, calib_size: int, val_size: int | None,
                      seed: int = 0) -> Path:
    """The tensor file: `calibration_split` and `val_size` validation images (all if None), a class-stratified
    sample in dataset order (an image folder is sorted by class: its first 500 images of ImageNet hold 10
    classes)."""
    calib, calib_labels = calibration_split(bundle, calib_size, seed)
    val, labels = preprocess(bundle.val, bundle.val_transform,
                             stratified_indices(dataset_labels(bundle.val), val_size, seed).tolist())
    return save_tensor_file(path, calib, val, labels, list(bundle.class_names), bundle.mean, bundle.std,
                            calib_labels=calib_labels)
