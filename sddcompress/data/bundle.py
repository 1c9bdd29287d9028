"""DataBundle: a dataset's train/val splits with the transforms, statistics and preprocessing that go with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from sddcompress_export.preprocessing import Preprocessing as ValidationPreprocessing


@dataclass
class DataBundle:
    """Train/val splits (PIL image, label) with the transforms and stats that go with them."""

    name: str
    train: Dataset
    val: Dataset
    train_transform: Callable
    val_transform: Callable
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    skipped_images: int = 0
    preprocessing: ValidationPreprocessing | None = None  # what val_transform does, for checkpoints and ONNX
    in_memory: bool = False  # decoded images already in memory: loader workers would only add overhead

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
