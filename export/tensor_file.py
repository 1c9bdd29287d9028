"""The calibration/validation tensor file: preprocessed images and labels in one `.npz`.

Written by the torch side (`sddcompress export`), read here so a deployment host can calibrate
and score artefacts with numpy alone. Keys: `calib_images`, `val_images` (N, 3, H, W float32),
`val_labels` (N,) int64, `class_names`, `mean`, `std`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError

REQUIRED = ("calib_images", "val_images", "val_labels")


@dataclass
class TensorFile:
    calib_images: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: list[str]

    @property
    def input_size(self) -> int:
        return int(self.val_images.shape[-1])


def save_tensor_file(path: str | Path, calib_images: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                     class_names: list[str], mean, std) -> Path:
    """Write the file atomically (temp + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, calib_images=calib_images.astype(np.float32), val_images=val_images.astype(np.float32),
                        val_labels=val_labels.astype(np.int64), class_names=np.array(class_names),
                        mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    os.replace(tmp, path)
    return path


def load_tensor_file(path: str | Path, input_size: int | None = None) -> TensorFile:
    """Read a tensor file; with `input_size`, its images must be that size (the model's)."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"tensor file '{path}' does not exist; `sddcompress export` writes one (data.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise DeployError(f"'{path}' lacks {', '.join(missing)}; use the data.npz written by "
                                  "`sddcompress export`")
            tensors = TensorFile(z["calib_images"], z["val_images"], z["val_labels"],
                                 [str(c) for c in z["class_names"]] if "class_names" in z.files else [])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DeployError(f"'{path}' is not a readable .npz tensor file ({type(exc).__name__})") from None
    if input_size is not None and tensors.input_size != input_size:
        raise DeployError(f"'{path}' holds {tensors.input_size}px images but the model expects {input_size}px")
    return tensors
