"""Label-scarce training sets: few labelled images, many unlabelled ones for the distillation terms.

Two options shape the training set of a run:

* `--labelled-fraction F`: a fixed, class-stratified subset of the training images keeps its labels;
  every other training image becomes unlabelled. Class c with n_c images keeps floor(F * n_c + 0.5)
  labelled images (F * n_c rounded half up), chosen by a permutation of the class drawn from the run's
  --seed: the same seed gives the same subset, whatever the method, so a CE run and a distillation
  run with the same seed see the same labels; and a smaller F keeps a subset of a larger F's images
  (each class is cut from the same permutation). A fraction that leaves a class with no labelled image
  is refused.
* `--unlabelled PATH`: every image file under PATH (any layout, searched recursively; any size)
  joins the training set without a label.

An unlabelled image carries the label UNLABELLED (-1) through both input pipelines to the objective,
which trains cross-entropy on the labelled images only and the distillation terms on every image
(losses/objective.py). A run without a teacher (--method ce) has nothing to learn from an unlabelled
image, so it trains on the labelled images only (the images' order in the set is kept).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from ..torchvision_compat import torchvision
from .augment import CropFlip
from .bundle import DataBundle
from .datasets import _readable, load_image
from .fraction import _labels

UNLABELLED = -1  # the label of an image whose label a run does not see
# the image suffixes torchvision's ImageFolder reads, so --unlabelled finds what a labelled folder would
IMAGE_SUFFIXES = torchvision.datasets.folder.IMG_EXTENSIONS
_LABEL_SEED_TAG = 0x1ABE11ED  # keeps the labelled subset's draws apart from other uses of --seed


@dataclass(frozen=True)
class LabelSplit:
    """The training set's images by kind: `labelled`, `unlabelled` (all of them), and how many of the
    unlabelled ones came from the --unlabelled folder (`from_folder`)."""

    labelled: int
    unlabelled: int
    from_folder: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"labelled": self.labelled, "unlabelled": self.unlabelled, "from_folder": self.from_folder}


def labelled_indices(labels: np.ndarray, fraction: float, seed: int, class_names: list[str] | None = None
                     ) -> np.ndarray:
    """Sorted indices of the labelled images: floor(fraction * n_c + 0.5) of every class c, drawn with `seed`.

    A UserError (naming the smallest fraction that works) if a class would keep no labelled image."""
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:  # also false for NaN
        raise UserError(f"--labelled-fraction must be > 0 and <= 1, got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    empty = [(int(c), int(n)) for c, n in zip(classes, counts) if math.floor(fraction * n + 0.5) < 1]
    if empty:
        c, n = min(empty, key=lambda cn: cn[1])
        name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        smallest = int(counts.min())
        needed = math.ceil(0.5 / smallest * 1e4) / 1e4  # F * n_min >= 0.5, rounded up to 4 decimals
        raise UserError(f"--labelled-fraction {fraction:g} leaves class '{name}' ({n} training images) without a "
                        f"labelled image; pass --labelled-fraction {needed:g} or more")
    rng = np.random.default_rng([_LABEL_SEED_TAG, seed])
    keep = []
    for c, n in zip(classes, counts):
        members = np.flatnonzero(labels == c)
        keep.append(rng.permutation(members)[:math.floor(fraction * n + 0.5)])
    return np.sort(np.concatenate(keep))


def find_unlabelled_images(folder: str, skip_bad: bool = False) -> tuple[list[str], int]:
    """(sorted paths of the image files under `folder`, number skipped as unreadable).

    Files are found by suffix (IMAGE_SUFFIXES, any case; hidden files and folders skipped) and opened
    once: every file must be an image PIL recognises (with `skip_bad`, every file must decode fully, and
    those that do not are skipped and counted). Any failure is a one-line UserError."""
    root = Path(folder)
    if not root.exists():
        raise UserError(f"--unlabelled '{folder}' does not exist; pass a folder of images")
    if not root.is_dir():
        raise UserError(f"--unlabelled '{folder}' is a file; pass the folder that holds the images")

    def refuse(exc: OSError) -> None:
        raise UserError(f"--unlabelled: cannot list '{exc.filename}' ({exc.strerror}); make it readable or pass "
                        "another folder")

    paths = []
    for current, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [os.path.join(current, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    paths.sort()
    if not paths:
        raise UserError(f"--unlabelled '{folder}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); pass a folder "
                        "of images")
    if skip_bad:
        good = [p for p in paths if _readable(p)]
        if not good:
            raise UserError(f"every image under --unlabelled '{folder}' is unreadable ({len(paths)} skipped); fix "
                            "or replace the images")
        return good, len(paths) - len(good)
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserError(f"--unlabelled: cannot read image '{path}' ({type(exc).__name__}); remove it or pass "
                            "--skip-bad-images") from None
    return paths, 0


class UnlabelledImages(Dataset):
    """Image files as (RGB PIL image, UNLABELLED) samples. With `size`, each image is first brought to
    size x size (shorter side resized, centre crop), as the small-image pipelines expect their input."""

    def __init__(self, paths: list[str], size: int | None = None) -> None:
        self.paths = list(paths)
        T = torchvision.transforms
        self.fit = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)]) if size else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image(self.paths[index])
        return (self.fit(image) if self.fit is not None else image), UNLABELLED


class ScarceLabels(Dataset):
    """`base` (the training split) with only the images in `labelled` keeping their labels, followed by
    `extra` (unlabelled images); `targets` lists every label (UNLABELLED for the others)."""

    def __init__(self, base: Dataset, labels: np.ndarray, labelled: np.ndarray, extra: Dataset | None = None) -> None:
        self.base, self.extra = base, extra
        self.n_base = len(base)  # type: ignore[arg-type]
        kept = np.full(self.n_base, UNLABELLED, dtype=np.int64)
        kept[labelled] = np.asarray(labels)[labelled]
        self.targets = kept.tolist() + [UNLABELLED] * (len(extra) if extra is not None else 0)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if index < self.n_base:
            image, _ = self.base[index]
            return image, self.targets[index]
        return self.extra[index - self.n_base]  # type: ignore[index]


def split_labels(bundle: DataBundle, fraction: float, unlabelled: str | None, seed: int, uses_teacher: bool,
                 skip_bad: bool = False) -> tuple[DataBundle, LabelSplit]:
    """The bundle's training split for --labelled-fraction and --unlabelled, and its LabelSplit.

    With a teacher: every training image, those outside the labelled subset as UNLABELLED, then the
    folder's images. Without one (CE): the labelled subset only (the caller refuses --unlabelled)."""
    n = len(bundle.train)  # type: ignore[arg-type]
    if fraction == 1.0 and not unlabelled:
        return bundle, LabelSplit(n, 0)
    labels = _labels(bundle.train)
    labelled = labelled_indices(labels, fraction, seed, bundle.class_names)
    if not uses_teacher:
        train = bundle.train if len(labelled) == n else Subset(bundle.train, labelled.tolist())
        return replace(bundle, train=train), LabelSplit(len(labelled), 0)
    extra, skipped = None, 0
    if unlabelled:
        paths, skipped = find_unlabelled_images(unlabelled, skip_bad)
        extra = UnlabelledImages(paths, bundle.input_size if isinstance(bundle.train_transform, CropFlip) else None)
    train = ScarceLabels(bundle.train, labels, labelled, extra)
    from_folder = len(extra) if extra is not None else 0
    split = LabelSplit(len(labelled), n - len(labelled) + from_folder, from_folder)
    return replace(bundle, train=train, skipped_images=bundle.skipped_images + skipped), split


def matched_steps(data: str, input_size: int | None, fraction: float, batch_size: int) -> tuple[int, int]:
    """(optimiser steps per epoch over every training image of `data`, over its labelled ones at
    --labelled-fraction `fraction`), whole batches: a CE run trains ceil(epochs * first / second) epochs
    to take as many steps as a distillation run. The per-class counts do not depend on the seed."""
    from .datasets import load_dataset

    bundle = load_dataset(data, input_size=input_size)
    labels = _labels(bundle.train)
    labelled = len(labelled_indices(labels, fraction, seed=0, class_names=bundle.class_names))
    return len(labels) // batch_size, labelled // batch_size


def describe_split(split: LabelSplit, fraction: float, seed: int) -> str:
    """One line for the run's log."""
    text = f"labels: {split.labelled} training images labelled"
    if fraction < 1.0:
        text += f" ({fraction:g} of each class, drawn with seed {seed})"
    if split.unlabelled:
        text += f"; {split.unlabelled} unlabelled"
        if split.from_folder:
            text += f" ({split.from_folder} from --unlabelled)"
        text += " feed the distillation terms only"
    return text
