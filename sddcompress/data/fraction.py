"""A fixed, class-stratified fraction of a training split (students that see fewer labels)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from .bundle import DataBundle

SUBSET_SEED = 0  # the same images for every run seed and method, so their results pair up


def _labels(ds: Dataset) -> np.ndarray:
    """The label of every sample of `ds`, without loading images where the dataset lists its labels
    (`targets`, a Subset of such a dataset, a ListDataset's in-memory items)."""
    if isinstance(ds, Subset):
        return _labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    targets = getattr(ds, "targets", None)
    if targets is None:
        items = getattr(ds, "items", None)
        pairs = items if isinstance(items, list) else (ds[i] for i in range(len(ds)))  # type: ignore[arg-type]
        targets = [label for _, label in pairs]
    return np.asarray(targets)


def fraction_indices(labels: np.ndarray, fraction: float, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of round(fraction * n_c) (at least 1) random samples of every class c."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--train-fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.append(rng.permutation(members)[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(keep))


def take_train_fraction(bundle: DataBundle, fraction: float) -> DataBundle:
    """The bundle with its train split cut to `fraction` of each class (val untouched)."""
    if fraction == 1.0:
        return bundle
    indices = fraction_indices(_labels(bundle.train), fraction)
    return replace(bundle, train=Subset(bundle.train, indices.tolist()))
