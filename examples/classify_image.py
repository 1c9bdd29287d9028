"""Classify image files with an exported model on a deployment host (numpy, pillow, onnxruntime; no torch).

The ONNX file carries everything needed to preprocess: input size, mean/std and class names.

    python examples/classify_image.py runs/quickstart/student-sdd-dkd/export/model.int8.onnx photo.png [...]
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from sddcompress_export.artifacts import open_artifact


def preprocess(path: str, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """Resize to the model's input size, scale to [0, 1], normalise; (3, size, size) float32.

    The training pipeline resizes small images directly and, for 224-px models, resizes the short side
    to size/0.875 and centre-crops; this example does the direct resize, which matches 32-px-style data.
    """
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    model, meta = open_artifact(argv[0])
    batch = np.stack([preprocess(p, meta.input_size, meta.mean, meta.std) for p in argv[1:]])
    logits = model(batch)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(argv[1:], probs):
        k = int(p.argmax())
        print(f"{path}: {meta.class_names[k]} ({100 * p[k]:.1f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
