"""The calibration/validation tensor file: preprocessed images and labels in one `.npz`.

Written by the torch side (`sddcompress export`), read here so a deployment host can calibrate
and score artefacts with numpy alone. Keys: `calib_images`, `val_images` (N, 3, H, W float32),
`val_labels` (N,) int64, `class_names`, `mean`, `std`, and `calib_labels` (the calibration images' training labels,
which INT8 method picking scores on; older files lack them and are still read).

Whatever reads a tensor file to feed a model goes through `load_for_model`, which checks the file against the
model's metadata: image size, class count and names, a non-empty split for the job, and normalisation. Raw
pixels (uint8, or integers in 0..255) at the model's input size are accepted and normalised on reading with the
model's own mean/std, the last steps of its preprocessing (scale to [0, 1], subtract the mean, divide by the std);
float images must already be normalised for this model.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_write
from .errors import DeployError

if TYPE_CHECKING:
    from .metadata import ModelMetadata

REQUIRED = ("calib_images", "val_images", "val_labels")


@dataclass
class TensorFile:
    calib_images: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: list[str]
    calib_labels: np.ndarray | None = None
    mean: list[float] | None = None  # the normalisation the file says its images have (None: it does not say)
    std: list[float] | None = None
    raw_pixels: bool = False  # read as integer pixels and normalised with the model's mean/std by load_for_model

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
            stats = {k: [float(v) for v in np.ravel(z[k])] if z[k].dtype.kind in "fiu" else None
                     for k in ("mean", "std") if k in z.files}
            tensors = TensorFile(z["calib_images"], z["val_images"], z["val_labels"],
                                 [str(c) for c in np.ravel(z["class_names"])] if "class_names" in z.files else [],
                                 z["calib_labels"] if "calib_labels" in z.files else None, **stats)
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


#: What a split of the tensor file is for, and how a file lacking it is made again.
_SPLITS = {"val": ("val_images", "validation", "--val-size N"),
           "calib": ("calib_images", "calibration", "--calib-size N")}


def load_for_model(path: str | Path, meta: "ModelMetadata", need: tuple[str, ...] = ("val",),
                   check_values: bool = True) -> TensorFile:
    """Read a tensor file to feed the model `meta` describes, refusing one that does not fit it.

    Checked: the image size; that each split in `need` ("val", "calib") has images; the class count and
    names (when both sides name their classes) and the label range; the normalisation. Integer pixels are
    normalised with the model's mean/std (`raw_pixels` is then set). With `check_values`, float images must
    lie in the range the model's normalisation gives pixels in 0..255, and a file that states another
    mean/std is refused; without it (the model's statistics were taken from this very file) only the dtype
    is handled.
    """
    tensors = load_tensor_file(path, meta.input_size)
    for split in need:
        key, what, option = _SPLITS[split]
        if not len(getattr(tensors, key)):
            raise DeployError(f"'{path}' holds no {what} images ({key} is empty); write it again with "
                              f"`sddcompress export {option}` (N > 0)")
    if tensors.class_names and meta.class_names:
        check_class_names(path, tensors.class_names, list(meta.class_names))
    if meta.class_names:
        check_labels(path, tensors.val_labels, len(meta.class_names))
    spec = meta.preprocessing_spec()
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    for key in ("calib_images", "val_images"):
        images = getattr(tensors, key)
        if images.dtype.kind in "iu":
            setattr(tensors, key, normalise_pixels(path, key, images, mean, std))
            tensors.raw_pixels = True
        elif check_values and len(images):
            _check_normalised(path, key, images, mean, std)
    if check_values and not tensors.raw_pixels:
        for name, stated, expected in (("mean", tensors.mean, mean), ("std", tensors.std, std)):
            if stated and (len(stated) != 3 or not np.allclose(stated, expected, rtol=1e-4, atol=1e-6)):
                raise DeployError(f"'{path}' holds images normalised with {name} {_rounded(stated)} but the model "
                                  f"expects {name} {_rounded(expected)}; use the data.npz exported for this model")
    return tensors


def normalise_pixels(path: str | Path, key: str, images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) integer pixels in 0..255 -> float32 model input: / 255, - mean, / std per channel, in float32
    and in that order, as the model's preprocessing does after its resize and crop."""
    if len(images) and (images.min() < 0 or images.max() > 255):
        raise DeployError(f"'{path}': {key} holds integers {int(images.min())}..{int(images.max())}; raw pixels "
                          "must be 0..255 (uint8); store them as uint8 or use the data.npz written by "
                          "`sddcompress export`")
    x = images.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((x - mean[:, None, None]) / std[:, None, None], dtype=np.float32)


def _check_normalised(path: str | Path, key: str, images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Float images must lie where the model's normalisation puts pixels of 0..255 (with room for rounding)."""
    low, high = (0.0 - mean) / std, (1.0 - mean) / std
    slack = 1e-3 * np.maximum(1.0, high - low)
    got_low, got_high = images.min(axis=(0, 2, 3)), images.max(axis=(0, 2, 3))
    if np.any(got_low < low - slack) or np.any(got_high > high + slack):
        raise DeployError(f"'{path}': {key} spans {float(got_low.min()):.4g}..{float(got_high.max()):.4g}, outside "
                          f"{float(low.min()):.4g}..{float(high.max()):.4g} where the model's normalisation puts "
                          "pixels; these images were not preprocessed for this model (raw 0..255 pixels? store "
                          "them as uint8 and they are normalised on reading)")


def check_class_names(path: str | Path, names: list[str], model_names: list[str]) -> None:
    """The file's classes must be the model's, in the same order."""
    if names == model_names:
        return
    if len(names) != len(model_names):
        raise DeployError(f"'{path}' holds {len(names)} classes ({_listed(names)}) but the model has "
                          f"{len(model_names)} ({_listed(model_names)}); use the data.npz exported for this model")
    i = next(i for i, (a, b) in enumerate(zip(names, model_names)) if a != b)
    raise DeployError(f"'{path}' names class {i} '{_short(names[i])}' but the model calls it "
                      f"'{_short(model_names[i])}'; use the data.npz exported for this model")


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _listed(names: list[str], shown: int = 4) -> str:
    head = ", ".join(_short(n, 20) for n in names[:shown])
    return head + (", ..." if len(names) > shown else "")


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]
