"""Preprocess a dataset's images once into the `.npz` tensor file the torch-free stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sddcompress_export.tensor_file import save_tensor_file

from ..data import DataBundle, SeededTransform


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


def labelled_splits(bundle: DataBundle, calib_size: int, val_size: int | None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(calibration images, validation images, validation labels, calibration labels).

    Calibration: `calib_size` training images drawn with a fixed seed, preprocessed like validation
    images (no augmentation). Validation: the first `val_size` validation images (all if None).
    """
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(bundle.train), generator=g)[: max(calib_size, 0)].tolist()
    val_idx = range(len(bundle.val) if val_size is None else min(val_size, len(bundle.val)))
    calib, calib_labels = preprocess(bundle.train, bundle.val_transform, calib_idx)
    val, labels = preprocess(bundle.val, bundle.val_transform, val_idx)
    return calib, val, labels, calib_labels


def preprocessed_splits(bundle: DataBundle, calib_size: int, val_size: int | None,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration images, validation images, validation labels); see `labelled_splits`."""
    return labelled_splits(bundle, calib_size, val_size, seed)[:3]


def write_tensor_file(bundle: DataBundle, path: str | Path, calib_size: int, val_size: int | None,
                      seed: int = 0) -> Path:
    calib, val, labels, calib_labels = labelled_splits(bundle, calib_size, val_size, seed)
    return save_tensor_file(path, calib, val, labels, list(bundle.class_names), bundle.mean, bundle.std,
                            calib_labels=calib_labels)
