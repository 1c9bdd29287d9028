"""Input pipelines: the device-resident pipeline augments exactly as the PIL loader does, and trains to
the same weights; data preparation (download, the unreadable-image scan) happens on the main process only."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from PIL import Image

from sddcompress.data import SeededTransform, load_dataset
from sddcompress.data.device_pipeline import DeviceImages
from sddcompress.engine.config import TrainConfig
from sddcompress.engine.trainer import run
from helpers import QUIET, assert_same_weights, sdd_config


def _image_folder(root, sizes=((20, 30), (64, 64), (30, 20), (40, 50), (33, 33)), bad: int = 0):
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                gradient = torch.arange(w * h * 3, dtype=torch.int64).reshape(h, w, 3) * (7 + c + i) % 251
                Image.fromarray(gradient.to(torch.uint8).numpy()).save(folder / f"{i}.png")
            for j in range(bad if split == "train" and c == 0 else 0):
                (folder / f"broken{j}.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("data", ["digits", "folder"])
def test_device_and_pil_pipelines_give_the_same_batches(tmp_path, data):
    name = "digits" if data == "digits" else f"imagefolder:{_image_folder(tmp_path / 'img')}"
    bundle = load_dataset(name, input_size=16)
    pil = SeededTransform(bundle.train, bundle.train_transform, seed=3)
    device = DeviceImages(bundle.train, bundle.train_transform, seed=3)
    indices = [7, 0, 3, 7, 1, 5] if data == "folder" else [100, 5, 17, 999, 5]
    seen = []
    for epoch in (0, 1):
        pil.set_epoch(epoch)
        device.set_epoch(epoch)
        images, labels = device.__getitems__(indices)
        expected = torch.stack([pil[i][0] for i in indices])
        assert images.dtype == torch.float32 and images.shape == expected.shape == (len(indices), 3, 16, 16)
        assert torch.equal(images, expected)
        assert labels.tolist() == [pil[i][1] for i in indices]
        seen.append(images)
    assert not torch.equal(seen[0], seen[1])  # the augmentation depends on the epoch


def test_device_pipeline_trains_to_the_loader_weights(tmp_path, teacher_ckpt):
    device = run(sdd_config(tmp_path / "device", teacher_ckpt, pipeline="device", epochs=2), **QUIET)
    loader = run(sdd_config(tmp_path / "loader", teacher_ckpt, pipeline="loader", epochs=2), **QUIET)
    assert_same_weights(device.latest, loader.latest)


def test_large_images_keep_the_loader_and_refuse_the_device_pipeline(tmp_path):
    from sddcompress.engine.trainer import training_pipeline
    from sddcompress.errors import UserError

    def _device(cfg, bundle, cuda):
        return training_pipeline(cfg, bundle, cuda) == "device"

    folder = f"imagefolder:{_image_folder(tmp_path / 'img')}"
    small, large = load_dataset(folder, input_size=16), load_dataset(folder, input_size=96)
    assert _device(TrainConfig(pipeline="auto"), small, cuda=True)
    assert _device(TrainConfig(pipeline="device"), small, cuda=False)
    assert not _device(TrainConfig(pipeline="auto"), small, cuda=False)
    assert not _device(TrainConfig(pipeline="loader"), small, cuda=True)
    assert not _device(TrainConfig(pipeline="auto"), large, cuda=True)
    with pytest.raises(UserError, match="--pipeline device needs small images .*; use --pipeline loader"):
        _device(TrainConfig(pipeline="device"), large, cuda=False)


class _Process:
    """The parts of an Accelerator that data preparation uses, for process `index` of two."""

    def __init__(self, index: int) -> None:
        self.is_main_process, self.num_processes = index == 0, 2

    def main_process_first(self):
        return nullcontext()


def test_only_the_main_process_scans_for_unreadable_images(tmp_path, monkeypatch):
    import accelerate.utils

    import sddcompress.data.datasets as datasets
    from sddcompress.engine.trainer import load_training_data

    root = _image_folder(tmp_path / "img", bad=2)
    cfg = TrainConfig(data=f"imagefolder:{root}", input_size=16, skip_bad_images=True)
    decoded, sent = [], []
    real_readable = datasets._readable
    monkeypatch.setattr(datasets, "_readable", lambda path: decoded.append(path) or real_readable(path))
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objs, from_process=0: sent.extend(objs))
    main = load_training_data(cfg, _Process(0))
    assert main.skipped_images == 2 and len(decoded) == 20 + 2

    def receive(objs, from_process=0):  # the main process's list arrives
        objs[:] = sent

    decoded.clear()
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", receive)
    other = load_training_data(cfg, _Process(1))
    assert decoded == []  # no image decoded twice
    assert other.skipped_images == 2
    assert other.train.samples == main.train.samples and other.val.samples == main.val.samples
    assert other.train.targets == main.train.targets


@pytest.mark.parametrize("data", ["digits", "folder"])
def test_device_resident_validation_gives_the_loader_batches(tmp_path, data):
    """Evaluation reads the validation images from the device when training does: the same tensors."""
    from types import SimpleNamespace

    from sddcompress.engine.trainer import _val_loader

    name = "digits" if data == "digits" else f"imagefolder:{_image_folder(tmp_path / 'img')}"
    bundle = load_dataset(name, input_size=16)
    cfg, acc = TrainConfig(seed=3), SimpleNamespace(device=torch.device("cpu"))
    on_device = _val_loader(bundle, cfg, acc, 8, True, {})
    loader = _val_loader(bundle, cfg, acc, 8, False, {})
    assert isinstance(on_device.dataset, DeviceImages) and not isinstance(loader.dataset, DeviceImages)
    pairs = list(zip(on_device, loader))
    assert len(pairs) == len(loader) and sum(len(b[1]) for _, b in pairs) == len(bundle.val)
    for (images_d, labels_d), (images_l, labels_l) in pairs:
        assert torch.equal(images_d, images_l) and torch.equal(labels_d, labels_l)
