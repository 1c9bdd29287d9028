"""The device-resident input pipeline for small images that fit in memory (CIFAR, digits, small folders).

The training images are decoded and brought to the input size once (the deterministic part of the
small-image transform, `CropFlip.pre`), held as one uint8 tensor on the training device, and each
batch is augmented there in one gather: pad + random crop + flip with the parameters of
`crop_flip_params(seed, epoch, index)`, then normalised -- the very functions the PIL loader applies
to one image at a time, so both pipelines give the same tensors for the same (seed, epoch, index).

`DeviceImages` is a map-style dataset with `__getitems__`: a DataLoader (and Accelerate's sharding
of it across processes) hands it a whole batch of indices and gets the batch back, already on the
device. So the sampler, the split across processes, skipping batches on resume and the end of an
epoch behave exactly as with the PIL loader.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .augment import CropFlip, crop_flip, crop_flip_params, to_float
from .preprocessing import SMALL_INPUT_MAX

# at most this many bytes of uint8 training images are held on the device
DEVICE_BYTES_LIMIT = 4 << 30

__all__ = ["DEVICE_BYTES_LIMIT", "DeviceBatches", "DeviceImages", "device_pipeline_fits", "passthrough_batch"]


def device_pipeline_fits(train: Dataset, transform, input_size: int) -> bool:
    """Whether `train` can use the device pipeline: small-image augmentation and at most DEVICE_BYTES_LIMIT."""
    return isinstance(transform, CropFlip) and len(train) * 3 * input_size * input_size <= DEVICE_BYTES_LIMIT


def passthrough_batch(batch):
    """collate_fn for a `DeviceBatches` dataset: `__getitems__` already returns the (images, labels) batch."""
    return batch


class DeviceBatches(Dataset):
    """A training set whose `__getitems__(indices)` returns the augmented, normalised batch on the device:
    the labels, the seed and epoch of the augmentation, and the normalisation, held on that device."""

    def __init__(self, labels: Sequence[int], seed: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.labels = torch.tensor([int(label) for label in labels], dtype=torch.long, device=self.device)
        self.seed, self.epoch = seed, 0
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation, like `SeededTransform.set_epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([index])
        return images[0], int(labels[0])


class DeviceImages(DeviceBatches):
    """`train` (a dataset of (PIL image or HxWx3 array, label)) as a uint8 tensor on `device`, augmented per batch.

    `set_epoch(e)` selects the epoch's augmentation, like `SeededTransform.set_epoch`."""

    def __init__(self, train: Dataset, transform: CropFlip, seed: int, device: torch.device | str = "cpu") -> None:
        if not isinstance(transform, CropFlip):
            raise UserError(f"the device pipeline needs small images (input size <= {SMALL_INPUT_MAX} px) with crop/flip "
                            "augmentation; use --pipeline loader")
        pixels, labels = [], []
        for i in range(len(train)):  # type: ignore[arg-type]
            image, label = train[i]
            array = np.array(transform.pre(image), dtype=np.uint8, copy=True)
            if array.ndim == 2:
                array = np.repeat(array[:, :, None], 3, axis=2)
            pixels.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))
            labels.append(int(label))
        super().__init__(labels, seed, transform.mean, transform.std, device)
        self.pixels = torch.stack(pixels).to(self.device)  # (N, 3, H, W) uint8
        self.pad, self.flip = transform.pad, transform.flip

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised batch of `indices`: (B, 3, H, W) float32 and (B,) labels, on the device."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        dy, dx, flip = crop_flip_params(self.seed, self.epoch, index.numpy(), self.pad, self.flip)
        index = index.to(self.device)
        images = crop_flip(self.pixels[index], dy, dx, flip, self.pad)
        return to_float(images, self.mean, self.std), self.labels[index]
