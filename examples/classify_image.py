"""Classify image files with an exported model on a deployment host (numpy, pillow, onnxruntime; no torch).

The ONNX file carries everything needed to preprocess: the validation transform (short-side resize,
interpolation, centre crop, mean/std) and the class names, so the result matches the training side's
validation preprocessing exactly, at 32 px as at 224 px.

    python examples/classify_image.py runs/quickstart/student-sdd-dkd/export/model.int8.onnx photo.png [...]
"""

from __future__ import annotations

import sys

import numpy as np

from sddcompress_export.artifacts import open_artifact
from sddcompress_export.errors import DeployError
from sddcompress_export.preprocessing import Preprocessing


def preprocess(path: str, preprocessing: Preprocessing) -> np.ndarray:
    """(3, crop, crop) float32 of an image file, exactly as the training side's validation transform."""
    return preprocessing.load(path)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    try:
        model, meta = open_artifact(argv[0])
        prep = meta.preprocessing_spec()
        batch = np.stack([preprocess(p, prep) for p in argv[1:]])
    except DeployError as exc:
        sys.exit(f"error: {exc}")
    logits = model(batch)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(argv[1:], probs):
        k = int(p.argmax())
        print(f"{path}: {meta.class_names[k]} ({100 * p[k]:.1f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
