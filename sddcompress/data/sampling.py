"""Which validation images are scored: a class-stratified sample, not the first N of a folder sorted by class."""

from __future__ import annotations

import numpy as np


def stratified_indices(labels: np.ndarray | list[int], size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `size` items with the classes as evenly represented as they can be.

    Classes are taken in turn (each in a seeded random order) until `size` items are chosen, so an
    image folder sorted by class still gives every class its share. `size=None` or >= len: everything.
    """
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        for members in per_class:
            if depth < len(members) and len(chosen) < size:
                chosen.append(int(members[depth]))
        depth += 1
    return np.sort(np.array(chosen, dtype=np.int64))


def dataset_labels(dataset) -> np.ndarray:
    """Labels of a (PIL image, label) dataset without decoding images where the dataset keeps them."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets)
    items = getattr(dataset, "items", None)
    if items is not None:
        return np.asarray([label for _, label in items])
    return np.asarray([dataset[i][1] for i in range(len(dataset))])
