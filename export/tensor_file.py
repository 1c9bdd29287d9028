"""The calibration/validation tensor file: preprocessed images and labels in one `.npz`.

Written by the torch side (`sddcompress export`), read here so a deployment host can calibrate
and score artefacts with numpy alone. Keys: `calib_images`, `val_images` (N, 3, H, W float32),
`val_labels` (N,) int64, `class_names`, `mean`, `std`, and `calib_labels` (the calibration images' training labels,
which INT8 method picking scores on; older files lack them and are still read).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import DeployError

REQUIRED = ("calib_images", "val_images", "val_labels")


@dataclass
class TensorFile:
    calib_images: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: list[str]
    calib_labels: np.ndarray | None = None

    @property
    def input_size(self) -> int:
        return int(self.val_images.shape[-1])


def save_tensor_file(path: str | Path, calib_images: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                     class_names: list[str], mean, std, calib_labels: np.ndarray | None = None) -> Path:
    """Write the file atomically (temp + rename)."""
    arrays = dict(calib_images=calib_images.astype(np.float32), val_images=val_images.astype(np.float32),
                  val_labels=val_labels.astype(np.int64), class_names=np.array(class_names),
                  mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
                  **({} if calib_labels is None else {"calib_labels": np.asarray(calib_labels, np.int64)}))

    def write(temp: Path) -> None:
        with open(temp, "wb") as f:  # a file object: np.savez would append .npz to a name lacking it
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def load_tensor_file(path: str | Path, input_size: int | None = None) -> TensorFile:
    """Read a tensor file; with `input_size`, its images must be that size (the model's)."""
    path = Path(path)
    if path.is_dir():
        raise DeployError(f"tensor file '{path}' is a directory; pass the data.npz file inside it")
    if not path.is_file():
        raise DeployError(f"tensor file '{path}' does not exist; `sddcompress export` writes one (data.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise DeployError(f"'{path}' lacks {', '.join(missing)}; use the data.npz written by "
                                  "`sddcompress export`")
            tensors = TensorFile(z["calib_images"], z["val_images"], z["val_labels"],
                                 [str(c) for c in z["class_names"]] if "class_names" in z.files else [],
                                 z["calib_labels"] if "calib_labels" in z.files else None)
    except PermissionError:
        raise DeployError(f"tensor file '{path}' cannot be read (permission denied); fix its permissions") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DeployError(f"'{path}' is not a readable .npz tensor file ({type(exc).__name__}); use the data.npz "
                          "written by `sddcompress export`") from None
    _check_shapes(path, tensors, input_size)
    return tensors


def _check_shapes(path: Path, t: TensorFile, input_size: int | None) -> None:
    """Images are (N, 3, S, S) numbers, labels (N,) integers matching the validation images."""
    for name in ("calib_images", "val_images"):
        images = getattr(t, name)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or \
                images.dtype.kind not in "fiu":
            raise DeployError(f"'{path}': {name} has shape {images.shape} ({images.dtype}); expected N x 3 x S x S "
                              "numbers; use the data.npz written by `sddcompress export`")
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise DeployError(f"'{path}': {name} holds NaN/inf pixel values; export the tensor file again")
    sizes = {int(t.calib_images.shape[-1]), int(t.val_images.shape[-1])} if len(t.calib_images) else \
        {int(t.val_images.shape[-1])}
    if len(sizes) > 1:
        raise DeployError(f"'{path}': calib_images and val_images differ in size ({sorted(sizes)} px); use the "
                          "data.npz written by `sddcompress export`")
    if t.val_labels.ndim != 1 or len(t.val_labels) != len(t.val_images) or t.val_labels.dtype.kind not in "iu":
        raise DeployError(f"'{path}': val_labels has shape {t.val_labels.shape} ({t.val_labels.dtype}) for "
                          f"{len(t.val_images)} validation images; expected one integer label per image")
    if input_size is not None and t.input_size != input_size:
        raise DeployError(f"'{path}' holds {t.input_size}px images but the model expects {input_size}px")


def check_labels(path: str | Path, labels: np.ndarray, num_classes: int) -> None:
    """Labels must be class indices of a model with `num_classes` outputs."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DeployError(f"'{path}': val_labels range {int(labels.min())}..{int(labels.max())} but the model has "
                          f"{num_classes} classes (0..{num_classes - 1}); use the data.npz exported for this model")
