"""Large-image folders of JPEGs, decoded and augmented on the training device (`--pipeline jpeg`).

The PIL loader decodes, crops and resizes every 224-px training image in DataLoader workers on the CPU,
which cannot keep a GPU busy. `DeviceJpegImages` reads a batch's files in the main process, decodes them
as one batch with torchvision's GPU JPEG decoder (`torchvision.io.decode_jpeg(..., device=cuda)`), and
applies the random-resized crop, the resize and the flip there.

Each image's crop box and flip are drawn exactly as the PIL pipeline draws them: torchvision's
`RandomResizedCrop.get_params` for the image's size, then the flip's coin, under the CPU generator seeded by
(seed, epoch, index) (`SeededTransform`). So both pipelines augment an image the same way for the same
(seed, epoch, index), whatever the batch it falls in; the pixels differ by the rounding of the decoder and
the resize only. Off a GPU (tests, or `--pipeline jpeg` asked for on a CPU) the images are decoded by PIL in
the main process and everything else is the same code.

Like `DeviceImages`, this is a map-style dataset with `__getitems__`, so the sampler, the split across
processes and resume behave as with the PIL loader.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..torchvision_compat import torchvision
from .augment import sample_seed, to_float
from .datasets import load_image
from .device_pipeline import DeviceBatches
from .preprocessing import SMALL_INPUT_MAX

T = torchvision.transforms
JPEG_SUFFIXES = (".jpg", ".jpeg")

__all__ = ["DeviceJpegImages", "jpeg_pipeline_fits"]


def _steps(transform, kind):
    return next((t for t in getattr(transform, "transforms", ()) if isinstance(t, kind)), None)


def jpeg_pipeline_fits(train: Dataset, transform, input_size: int) -> str | None:
    """None when `train` can use the JPEG pipeline (a folder of .jpg/.jpeg files above SMALL_INPUT_MAX px with
    the random-resized-crop augmentation), else why not (for the one-line error of `--pipeline jpeg`)."""
    if input_size <= SMALL_INPUT_MAX:
        return f"it is for images above {SMALL_INPUT_MAX} px (these are {input_size} px: --pipeline device fits them)"
    samples = getattr(train, "samples", None)
    if samples is None:
        return "it reads image folders (imagefolder:PATH)"
    other = next((path for path, _ in samples if not str(path).lower().endswith(JPEG_SUFFIXES)), None)
    if other is not None:
        return f"every training image must be a JPEG ('{other}' is not)"
    if _steps(transform, T.RandomResizedCrop) is None or _steps(transform, T.Normalize) is None:
        return "it applies the random-resized-crop augmentation of large images"
    return None


def _read_bytes(path: str) -> torch.Tensor:
    with open(path, "rb") as file:
        return torch.frombuffer(bytearray(file.read()), dtype=torch.uint8)


class DeviceJpegImages(DeviceBatches):
    """`train` (an image folder of JPEGs) decoded and augmented per batch on `device`."""

    def __init__(self, train: Dataset, transform, seed: int, device: torch.device | str = "cpu") -> None:
        crop, normalize = _steps(transform, T.RandomResizedCrop), _steps(transform, T.Normalize)
        if crop is None or normalize is None:
            raise UserError("--pipeline jpeg applies the random-resized-crop augmentation of large images; "
                            "use --pipeline loader")
        flip = _steps(transform, T.RandomHorizontalFlip)
        samples = train.samples  # type: ignore[attr-defined]
        super().__init__([label for _, label in samples], seed, normalize.mean, normalize.std, device)
        self.paths = [str(path) for path, _ in samples]
        self.size = list(crop.size)
        self.scale, self.ratio = crop.scale, crop.ratio
        self.flip_probability = flip.p if flip is not None else 0.0

    def _decode(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The images of `indices` as (3, H, W) uint8 tensors on the device: one batched GPU decode on CUDA."""
        if self.device.type == "cuda":
            from torchvision.io import ImageReadMode, decode_jpeg

            data = [_read_bytes(self.paths[i]) for i in indices]
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                for i, one in zip(indices, data):  # name the file that fails
                    try:
                        decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        raise UserError(f"cannot decode JPEG '{self.paths[i]}'; remove or replace it, or train with "
                                        "--pipeline loader --skip-bad-images") from None
                raise
        return [torch.from_numpy(np.array(load_image(self.paths[i]), dtype=np.uint8, copy=True)).permute(2, 0, 1)
                for i in indices]

    def crop_and_flip(self, index: int, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box (top, left, height, width) and flip of sample `index` this epoch: the draws the PIL
        pipeline's RandomResizedCrop and RandomHorizontalFlip make for an image of that size."""
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            box = T.RandomResizedCrop.get_params(torch.empty((1, height, width), dtype=torch.uint8), self.scale,
                                                 self.ratio)
            flip = bool(torch.rand(1) < self.flip_probability) if self.flip_probability else False
        return box, flip

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised batch of `indices`: (B, 3, S, S) float32 and (B,) labels, on the device."""
        indices = [int(i) for i in indices]
        crops = []
        for index, image in zip(indices, self._decode(indices)):
            (top, left, height, width), flip = self.crop_and_flip(index, image.shape[-2], image.shape[-1])
            region = image[:, top:top + height, left:left + width].to(torch.float32)
            resized = T.functional.resize(region, self.size, interpolation=T.InterpolationMode.BILINEAR,
                                          antialias=True)
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
            crops.append(resized.flip(-1) if flip else resized)
        index = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return to_float(torch.stack(crops), self.mean, self.std), self.labels[index]
