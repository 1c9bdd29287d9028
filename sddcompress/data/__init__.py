"""Datasets, transforms and the seeded sampling that keeps runs reproducible."""

from .augment import EpochShuffleSampler, SeededTransform, sample_seed
from .bundle import DataBundle
from .datasets import DATASET_HELP, load_dataset, load_image

__all__ = ["DATASET_HELP", "DataBundle", "EpochShuffleSampler", "SeededTransform", "load_dataset", "load_image",
           "sample_seed"]
