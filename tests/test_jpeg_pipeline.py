"""The JPEG pipeline for large image folders (`--pipeline jpeg`): each image is cropped and flipped exactly where
the PIL loader crops and flips it, batches do not change an image, `auto` picks it only on a GPU for a JPEG
folder, and a run trains with it. On this CPU the images are decoded by PIL; the GPU decoder is left to the
`gpu` tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sddcompress.data import SeededTransform, load_dataset
from sddcompress.data.jpeg_pipeline import DeviceJpegImages
from sddcompress.engine.config import TrainConfig
from sddcompress.engine.trainer import run, training_pipeline
from sddcompress.errors import UserError
from helpers import QUIET

SIZE = 72  # above the small-image limit: the large-image augmentation (RandomResizedCrop)


def _jpeg_folder(root, suffix: str = ".jpg"):
    """Two classes of structured pictures (a diagonal ramp under a grid), odd sizes, as JPEG (or `suffix`)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(((120, 90), (97, 131), (150, 150), (88, 101))):
                y, x = np.mgrid[0:h, 0:w]
                picture = np.stack([(x * 2 + y) % 256, (y * 3 + 40 * c) % 256, ((x // 9 + y // 9) % 2) * 200 + 20],
                                   axis=-1) + rng.integers(0, 8, (h, w, 3))
                Image.fromarray(picture.clip(0, 255).astype(np.uint8)).save(folder / f"{i}{suffix}", quality=95)
    return root


def test_each_image_is_cropped_and_flipped_where_the_pil_loader_does(tmp_path):
    bundle = load_dataset(f"imagefolder:{_jpeg_folder(tmp_path / 'img')}", input_size=SIZE)
    pil = SeededTransform(bundle.train, bundle.train_transform, seed=3)
    jpeg = DeviceJpegImages(bundle.train, bundle.train_transform, seed=3)
    step = 1 / 255 / min(bundle.train_transform.transforms[-1].std)  # one uint8 level, normalised
    flips = set()
    for epoch in (0, 1, 2):
        pil.set_epoch(epoch)
        jpeg.set_epoch(epoch)
        indices = list(range(len(jpeg)))
        images, labels = jpeg.__getitems__(indices)
        assert images.shape == (len(indices), 3, SIZE, SIZE) and images.dtype == torch.float32
        assert labels.tolist() == [bundle.train[i][1] for i in indices]
        for k, index in enumerate(indices):
            expected = pil[index][0]
            # the same box and flip; only the resize's rounding differs (PIL's and torch's antialiased bilinear)
            assert (images[k] - expected).abs().mean() < 0.75 * step, (epoch, index)
            flips.add(jpeg.crop_and_flip(index, 10, 10)[1])
    assert flips == {False, True}
    jpeg.set_epoch(0)  # another epoch's crops are far apart: the comparison above can fail
    pil.set_epoch(1)
    assert (jpeg.__getitems__([0])[0][0] - pil[0][0]).abs().mean() > 10 * step


def test_an_image_is_the_same_in_any_batch(tmp_path):
    bundle = load_dataset(f"imagefolder:{_jpeg_folder(tmp_path / 'img')}", input_size=SIZE)
    jpeg = DeviceJpegImages(bundle.train, bundle.train_transform, seed=5)
    together, _ = jpeg.__getitems__([6, 2, 5])
    alone, _ = jpeg.__getitems__([2])
    assert torch.equal(together[1], alone[0])


def test_auto_picks_the_jpeg_pipeline_on_a_gpu_for_large_jpeg_folders_only(tmp_path):
    jpegs = f"imagefolder:{_jpeg_folder(tmp_path / 'jpg')}"
    pngs = f"imagefolder:{_jpeg_folder(tmp_path / 'png', suffix='.png')}"
    large, small, png = (load_dataset(jpegs, input_size=SIZE), load_dataset(jpegs, input_size=16),
                         load_dataset(pngs, input_size=SIZE))
    auto = TrainConfig(pipeline="auto")
    assert training_pipeline(auto, large, cuda=True) == "jpeg"
    assert training_pipeline(auto, large, cuda=False) == "loader"
    assert training_pipeline(auto, small, cuda=True) == "device"
    assert training_pipeline(auto, png, cuda=True) == "loader"  # PIL stays for other formats
    assert training_pipeline(TrainConfig(pipeline="jpeg"), large, cuda=False) == "jpeg"
    assert training_pipeline(TrainConfig(pipeline="loader"), large, cuda=True) == "loader"
    for bundle, why in ((png, "must be a JPEG"), (small, "above 64 px")):
        with pytest.raises(UserError, match=f"--pipeline jpeg cannot read this data: .*{why}.*; use --pipeline loader"):
            training_pipeline(TrainConfig(pipeline="jpeg"), bundle, cuda=True)


def test_a_run_trains_with_the_jpeg_pipeline(tmp_path):
    folder = f"imagefolder:{_jpeg_folder(tmp_path / 'img')}"
    result = run(TrainConfig(data=folder, input_size=SIZE, model="resnet20", epochs=1, batch_size=4, lr=0.01,
                             pipeline="jpeg", out=str(tmp_path / "run"), cpu=True, log_every=1000), **QUIET)
    assert result.latest.exists() and result.best.exists()
