"""Per-sample seeded augmentation and a seeded epoch sampler.

Every random draw of an augmentation is a function of (seed, epoch, sample index), so an image is
augmented the same way whatever the number of processes, workers, which pipeline feeds it (PIL
loader or device-resident), or where a resumed run restarts. That is what makes a 2-process run
match a 1-process run and a resumed run match an uninterrupted one.

The small-image augmentation (pad, random crop, horizontal flip) draws its parameters from one
function, `crop_flip_params`, and applies them with one function, `crop_flip`, on a uint8 batch:
the PIL loader calls both on one image at a time, the device-resident pipeline on a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index)."""
    h = (seed * _MIX + epoch) * _MIX + index
    return (h ^ (h >> 29)) & 0x7FFF_FFFF_FFFF_FFFF


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic): a well-mixed hash of each value."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(_MIX)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def crop_flip_params(seed: int, epoch: int, indices: Sequence[int] | np.ndarray, pad: int,
                     flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx) in [0, 2*pad] and flip flags for each sample index, as CPU int64 tensors.

    A pure function of (seed, epoch, index): the one source of augmentation randomness for both
    pipelines."""
    key = _splitmix64(np.array([seed & _U64], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(epoch & _U64))
    h = _splitmix64(key ^ np.asarray(indices, dtype=np.int64).astype(np.uint64))
    span = np.uint64(2 * pad + 1)
    dy = (h % span).astype(np.int64)
    dx = ((h >> np.uint64(21)) % span).astype(np.int64)
    fl = ((h >> np.uint64(42)) & np.uint64(1)).astype(np.int64) if flip else np.zeros_like(dy)
    return torch.from_numpy(dy), torch.from_numpy(dx), torch.from_numpy(fl).bool()


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) batch by `pad`, take the HxW window at (dy, dx) of each image, mirror
    the flagged ones; one gather on whatever device `images` is on."""
    b, c, h, w = images.shape
    if pad == 0 and not bool(flip.any()):
        return images
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    dev = images.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def to_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float32, the same arithmetic as ToTensor + Normalize."""
    x = images.to(torch.float32).div(255)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


@dataclass
class CropFlip:
    """Small-image training transform: deterministic PIL resize/crop to the input size (`pre`),
    then seeded pad + random crop + flip, then normalisation. Call `seeded(image, seed, epoch, index)`."""

    pre: Callable
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def seeded(self, image, seed: int, epoch: int, index: int) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(self.pre(image), dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        dy, dx, fl = crop_flip_params(seed, epoch, [index], self.pad, self.flip)
        out = crop_flip(pixels, dy, dx, fl, self.pad)
        return to_float(out, torch.tensor(self.mean), torch.tensor(self.std))[0]


class SeededTransform(Dataset):
    """Wrap a (PIL image, label) dataset; apply `transform` seeded per (seed, epoch, index).

    A `CropFlip` draws its parameters from `crop_flip_params`; any other transform (e.g. the
    large-image RandomResizedCrop) runs under the CPU generator seeded per sample (CUDA generators
    are left alone)."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if isinstance(self.transform, CropFlip):
            return self.transform.seeded(image, self.seed, self.epoch, index), label
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(image), label


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset that depends only on (seed, epoch)."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.length)
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        return torch.randperm(self.length, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())
