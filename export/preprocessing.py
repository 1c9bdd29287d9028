"""The validation preprocessing a model expects, and its numpy + Pillow implementation (no torch).

One `Preprocessing` describes what the training side's validation transform does to a PIL image:
resize the short side to `resize` (Pillow, `interpolation`), centre-crop `crop` x `crop`, scale to [0, 1],
subtract `mean` and divide by `std` per channel. The torch side builds its torchvision transform from the
same object (`sddcompress.data.preprocessing`); the ONNX metadata carries it as a dict, so a deployment
host reproduces the pipeline from the model file alone.

The arithmetic follows torchvision's PIL path step by step (output size rounding, crop offsets, the float32
division by 255, then subtract and divide), so both sides produce the same float32 values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import DeployError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """Validation preprocessing: short-side resize, centre crop, [0, 1] scaling, per-channel normalisation."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize < 1 or self.crop < 1:
            raise DeployError(f"preprocessing sizes must be >= 1 (resize {self.resize}, crop {self.crop})")
        if self.interpolation not in INTERPOLATIONS:
            raise DeployError(f"unknown interpolation '{self.interpolation}'; use one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DeployError(f"preprocessing needs 3 means and 3 positive stds, got {self.mean} / {self.std}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {**values, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Preprocessing":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise DeployError(f"preprocessing metadata is incomplete ({exc})") from None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the short-side resize, rounded exactly as torchvision does."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def apply(self, image) -> np.ndarray:
        """(3, crop, crop) float32 of a PIL image (converted to RGB first)."""
        from PIL import Image

        image = image.convert("RGB")
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, getattr(Image.Resampling, self.interpolation.upper()))
        image = _centre_crop(image, self.crop)
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        x = x.transpose(2, 0, 1)
        x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(x, dtype=np.float32)

    def load(self, path: str) -> np.ndarray:
        """Open an image file and preprocess it; an unreadable file is a DeployError naming it."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                return self.apply(image)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DeployError(f"cannot read image '{path}' ({type(exc).__name__}); pass a PNG/JPEG file") from None


def _centre_crop(image, crop: int):
    """torchvision's CenterCrop on a PIL image: zero-pad if smaller, then crop at the rounded centre."""
    from PIL import Image

    width, height = image.size
    if crop > width or crop > height:
        left, top = max(crop - width, 0) // 2, max(crop - height, 0) // 2
        padded = Image.new("RGB", (max(width, crop), max(height, crop)))
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
        if (width, height) == (crop, crop):
            return image
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def legacy_preprocessing(input_size: int, mean, std) -> Preprocessing:
    """What files written before the preprocessing record was stored meant: the rule the datasets used then
    (up to 64 px: resize to the input size; above: resize to size * 256 / 224, then centre crop)."""
    resize = input_size if input_size <= 64 else round(input_size * 256 / 224)
    return Preprocessing(resize, input_size, "bilinear", tuple(mean) or (0.0,) * 3, tuple(std) or (1.0,) * 3)
