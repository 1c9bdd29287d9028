"""Per-sample seeded augmentation and a seeded epoch sampler.

Every random draw of an augmentation is seeded from (seed, epoch, sample index), so an image is
augmented the same way whatever the number of processes, workers, or where a resumed run
restarts. That is what makes a 2-process run match a 1-process run and a resumed run match an
uninterrupted one.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index)."""
    h = (seed * _MIX + epoch) * _MIX + index
    return (h ^ (h >> 29)) & 0x7FFF_FFFF_FFFF_FFFF


class SeededTransform(Dataset):
    """Wrap a (PIL image, label) dataset; apply `transform` under an RNG seeded per sample."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(image), label


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset that depends only on (seed, epoch)."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.length, generator=g).tolist())
