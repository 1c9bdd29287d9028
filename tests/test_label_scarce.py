"""Label-scarce training (--labelled-fraction, --unlabelled): which images keep their labels, what each term
of the objective sees, and that such runs keep the engine's guarantees (both pipelines, two processes,
kill and resume)."""

from __future__ import annotations

import json
import math
import signal
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_args
from sddcompress.data import SeededTransform, load_dataset
from sddcompress.data.device_pipeline import DeviceImages
from sddcompress.data.fraction import _labels
from sddcompress.data.label_scarce import UNLABELLED, find_unlabelled_images, labelled_indices, split_labels
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.trainer import run
from sddcompress.errors import UserError
from sddcompress.losses import Objective, make_method
from test_engine import (QUIET, _cli_cmd, _distill_args, _start_and_stop_mid_epoch, _train_two_ways,
                         assert_same_weights, sdd_config)


def unlabelled_folder(root, sizes=((20, 31), (64, 40), (9, 9), (100, 17), (33, 33), (48, 12))):
    """A few PNG and JPEG images of odd sizes in nested folders, beside files that are not images."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        folder = root / ("deep/er" if i % 3 == 0 else "top" if i % 3 == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        mode = "L" if i == 2 else "RGB"  # a greyscale one
        pixels = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{i}.{'png' if i % 2 else 'JPG'}")
    (root / "notes.txt").write_text("not an image\n")
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "thumb.png").write_bytes(b"not read: hidden")
    return root


def digits_labels() -> np.ndarray:
    return _labels(load_dataset("digits", input_size=16).train)


# --- which images keep their labels ---------------------------------------------------------------------

def test_labelled_subset_is_class_stratified_seeded_and_nested():
    labels = digits_labels()
    classes, counts = np.unique(labels, return_counts=True)
    tenth = labelled_indices(labels, 0.1, seed=0)
    assert np.array_equal(tenth, labelled_indices(labels, 0.1, seed=0))  # same seed, same subset
    assert not np.array_equal(tenth, labelled_indices(labels, 0.1, seed=1))  # the seed draws it
    kept = np.bincount(labels[tenth], minlength=len(classes))
    assert kept.tolist() == [math.floor(0.1 * n + 0.5) for n in counts]  # rounded half up, per class
    assert kept.min() >= 1 and np.all(np.diff(tenth) > 0)
    assert set(labelled_indices(labels, 0.05, seed=0)) < set(tenth)  # a smaller fraction: a subset
    assert np.array_equal(labelled_indices(labels, 1.0, seed=5), np.arange(len(labels)))


def test_a_fraction_that_leaves_a_class_unlabelled_names_the_smallest_that_works():
    labels = np.array([0] * 3 + [1] * 100)
    with pytest.raises(UserError, match=r"^--labelled-fraction 0.1 leaves class 'few' \(3 training images\) "
                                        r"without a labelled image; pass --labelled-fraction 0.1667 or more$"):
        labelled_indices(labels, 0.1, seed=0, class_names=["few", "many"])
    assert len(labelled_indices(labels, 0.1667, seed=0)) == 1 + 17


def test_unlabelled_images_are_found_in_any_layout_and_any_size(tmp_path):
    folder = unlabelled_folder(tmp_path / "u")
    paths, skipped = find_unlabelled_images(str(folder))
    names = [p[len(str(folder)) + 1:] for p in paths]
    assert names == ["deep/er/img0.JPG", "deep/er/img3.png", "img2.JPG", "img5.png", "top/img1.png", "top/img4.JPG"]
    assert skipped == 0
    (folder / "top" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*broken.png.*--skip-bad-images"):
        find_unlabelled_images(str(folder))
    assert find_unlabelled_images(str(folder), skip_bad=True) == (paths, 1)


@pytest.mark.parametrize("fraction", [1.0, 0.2])
def test_both_pipelines_give_the_same_label_scarce_batches(tmp_path, fraction):
    bundle = load_dataset("digits", input_size=16)
    bundle, split = split_labels(bundle, fraction, str(unlabelled_folder(tmp_path / "u")), seed=3, uses_teacher=True)
    n = len(bundle.train)
    assert (split.from_folder, split.labelled + split.unlabelled) == (6, n)
    pil = SeededTransform(bundle.train, bundle.train_transform, seed=3)
    device = DeviceImages(bundle.train, bundle.train_transform, seed=3)
    indices = [n - 1, 0, n - 4, 17, n - 6, 3]  # folder images (odd sizes, one greyscale) among digits
    images, labels = device.__getitems__(indices)
    assert images.shape == (6, 3, 16, 16)
    assert torch.equal(images, torch.stack([pil[i][0] for i in indices]))
    assert labels.tolist() == [pil[i][1] for i in indices]
    assert labels[[0, 2, 4]].tolist() == [UNLABELLED] * 3
    assert (device.labels >= 0).sum().item() == split.labelled


# --- what each term sees ---------------------------------------------------------------------------------

def _logits(b=6, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3, torch.randn(b, k, generator=g) * 3


def test_cross_entropy_ignores_unlabelled_images_exactly():
    zs, _ = _logits()
    y = torch.tensor([3, UNLABELLED, 1, UNLABELLED, UNLABELLED, 7])
    ce = Objective(make_method("ce"), labelled_share=0.5)
    expected = torch.nn.functional.cross_entropy(zs[[0, 2, 5]], y[[0, 2, 5]], reduction="sum") / (6 * 0.5)
    zs = zs.clone().requires_grad_(True)
    terms = ce(zs, y)
    torch.testing.assert_close(terms["ce"], expected, rtol=0, atol=0)
    terms["loss"].backward()
    assert torch.all(zs.grad[[1, 3, 4]] == 0) and torch.all(zs.grad[[0, 2, 5]].abs().sum(1) > 0)
    other = zs.detach().clone()
    other[[1, 3, 4]] = 100.0  # anything at all in the unlabelled rows
    assert torch.equal(ce(other, y)["ce"], terms["ce"].detach())
    none = ce(zs.detach(), torch.full((6,), UNLABELLED))  # a batch without a labelled image
    assert none["ce"].item() == 0.0 and torch.isfinite(none["loss"])
    labelled = Objective(make_method("ce"))(zs.detach(), y.clamp(min=0))  # every image labelled: the batch mean
    assert torch.equal(labelled["ce"], torch.nn.functional.cross_entropy(zs.detach(), y.clamp(min=0)))


@pytest.mark.parametrize("method", ["kd", "dkd", "sdd-dkd", "sdd-dkd+msdcrd"])
def test_distillation_terms_use_every_image_with_the_teachers_label_for_the_unlabelled(method):
    b, k, n = 6, 10, 5
    zs, zt = _logits(b, k)
    g = torch.Generator().manual_seed(1)
    ls, lt = torch.randn(b, k, n, generator=g), torch.randn(b, k, n, generator=g)
    ls[:, :, 0], lt[:, :, 0] = zs, zt
    msd = {"student_msd": {"embedding": torch.nn.functional.normalize(torch.randn(b, 21, 8, generator=g), dim=2)},
           "teacher_msd": {"embedding": torch.nn.functional.normalize(torch.randn(b, 21, 8, generator=g), dim=2),
                           "region_logits": torch.randn(b, 21, k, generator=g)}}
    kwargs = dict(teacher_logits=zt, student_local=ls, teacher_local=lt, epoch_progress=100.0,
                  **(msd if method.endswith("msdcrd") else {}))
    objective = Objective(make_method(method, scales="1,2" if method.startswith("sdd") else "1,2,4"),
                          labelled_share=0.5)
    y = torch.tensor([3, UNLABELLED, 1, UNLABELLED, UNLABELLED, 7])
    scarce = objective(zs, y, **kwargs)
    as_teacher_says = torch.where(y >= 0, y, zt.argmax(1))
    filled = objective(zs, as_teacher_says, **kwargs)
    for name in scarce:
        if name not in ("ce", "loss"):  # every distillation term: every image, the teacher's label where none
            torch.testing.assert_close(scarce[name], filled[name], rtol=0, atol=0, msg=name)
    labelled_only = objective(zs[[0, 2, 5]], y[[0, 2, 5]], **{
        **kwargs, "teacher_logits": zt[[0, 2, 5]], "student_local": ls[[0, 2, 5]], "teacher_local": lt[[0, 2, 5]],
        **({"student_msd": {"embedding": msd["student_msd"]["embedding"][[0, 2, 5]]},
            "teacher_msd": {k: v[[0, 2, 5]] for k, v in msd["teacher_msd"].items()}}
           if method.endswith("msdcrd") else {})})
    distill = "distill" if "distill" in scarce else "msd_sample"
    assert not torch.allclose(scarce[distill], labelled_only[distill])  # the unlabelled images count


class _Recording:
    """An objective wrapper that keeps the labels of every batch it sees."""

    seen: list[torch.Tensor] = []

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, student_logits, labels, **kwargs):
        _Recording.seen.append(labels.clone())
        return self.inner(student_logits, labels, **kwargs)


def test_ce_trains_on_the_labelled_images_only_while_distillation_sees_all(tmp_path, teacher_ckpt, monkeypatch):
    import sddcompress.engine.trainer as trainer

    real = trainer.Objective
    monkeypatch.setattr(trainer, "Objective", lambda m, **k: _Recording(real(m, **k)))
    folder = str(unlabelled_folder(tmp_path / "u"))
    over = dict(labelled_fraction=0.2, max_train_batches=0, batch_size=16)
    _Recording.seen = []
    ce = run(sdd_config(tmp_path / "ce", teacher_ckpt, method="ce", **over), **QUIET)
    ce_labels = torch.cat(_Recording.seen)
    _Recording.seen = []
    sdd = run(sdd_config(tmp_path / "sdd", teacher_ckpt, unlabelled=folder, **over), **QUIET)
    sdd_labels = torch.cat(_Recording.seen)
    counts = np.unique(digits_labels(), return_counts=True)[1]
    labelled = sum(math.floor(0.2 * n + 0.5) for n in counts)
    # CE: the labelled images only (an epoch of whole batches of them); SDD-DKD: every image, the labels the same
    assert (ce_labels >= 0).all() and len(ce_labels) == labelled // 16 * 16
    assert len(sdd_labels) == (counts.sum() + 6) // 16 * 16
    assert (sdd_labels >= 0).sum() <= labelled and (sdd_labels == UNLABELLED).sum() > (sdd_labels >= 0).sum()
    ckpt_ce, ckpt_sdd = load_checkpoint(ce.latest), load_checkpoint(sdd.latest)
    assert ckpt_ce["labels"] == {"labelled": labelled, "unlabelled": 0, "from_folder": 0}
    assert ckpt_sdd["labels"] == {"labelled": labelled, "unlabelled": int(counts.sum()) - labelled + 6,
                                  "from_folder": 6}
    assert (ckpt_sdd["config"]["labelled_fraction"], ckpt_sdd["config"]["unlabelled"]) == (0.2, folder)
    row = json.loads((sdd.out / "metrics.jsonl").read_text().splitlines()[-1])
    assert (row["train_labelled"], row["train_unlabelled"]) == (labelled, int(counts.sum()) - labelled + 6)


def test_ce_and_distillation_with_the_same_seed_see_the_same_labels(tmp_path):
    bundle = load_dataset("digits", input_size=16)
    labels = _labels(bundle.train)
    ce, ce_split = split_labels(bundle, 0.2, None, seed=4, uses_teacher=False)
    sdd, sdd_split = split_labels(bundle, 0.2, str(unlabelled_folder(tmp_path / "u")), seed=4, uses_teacher=True)
    chosen = labelled_indices(labels, 0.2, seed=4)
    assert ce.train.indices == chosen.tolist() and ce_split.labelled == sdd_split.labelled == len(chosen)
    targets = np.asarray(sdd.train.targets)
    assert np.array_equal(np.flatnonzero(targets >= 0), chosen)
    assert np.array_equal(targets[chosen], labels[chosen]) and len(targets) == len(labels) + 6


def test_runs_table_shows_labelled_and_unlabelled_counts(tmp_path, teacher_ckpt, cli):
    folder = str(unlabelled_folder(tmp_path / "u"))
    run(sdd_config(tmp_path / "runs" / "scarce", teacher_ckpt, labelled_fraction=0.2, unlabelled=folder), **QUIET)
    run(sdd_config(tmp_path / "runs" / "full", teacher_ckpt), **QUIET)
    code, out, _ = cli("runs", str(tmp_path / "runs"), "--json")
    assert code == 0
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert (rows["scarce"]["labelled_fraction"], rows["scarce"]["labelled"]) == (0.2, 287)
    assert rows["scarce"]["unlabelled"] == 1437 - 287 + 6
    assert (rows["full"]["labelled_fraction"], rows["full"]["labelled"], rows["full"]["unlabelled"]) == (1.0, 1437, 0)
    code, out, _ = cli("runs", str(tmp_path / "runs"))
    assert code == 0 and "287 labelled + 1156 unlabelled" in out and "100%" in out


# --- the engine's guarantees hold --------------------------------------------------------------------------

def test_loader_and_device_pipelines_train_to_the_same_weights(tmp_path, teacher_ckpt):
    folder = str(unlabelled_folder(tmp_path / "u"))
    common = dict(labelled_fraction=0.2, unlabelled=folder, epochs=2)
    loader = run(sdd_config(tmp_path / "loader", teacher_ckpt, pipeline="loader", **common), **QUIET)
    device = run(sdd_config(tmp_path / "device", teacher_ckpt, pipeline="device", **common), **QUIET)
    assert_same_weights(loader.latest, device.latest)
    assert loader.history[-1]["train_loss"] == device.history[-1]["train_loss"]


def test_resuming_with_another_labelled_fraction_or_unlabelled_folder_is_refused(tmp_path, teacher_ckpt):
    folder = unlabelled_folder(tmp_path / "u")
    run(sdd_config(tmp_path / "r", teacher_ckpt, labelled_fraction=0.2, unlabelled=str(folder)), **QUIET)
    with pytest.raises(UserError, match="started with labelled_fraction=0.2; this command asks for "
                                        "labelled_fraction=0.5"):
        run(sdd_config(tmp_path / "r", teacher_ckpt, labelled_fraction=0.5, unlabelled=str(folder), epochs=2),
            **QUIET)
    with pytest.raises(UserError, match="started with unlabelled="):
        run(sdd_config(tmp_path / "r", teacher_ckpt, labelled_fraction=0.2, epochs=2), **QUIET)
    Image.new("RGB", (10, 10)).save(folder / "new.png")
    with pytest.raises(UserError, match="started with 6 images under --unlabelled .* it now holds 7: restore"):
        run(sdd_config(tmp_path / "r", teacher_ckpt, labelled_fraction=0.2, unlabelled=str(folder), epochs=2),
            **QUIET)


def _scarce_args(folder, fraction: float = 0.2) -> list[str]:
    return ["--labelled-fraction", str(fraction), "--unlabelled", str(folder)]


def test_sigterm_mid_epoch_then_resume_gives_identical_weights(tmp_path, teacher_ckpt):
    folder = unlabelled_folder(tmp_path / "u")
    reference = tmp_path / "reference"
    subprocess.run(_cli_cmd(*_distill_args(reference, teacher_ckpt), *_scarce_args(folder)), check=True,
                   capture_output=True)
    stopped = tmp_path / "stopped"
    cmd = _cli_cmd(*_distill_args(stopped, teacher_ckpt), *_scarce_args(folder))
    assert _start_and_stop_mid_epoch(cmd, signal.SIGTERM) == 130
    mid = load_checkpoint(stopped / "checkpoints" / "latest.pt")
    assert mid["epoch"] == 1 and mid["step_in_epoch"] >= 5
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "labels: 287 training images labelled" in resumed.stdout
    assert_same_weights(reference / "checkpoints" / "latest.pt", stopped / "checkpoints" / "latest.pt")
    rows = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_top1"] for r in rows] == [r["train_top1"] for r in expected]  # the tally resumed too


def test_two_cpu_processes_give_the_gradients_of_one_process(tmp_path, teacher_ckpt):
    # As test_engine's: one SGD step at lr 1, so the weight difference is the gradient difference. The
    # cross-entropy's normaliser is a constant (not each process's own labelled count), so the two halves
    # of the batch add up to the whole whatever their share of labelled images.
    from sddcompress.data import EpochShuffleSampler

    folder = unlabelled_folder(tmp_path / "u")
    # at this fraction the first batch's halves (one per process) hold 2 and 4 labelled images
    bundle, _ = split_labels(load_dataset("digits", input_size=16), 0.25, str(folder), 0, uses_teacher=True)
    first = [bundle.train.targets[i] for i in list(EpochShuffleSampler(len(bundle.train), 0))[:16]]
    assert [sum(y >= 0 for y in half) for half in (first[:8], first[8:])] == [2, 4]
    args = ["distill", "--teacher", "resnet20", "--teacher-ckpt", teacher_ckpt, "--student", "resnet20",
            "--warmup-epochs", "1", *_scarce_args(folder, 0.25),
            *tiny_args(epochs=1, max_train_batches=1, batch_size=16, lr=1.0)]
    one, two = _train_two_ways(tmp_path, args)
    assert_same_weights(one, two, atol=3e-5)
