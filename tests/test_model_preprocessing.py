"""A model is fed images as its own preprocessing record says (checkpoint / ONNX metadata), never with the
dataset's statistics when they differ, as they do for a model fine-tuned from ImageNet weights on digits.

The reference images come from the torch-free deployment implementation of the record (`Preprocessing.apply`
on the PIL images), so the checks do not reuse the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sddcompress_export.classifier_metrics import logits_metrics
from sddcompress_export.preprocessing import Preprocessing

from sddcompress.data import load_dataset
from sddcompress.engine.checkpoint import atomic_save
from sddcompress.engine.checkpoint_eval import model_from_checkpoint

# what the weights would expect: not the digits' own statistics (about 0.3 / 0.4)
OTHER = Preprocessing(16, 16, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def other_ckpt(teacher_ckpt, tmp_path_factory) -> str:
    """The tiny digits teacher, its record saying it was trained on ImageNet statistics."""
    ckpt = torch.load(teacher_ckpt, map_location="cpu", weights_only=True)
    ckpt["preprocessing"] = OTHER.to_dict()
    ckpt["normalization"] = {"mean": list(OTHER.mean), "std": list(OTHER.std)}
    path = tmp_path_factory.mktemp("other-stats") / "best.pt"
    atomic_save(ckpt, path)
    return str(path)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, 16)


def reference_metrics(bundle, ckpt: str, spec: Preprocessing, size: int | None = None) -> dict:
    """The checkpoint's model on the validation images of `bundle` (all, or the benchmark's class-stratified
    sample of `size`), preprocessed by `spec`."""
    from sddcompress.data.sampling import stratified_indices

    chosen = [bundle.val[i] for i in stratified_indices([label for _, label in bundle.val], size)]
    images = np.stack([spec.apply(image) for image, _ in chosen])
    labels = np.asarray([label for _, label in chosen])
    net, _ = model_from_checkpoint(ckpt)
    with torch.inference_mode():
        return logits_metrics(net(torch.from_numpy(images)).numpy(), labels)


def same_metrics(got: dict, want: dict) -> bool:
    return got["top1"] == pytest.approx(want["top1"]) and got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_eval_export_and_artifact_eval_use_the_models_record(other_ckpt, digits, exported, tmp_path):
    """eval and export read the checkpoint's record; an ONNX file carrying it (the export of these very
    weights, its metadata as `export` writes it for this checkpoint) is scored with it."""
    import onnx
    from sddcompress_export.metadata import write_metadata

    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint, evaluate_checkpoint
    from sddcompress.exporting.artifact_eval import evaluate_artifact
    from sddcompress.exporting.onnx_writer import checkpoint_metadata

    own = reference_metrics(digits, other_ckpt, OTHER)
    assert digits.preprocessing.mean != OTHER.mean
    assert not same_metrics(reference_metrics(digits, other_ckpt, digits.preprocessing), own)  # they differ

    assert same_metrics(evaluate_checkpoint(other_ckpt, None, None, None, None, 64), own)
    ckpt = load_checkpoint(other_ckpt)
    assert dataset_for_checkpoint(ckpt, "digits", None, 16).preprocessing == OTHER  # export's tensor file
    meta = checkpoint_metadata(other_ckpt, ckpt)
    assert meta.preprocessing_spec() == OTHER and meta.mean == list(OTHER.mean)  # what deploy classify reads
    model = onnx.load(exported["artifacts"]["onnx"]["path"])
    write_metadata(model, meta)
    onnx.save(model, tmp_path / "model.onnx")
    assert same_metrics(evaluate_artifact(str(tmp_path / "model.onnx"), "digits", None, 64), own)


def test_benchmark_feeds_each_model_its_own_preprocessing(teacher_ckpt, other_ckpt, digits, tmp_path):
    """Same weights, two records: the teacher scores on the digits' statistics, the student on its own."""
    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark

    doc = run_benchmark(BenchmarkOptions(teacher=teacher_ckpt, student=other_ckpt, data="digits", val_size=64,
                                         batch_sizes=[32], plot_batch=32, backends=["torch-eager"], warmup=0,
                                         min_iters=1, min_seconds=0, out=str(tmp_path)), echo=lambda s: None)
    rows = {row["model"]: row["accuracy"] for row in doc["results"]}
    assert same_metrics(rows["student"], reference_metrics(digits, other_ckpt, OTHER, 64))
    assert same_metrics(rows["teacher"], reference_metrics(digits, teacher_ckpt, digits.preprocessing, 64))
    assert doc["models"]["student"]["preprocessing"]["mean"] == list(OTHER.mean)


def test_benchmark_refuses_a_tensor_file_normalised_for_another_model(teacher_ckpt, other_ckpt, exported, tmp_path):
    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark
    from sddcompress.errors import UserError

    npz = exported["tensor_file"]["path"]  # images normalised with the digits' statistics
    with pytest.raises(UserError, match="the student expects mean .*pass the dataset name as --data"):
        run_benchmark(BenchmarkOptions(teacher=teacher_ckpt, student=other_ckpt, data=npz, backends=["torch-eager"],
                                       batch_sizes=[1], out=str(tmp_path)), echo=lambda s: None)


def test_distilling_from_a_teacher_trained_on_other_statistics_uses_them(other_ckpt, teacher_ckpt, digits,
                                                                        tmp_path):
    """The student sees images as its teacher was trained (a teacher fine-tuned from ImageNet weights keeps
    ImageNet's statistics); a student whose own weights expect other statistics is refused in one line."""
    from sddcompress.engine.config import TrainConfig
    from sddcompress.engine.run_preprocessing import weights_preprocessing
    from sddcompress.errors import UserError

    cfg = TrainConfig(model="resnet8x4", teacher="resnet20", teacher_ckpt=other_ckpt, method="kd", data="digits",
                      input_size=16)
    who, spec = weights_preprocessing(cfg, True, digits)
    assert who == f"the teacher checkpoint {other_ckpt}" and spec == OTHER
    cfg.teacher_ckpt = teacher_ckpt  # trained on the digits' own statistics: nothing to change
    assert weights_preprocessing(cfg, True, digits) is None
    cfg.pretrained, cfg.model = True, "mobilenet_v3_small"  # ... so a student expecting ImageNet's cannot share
    with pytest.raises(UserError, match=r"the teacher checkpoint .* expects images normalised with mean \(0.3"):
        weights_preprocessing(cfg, True, digits)

    ckpt = torch.load(teacher_ckpt, map_location="cpu", weights_only=True)  # a third set of statistics
    ckpt["preprocessing"] = Preprocessing(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3).to_dict()
    atomic_save(ckpt, tmp_path / "half.pt")
    cfg = TrainConfig(model="mobilenet_v3_small", pretrained=True, teacher="resnet20",
                      teacher_ckpt=str(tmp_path / "half.pt"), method="kd", data="digits", input_size=16)
    with pytest.raises(UserError, match=r"expects images normalised with mean \(0.5, 0.5, 0.5\).*the pretrained "
                                        r"mobilenet_v3_small with \(0.485, 0.456, 0.406\)"):
        weights_preprocessing(cfg, True, digits)
