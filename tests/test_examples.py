"""Preprocessing travels with the model: the torch-free side reproduces the training side's validation transform.

Equality is asserted bit for bit (atol 0): both sides call Pillow's resize with the same size and filter
(torchvision's Resize on a PIL image is `Image.resize`; its `antialias` flag is moot there), crop the same
pixels, and then do the same element-wise float32 operations (x / 255, - mean, / std) with no reduction,
so there is no summation order or thread count that could make them differ.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sddcompress_export.metadata import ModelMetadata, read_metadata
from sddcompress_export.preprocessing import Preprocessing
from sddcompress_export.tensor_file import load_tensor_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classify_image.py"


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A non-square RGB image with smooth gradients and sharp noise (exercises the resize filter)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    pixels = np.clip(smooth + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("size,source,want_resize", [(32, (45, 37), 32), (224, (300, 260), 256),
                                                     (224, (250, 333), 256), (32, (20, 28), 32)])
def test_deploy_preprocessing_equals_torch_validation_transform(tmp_path, size, source, want_resize):
    from sddcompress.data.preprocessing import (large_image_preprocessing, small_image_preprocessing,
                                                validation_transform)

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = (small_image_preprocessing if size <= 64 else large_image_preprocessing)(size, mean, std)
    assert (spec.resize, spec.crop) == (want_resize, size)
    image = _photo(*source)
    path = tmp_path / "photo.png"
    image.save(path)
    want = validation_transform(spec)(Image.open(path).convert("RGB")).numpy()
    # the spec as the ONNX metadata carries it, read back on the deployment side
    deployed = ModelMetadata.from_props(ModelMetadata(["a"], size, list(mean), list(std),
                                                      preprocessing=spec.to_dict()).to_props()).preprocessing_spec()
    got = deployed.load(str(path))
    assert got.shape == want.shape == (3, size, size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_dataset_validation_transform_is_built_from_its_preprocessing(tmp_path):
    from sddcompress.data import load_dataset
    from sddcompress.data.preprocessing import validation_transform

    for cls in ("cat", "dog"):
        for split in ("train", "val"):
            (tmp_path / split / cls).mkdir(parents=True)
            _photo(260, 240, seed=len(cls)).save(tmp_path / split / cls / "a.png")
    bundle = load_dataset(f"imagefolder:{tmp_path}", input_size=224)
    assert (bundle.preprocessing.resize, bundle.preprocessing.crop) == (256, 224)
    image, _ = bundle.val[0]
    np.testing.assert_array_equal(bundle.val_transform(image).numpy(),
                                  validation_transform(bundle.preprocessing)(image).numpy())
    digits = load_dataset("digits", input_size=16)
    assert (digits.preprocessing.resize, digits.preprocessing.crop) == (16, 16)
    assert digits.preprocessing.mean == pytest.approx(digits.mean)


def test_old_metadata_and_checkpoints_still_read():
    from sddcompress.data.preprocessing import from_checkpoint

    old_props = {k: v for k, v in ModelMetadata(["a"], 224, [0.5] * 3, [0.25] * 3).to_props().items()
                 if not k.endswith("preprocessing")}
    spec = ModelMetadata.from_props(old_props).preprocessing_spec()
    assert (spec.resize, spec.crop, spec.mean, spec.std) == (256, 224, (0.5,) * 3, (0.25,) * 3)
    old_ckpt = {"model": {"input_size": 32}, "normalization": {"mean": [0.1] * 3, "std": [0.2] * 3}}
    assert from_checkpoint(old_ckpt) == Preprocessing(32, 32, "bilinear", (0.1,) * 3, (0.2,) * 3)
    new_ckpt = {**old_ckpt, "preprocessing": Preprocessing(40, 32, "bicubic", (0.1,) * 3, (0.2,) * 3).to_dict()}
    assert from_checkpoint(new_ckpt).interpolation == "bicubic" and from_checkpoint(new_ckpt).resize == 40


def test_checkpoint_and_onnx_carry_the_preprocessing(exported, teacher_ckpt):
    import torch

    ckpt = torch.load(teacher_ckpt, weights_only=True)
    meta = read_metadata(exported["artifacts"]["onnx"]["path"])
    assert ckpt["preprocessing"] == meta.preprocessing
    assert meta.preprocessing_spec() == Preprocessing(16, 16, "bilinear", tuple(meta.mean), tuple(meta.std))
    assert read_metadata(exported["artifacts"]["ort_int8"]["path"]).preprocessing == meta.preprocessing


def test_classify_image_and_deploy_classify_match_pipeline(exported, tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import classify_image
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    from sddcompress.data import load_dataset
    from sddcompress.data.sampling import dataset_labels, stratified_indices

    onnx_path = exported["artifacts"]["onnx"]["path"]
    meta = read_metadata(onnx_path)
    val = load_dataset("digits", input_size=meta.input_size).val
    tensors = load_tensor_file(exported["tensor_file"]["path"])
    in_file = stratified_indices(dataset_labels(val), len(tensors.val_images))  # the images the export stored
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        val[int(in_file[i])][0].save(path)
        paths.append(str(path))
        np.testing.assert_array_equal(classify_image.preprocess(str(path), meta.preprocessing_spec()),
                                      tensors.val_images[i])
    done = subprocess.run([sys.executable, str(EXAMPLE), onnx_path, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split(": ")[1].split()[0] in meta.class_names for line in lines)
    script = ("import sys; sys.modules['torch'] = None\nfrom sddcompress_export.cli import main\n"
              f"main(['classify', {onnx_path!r}, *{paths!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["predictions"]
    assert [p["class"] for p in predictions] == [line.split(": ")[1].split()[0] for line in lines]
    bad = subprocess.run([sys.executable, str(EXAMPLE), onnx_path, str(tmp_path / "missing.png")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "missing.png" in bad.stderr
