"""Score an exported artefact on a dataset's validation split (the images `sddcompress eval` uses), preprocessed
as the artefact's own preprocessing metadata says, not with the dataset's statistics."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from sddcompress_export.artifacts import open_artifact
from sddcompress_export.classifier_metrics import score, score_batches
from sddcompress_export.tensor_file import load_for_model

from ..data import SeededTransform, load_dataset
from ..data.preprocessing import preprocessed_as
from ..errors import UserError


def evaluate_artifact(path: str, data: str | None, data_dir: str | None, batch_size: int,
                      threads: int | None = None) -> dict:
    if batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    model, meta = open_artifact(path, threads=threads)
    if data is None:
        guess = Path(path).parent / "data.npz"
        if not guess.is_file():
            raise UserError(f"pass --data (a dataset or a data.npz); there is no {guess}")
        data = str(guess)
    if data.endswith(".npz"):
        tensors = load_for_model(data, meta, need=("val",))
        raw = tensors.raw_pixels
        note = {"input": "integer pixels, normalised on reading with the model's mean/std"} if raw else {}
        return {"data": data, **score(model, tensors.val_images, tensors.val_labels, batch_size), **note}
    bundle = load_dataset(data, data_dir, meta.input_size)
    if bundle.num_classes != len(meta.class_names):
        raise UserError(f"'{path}' has {len(meta.class_names)} classes but {data} has {bundle.num_classes}")
    if meta.preprocessing or meta.mean:  # files that say nothing get the dataset's own preprocessing
        bundle = preprocessed_as(bundle, meta.preprocessing_spec())
    loader = DataLoader(SeededTransform(bundle.val, bundle.val_transform), batch_size=batch_size)
    return {"data": data, **score_batches(model, ((x.numpy(), y.numpy()) for x, y in loader))}
