"""examples/classify_image.py preprocesses a file exactly as the pipeline does, from the ONNX metadata alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from sddcompress_export.metadata import read_metadata
from sddcompress_export.tensor_file import load_tensor_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classify_image.py"


def test_classify_image_matches_pipeline_preprocessing(exported, tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import classify_image
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    from sddcompress.data import load_dataset

    onnx_path = exported["artifacts"]["onnx"]["path"]
    meta = read_metadata(onnx_path)
    val = load_dataset("digits", input_size=meta.input_size).val
    tensors = load_tensor_file(exported["tensor_file"]["path"])
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        val[i][0].save(path)
        paths.append(str(path))
        x = classify_image.preprocess(str(path), meta.input_size, meta.mean, meta.std)
        np.testing.assert_allclose(x, tensors.val_images[i], atol=1e-5)
    done = subprocess.run([sys.executable, str(EXAMPLE), onnx_path, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split(": ")[1].split()[0] in meta.class_names for line in lines)
