"""Quantization-aware distillation: the fake-quantised student is the Q/DQ model ONNX Runtime runs, before and
after fine-tuning, and `sddcompress export --qat-epochs` writes that model; bad QAT options get one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, sdd_config


@pytest.fixture(scope="module")
def distilled(teacher_ckpt, tmp_path_factory) -> str:
    """A tiny SDD-DKD student of the session teacher (digits, 16 px)."""
    from sddcompress.engine.trainer import run

    out = tmp_path_factory.mktemp("qat-student")
    return str(run(sdd_config(out, teacher_ckpt), echo=lambda s: None).best)


@pytest.fixture(scope="module")
def float_export(distilled, tmp_path_factory) -> Path:
    """The student's model.onnx and data.npz (no INT8)."""
    from sddcompress.exporting.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("qat-export")
    run_export(ExportOptions(ckpt=distilled, out=str(out), calib_size=96, val_size=128), echo=lambda s: None)
    return out


def _ort_logits(path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _logit_step(net) -> float:
    """The quantisation step of the model's output (its last QuantizeLinear)."""
    last = [q for name, q in net.act_q.items()][-1]
    return last[0]


def _ptq(float_export: Path, tmp_path: Path, keep_float: str):
    from sddcompress_export.ort_quantization import quantize_int8

    data = np.load(float_export / "data.npz")
    path = tmp_path / "model.int8.onnx"
    result = quantize_int8(float_export / "model.onnx", path, data["calib_images"], data["calib_labels"],
                           method="minmax", keep_float=keep_float)
    return path, result, data["val_images"].astype(np.float32)


@pytest.mark.parametrize("keep_float", ["none", "ends"])
def test_fake_quantised_student_is_the_onnxruntime_int8_model(float_export, tmp_path, keep_float):
    from sddcompress.exporting.qat import quantization_aware_net

    path, result, images = _ptq(float_export, tmp_path, keep_float)
    net = quantization_aware_net(float_export / "model.onnx", path, result.rewrite).eval()
    float_layers = {n for op, ins, _, _ in net.nodes if op == "Conv" for n in ins[1:2] if n in net._param_index
                    and not any(n == w for w, _ in net.weight_of.values())}
    assert bool(float_layers) == (keep_float == "ends") and len(result.float_nodes) == (2 if keep_float == "ends" else 0)
    with torch.no_grad():
        ours = net(torch.from_numpy(images)).numpy()
    theirs = _ort_logits(path, images)
    assert np.abs(ours - theirs).max() <= _logit_step(net) * 1.001
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99


def test_fake_quantised_student_with_a_float_region_is_the_onnxruntime_int8_model(float_export, tmp_path):
    """A residual sum's float region (the sum, its ReLU, the layers writing and reading its tensors) kept
    float: the torch model still runs what ONNX Runtime runs, float sum and all."""
    import onnx

    from sddcompress.exporting.qat import quantization_aware_net
    from sddcompress_export.float_regions import FloatRegions
    from sddcompress_export.ort_quantization import prepared_model

    prepared_model(float_export / "model.onnx", tmp_path / "prepared.onnx")
    prepared = onnx.load(str(tmp_path / "prepared.onnx"))
    kind = {n.name: n.op_type for n in prepared.graph.node}
    regions = FloatRegions(prepared)
    add = next(k for k, unit in enumerate(regions.units) if kind[unit[0]] == "Add")
    region = regions.region(add)
    path, result, images = _ptq(float_export, tmp_path, ",".join(region))
    assert result.float_nodes == region
    written = onnx.load(str(path))
    quantised = {n.input[0] for n in written.graph.node if n.op_type == "QuantizeLinear"}
    summed = next(n for n in written.graph.node if n.name == regions.units[add][0])
    assert not quantised & set(summed.input) and summed.output[0] not in quantised
    net = quantization_aware_net(float_export / "model.onnx", path, result.rewrite).eval()
    with torch.no_grad():
        ours = net(torch.from_numpy(images)).numpy()
    theirs = _ort_logits(path, images)
    assert np.abs(ours - theirs).max() <= _logit_step(net) * 1.001
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99


def test_qat_export_equals_the_fine_tuned_fake_quant_model(float_export, teacher_ckpt, distilled, tmp_path):
    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat import load_teacher, distill_qdq, quantization_aware_net
    from sddcompress.exporting.qat_options import QatOptions
    from sddcompress_export.ort_quantization import quantize_with_weights

    path, result, images = _ptq(float_export, tmp_path, "ends")
    before = _ort_logits(path, images)
    net = quantization_aware_net(float_export / "model.onnx", path, result.rewrite)
    start = {k: v.copy() for k, v in net.float_weights().items()}
    ckpt = load_checkpoint(distilled)
    bundle = dataset_for_checkpoint(ckpt, "digits", None, 16)
    teacher = load_teacher(teacher_ckpt, bundle.num_classes, 16, (1, 2, 4))
    summary = distill_qdq(net, bundle.train, bundle.train_transform, teacher, QatOptions(epochs=0.1, lr=0.01), {},
                          0, lambda s: None)
    assert summary["steps"] == round(0.1 * (len(bundle.train) // 64))
    moved = [k for k, v in net.float_weights().items() if not np.array_equal(v, start[k])]
    assert len(moved) == len(start)  # every weight trains, float layers included
    quantize_with_weights(float_export / "model.onnx", path, net.float_weights(), result.ranges, result.method,
                          result.float_nodes)
    net.eval()
    with torch.no_grad():
        ours = net(torch.from_numpy(images)).numpy()
    after = _ort_logits(path, images)
    assert np.abs(ours - after).max() <= _logit_step(net) * 1.001
    assert not np.array_equal(before, after)


def test_export_with_qat_reports_both_and_keeps_the_plan(distilled, cli, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = cli("export", "--ckpt", distilled, "--out", str(out), "--ort-int8", "--calib-size", "64",
                            "--val-size", "100", "--int8-keep-float", "ends", "--qat-epochs", "0.05")
    assert code == 0, err
    int8 = json.loads((out / "export_report.json").read_text())["artifacts"]["ort_int8"]
    qat = int8["qat"]
    assert qat["steps"] >= 1 and qat["method"] == "sdd-dkd" and qat["labelled_images"] > 0
    from sddcompress.data.datasets import load_dataset
    from sddcompress.data.fraction import _labels
    from sddcompress.exporting.qat import ship_rule_indices

    left_out = ship_rule_indices(_labels(load_dataset("digits", input_size=16).train), 0)
    assert qat["rule_images"] == len(left_out) > 0  # the tenth of each class the ship rule scores on
    assert {"rule_fp32_top1", "rule_post_training_top1", "rule_quantization_aware_top1"} <= set(qat)
    assert qat["top1_drop"] == int8["top1_drop"] and "ptq_top1_drop" in qat
    assert int8["float_nodes"] == int8["quantization"]["float_nodes"] and len(int8["float_nodes"]) == 2
    kept = "" if qat["shipped"] == "quantization-aware" else " (post-training model kept)"
    assert f"INT8 after quantization-aware distillation{kept}: top-1" in stdout


@pytest.mark.parametrize("post_training, fine_tuned, shipped", [
    (95.0, 94.0, "post-training"),  # below the post-training model and more than 0.5 below fp32 (96)
    (95.0, 95.0, "quantization-aware"),  # a tie with the post-training model
    (96.5, 95.5, "quantization-aware"),  # below the post-training model, but within 0.5 of fp32
    (95.0, 97.0, "quantization-aware")])
def test_qat_ships_the_fine_tuned_model_unless_the_left_out_images_show_a_loss(
        float_export, teacher_ckpt, distilled, tmp_path, monkeypatch, post_training, fine_tuned, shipped):
    import sddcompress.exporting.qat as qat
    from sddcompress.data.fraction import _labels, take_train_fraction
    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat_options import QatOptions
    from sddcompress.exporting.tensor_data import preprocess
    from sddcompress_export import ort_quantization
    from sddcompress_export.ort_quantization import HeldOutScore

    path, result, _ = _ptq(float_export, tmp_path, "none")
    before = path.read_bytes()
    scored = []

    def score(p, images, ref, labels, batch_size=64):
        scored.append((images, labels))
        top1 = post_training if Path(p).name == path.name else fine_tuned
        return HeldOutScore(top1, 90.0, 0.0, fp32_top1=96.0)

    monkeypatch.setattr(ort_quantization, "held_out_score", score)
    ckpt = load_checkpoint(distilled)
    ckpt["config"] = {**ckpt["config"], "train_fraction": 0.5}
    bundle = dataset_for_checkpoint(ckpt, "digits", None, 16)
    said: list[str] = []
    copy = tmp_path / "fine-tuned.onnx"
    summary = qat.qat_int8(ckpt, bundle, float_export / "model.onnx", path, result,
                           QatOptions(epochs=0.05, teacher_ckpt=teacher_ckpt), said.append, max_drop=0.5,
                           fine_tuned_copy=copy)
    assert summary["rule_images"] > 0 and len(scored) == 2
    assert all(np.array_equal(images, scored[0][0]) and np.array_equal(labels, scored[0][1]) for images, labels in scored)
    left_out = qat.ship_rule_indices(_labels(qat.labels_the_run_saw(bundle, ckpt)), int(ckpt["config"]["seed"]))
    expected_images, expected_labels = preprocess(take_train_fraction(bundle, 0.5).train, bundle.val_transform,
                                                  left_out)
    assert np.array_equal(scored[0][0], expected_images) and np.array_equal(scored[0][1], expected_labels)
    assert summary["shipped"] == shipped and summary["rule_post_training_top1"] == post_training
    assert summary["rule_quantization_aware_top1"] == fine_tuned and summary["rule_fp32_top1"] == 96.0
    assert (path.read_bytes() == before) == (shipped == "post-training")
    assert (copy.read_bytes() == path.read_bytes()) == (shipped == "quantization-aware")  # kept either way
    assert not list(tmp_path.glob(".*quantization-aware*"))  # no temporary file left behind
    assert ("post-training model is kept" in said[-1]) == (shipped == "post-training")


def test_qat_ships_unchecked_where_no_class_has_labels_to_spare(float_export, teacher_ckpt, distilled, tmp_path):
    """A run with fewer than ten labels per class leaves nothing out: the fine-tuned model ships, and says it
    was not checked."""
    import sddcompress.exporting.qat as qat
    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat_options import QatOptions

    path, result, _ = _ptq(float_export, tmp_path, "none")
    before = path.read_bytes()
    ckpt = load_checkpoint(distilled)
    ckpt["config"] = {**ckpt["config"], "labelled_fraction": 0.05}  # about 7 labels per class of the digits
    bundle = dataset_for_checkpoint(ckpt, "digits", None, 16)
    said: list[str] = []
    summary = qat.qat_int8(ckpt, bundle, float_export / "model.onnx", path, result,
                           QatOptions(epochs=0.05, teacher_ckpt=teacher_ckpt), said.append)
    assert summary["rule_images"] == 0 and summary["shipped"] == "quantization-aware"
    assert "rule_post_training_top1" not in summary and path.read_bytes() != before
    assert "shipped unchecked" in said[-1]


@pytest.mark.parametrize("fp32, post_training, fine_tuned, max_drop, ships", [
    (50.0, 49.0, 48.9, 0.5, False),
    (50.0, 49.0, 49.0, 0.5, True),
    (50.0, 50.2, 49.6, 0.5, True),
    (50.0, 50.2, 49.4, 0.5, False),
    (50.0, 50.2, 49.4, 1.0, True),
    (50.0, 48.0, 48.0, 0.0, True)])
def test_ships_fine_tuned(fp32, post_training, fine_tuned, max_drop, ships):
    from sddcompress.exporting.qat import ships_fine_tuned

    assert ships_fine_tuned(fp32, post_training, fine_tuned, max_drop) is ships


def test_ship_rule_images_are_a_tenth_of_each_class_of_labelled_images():
    from sddcompress.exporting.qat import RULE_MAX_IMAGES, RULE_SHARE, ship_rule_indices

    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate((100, 57, 9, 30))] + [np.full(40, -1)])
    rng.shuffle(labels)
    picked = ship_rule_indices(labels, 3)
    assert picked == sorted(set(picked)) and picked == ship_rule_indices(labels, 3)
    assert picked != ship_rule_indices(labels, 4)
    counts = np.bincount(labels[picked], minlength=4)
    assert counts.tolist() == [10, 5, 0, 3]  # rounded down: the class of 9 keeps every label for training
    assert ship_rule_indices(np.full(10, -1), 0) == []
    many = np.repeat(np.arange(4), RULE_SHARE * RULE_MAX_IMAGES)  # a tenth would exceed the cap
    assert np.bincount(many[ship_rule_indices(many, 0)]).tolist() == [RULE_MAX_IMAGES // 4] * 4


@pytest.mark.parametrize("args, fragments", [
    (["--qat-epochs", "-1"], ["--qat-epochs must be a number >= 0"]),
    (["--qat-epochs", "nan"], ["--qat-epochs must be a number >= 0"]),
    (["--qat-epochs", "1", "--qat-lr", "0"], ["--qat-lr must be a number > 0"]),
    (["--qat-epochs", "1", "--qat-batch-size", "0"], ["--qat-batch-size must be >= 1"]),
    (["--qat-epochs", "1", "--no-int8"], ["add --ort-int8"]),
    (["--qat-epochs", "1", "--teacher-ckpt", "missing.pt"], ["--teacher-ckpt 'missing.pt' is not a file"]),
])
def test_bad_qat_options_get_one_line(distilled, cli, tmp_path, args, fragments):
    int8 = [] if "--no-int8" in args else ["--ort-int8"]
    args = [a for a in args if a != "--no-int8"]
    result = cli("export", "--ckpt", distilled, "--out", str(tmp_path / "e"), *int8, "--calib-size", "32",
                 "--val-size", "32", *args)
    assert_one_line_error(result, *fragments)


def test_qat_without_a_teacher_names_the_option(teacher_ckpt, cli, tmp_path):
    """A run trained alone (no teacher in its config) needs --teacher-ckpt."""
    result = cli("export", "--ckpt", teacher_ckpt, "--out", str(tmp_path / "e"), "--ort-int8", "--calib-size", "32",
                 "--val-size", "32", "--qat-epochs", "1")
    assert_one_line_error(result, "pass --teacher-ckpt PATH")


@pytest.mark.parametrize("fraction", [1.0, 0.1])
def test_qat_sees_the_labels_the_run_saw(fraction):
    """A --labelled-fraction run's QAT keeps the run's labelled subset (its --seed) and nothing more."""
    from sddcompress.data.datasets import load_dataset
    from sddcompress.data.fraction import _labels
    from sddcompress.data.label_scarce import UNLABELLED, labelled_indices
    from sddcompress.exporting.qat import labels_the_run_saw

    bundle = load_dataset("digits", input_size=16)
    every = _labels(bundle.train)
    seen = _labels(labels_the_run_saw(bundle, {"config": {"labelled_fraction": fraction, "seed": 3}}))
    kept = labelled_indices(every, fraction, 3, bundle.class_names)
    assert len(seen) == len(every) and np.array_equal(np.flatnonzero(seen != UNLABELLED), kept)
    assert np.array_equal(seen[kept], every[kept])
    assert (len(kept) == len(every)) == (fraction == 1.0)


@pytest.mark.parametrize("method, train_fraction, labelled_fraction", [
    ("sdd-dkd", 0.2, 1.0), ("sdd-dkd", 0.2, 0.5), ("sdd-dkd", 1.0, 1.0), ("ce", 0.5, 0.5)])
def test_qat_trains_on_the_images_and_labels_the_trainer_did(teacher_ckpt, tmp_path, method, train_fraction,
                                                              labelled_fraction):
    """--train-fraction and --labelled-fraction: QAT's training set is the trainer's, image for image (a run
    trained alone saw the labelled images only; a distillation run saw the others without labels)."""
    from dataclasses import asdict

    from sddcompress.data.datasets import load_dataset
    from sddcompress.data.fraction import _labels
    from sddcompress.engine.trainer import _training_data, method_from_config
    from sddcompress.exporting.qat import labels_the_run_saw

    cfg = sdd_config(tmp_path, teacher_ckpt, train_fraction=train_fraction, labelled_fraction=labelled_fraction,
                     seed=3, method=method)
    bundle = load_dataset("digits", input_size=16)
    trained, _ = _training_data(cfg, None, method_from_config(cfg), bundle, None, lambda s: None)
    seen = labels_the_run_saw(bundle, {"config": asdict(cfg)})
    assert len(seen) == len(trained.train) and (len(seen) < len(bundle.train)) == (train_fraction < 1)
    assert np.array_equal(_labels(seen), _labels(trained.train))
    for i in (0, len(seen) // 2, len(seen) - 1):
        assert np.array_equal(np.asarray(seen[i][0]), np.asarray(trained.train[i][0]))


def test_qat_trains_cross_entropy_on_the_labels(float_export, teacher_ckpt, distilled, tmp_path):
    """The same fine-tuning with and without the labels ends at different weights: the labels are read."""
    from torch.utils.data import Subset

    from sddcompress.data.label_scarce import ScarceLabels
    from sddcompress.data.fraction import _labels
    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat import distill_qdq, load_teacher, quantization_aware_net
    from sddcompress.exporting.qat_options import QatOptions

    path, result, _ = _ptq(float_export, tmp_path, "none")
    bundle = dataset_for_checkpoint(load_checkpoint(distilled), "digits", None, 16)
    teacher = load_teacher(teacher_ckpt, bundle.num_classes, 16, (1, 2, 4))
    train = Subset(bundle.train, range(128))
    unlabelled = ScarceLabels(train, _labels(train), np.array([], dtype=np.int64))
    weights = []
    for images in (train, unlabelled):
        net = quantization_aware_net(float_export / "model.onnx", path, result.rewrite)
        summary = distill_qdq(net, images, bundle.train_transform, teacher, QatOptions(epochs=1, lr=0.01), {}, 0,
                              lambda s: None)
        assert summary["labelled_images"] == (128 if images is train else 0)
        weights.append(net.float_weights())
    assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("train_fraction, labelled_fraction", [(1.0, 1.0), (1.0, 0.2), (0.5, 1.0)])
def test_qat_does_not_train_on_the_images_its_ship_rule_scores(float_export, teacher_ckpt, distilled, tmp_path,
                                                               monkeypatch, train_fraction, labelled_fraction):
    """The images that decide whether the fine-tuned model ships are left out of its training set: a tenth of
    each class's labelled images (of the labels the run saw), by index into the run's training images."""
    import sddcompress.exporting.qat as qat
    from sddcompress.data.fraction import _labels
    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat_options import QatOptions

    path, result, _ = _ptq(float_export, tmp_path, "none")
    ckpt = load_checkpoint(distilled)
    ckpt["config"] = {**ckpt["config"], "train_fraction": train_fraction, "labelled_fraction": labelled_fraction}
    bundle = dataset_for_checkpoint(ckpt, "digits", None, 16)
    seen = _labels(qat.labels_the_run_saw(bundle, ckpt))
    held = qat.ship_rule_indices(seen, int(ckpt["config"].get("seed") or 0))
    assert held and (seen[held] >= 0).all()
    assert len(held) == sum(int((seen == c).sum()) // 10 for c in range(10))
    trained_on = []

    def stop(net, images, *args, **kwargs):
        trained_on.append(images)
        raise RuntimeError("captured")

    monkeypatch.setattr(qat, "distill_qdq", stop)
    with pytest.raises(RuntimeError, match="captured"):
        qat.qat_int8(ckpt, bundle, float_export / "model.onnx", path, result,
                     QatOptions(epochs=0.05, teacher_ckpt=teacher_ckpt), lambda s: None)
    images = trained_on[0]
    assert (len(seen) < len(bundle.train)) == (train_fraction < 1) and len(images) == len(seen) - len(held)
    assert not set(images.indices) & set(held) and set(images.indices) | set(held) == set(range(len(seen)))


def test_qat_benchmark_finds_a_sweeps_students_and_scores_each_model(distilled, tmp_path):
    """benchmarks/qat.py: every student of the asked methods in a methods sweep, and per student the shipped
    model's top-1 is the fine-tuned or the post-training one, as the rule said."""
    from helpers import load_benchmark

    bench = load_benchmark("qat")
    sweep = tmp_path / "sweep"
    for name in ("resnet20-sdd-dkd-seed0", "resnet20-sdd-dkd+msdcrd-label-scarce-seed2", "resnet20-kd-seed1"):
        (sweep / name / "checkpoints").mkdir(parents=True)
        (sweep / name / "checkpoints" / "best.pt").symlink_to(distilled)
    (sweep / "resnet20-sdd-dkd-seed1" / "checkpoints").mkdir(parents=True)  # unfinished: no best.pt
    (sweep / "teacher-resnet56" / "checkpoints").mkdir(parents=True)
    found = bench.students(sweep, ["sdd-dkd", "sdd-dkd+msdcrd"])
    assert [names for _, names in found] == [
        {"run": "resnet20-sdd-dkd+msdcrd-label-scarce-seed2", "method": "sdd-dkd+msdcrd", "seed": 2,
         "scenario": "label-scarce"},
        {"run": "resnet20-sdd-dkd-seed0", "method": "sdd-dkd", "seed": 0, "scenario": "full-label"}]
    row = bench.student_row(found[1][0], tmp_path / "out", None, bench.QatOptions(0.05), 0.5)
    shipped = "fine_tuned" if row["shipped_model"] == "quantization-aware" else "post_training"
    assert row["shipped_top1"] == row[f"{shipped}_top1"] and row["rule_images"] > 0 and row["qat_steps"] >= 1
    assert all(row[f"{m}_drop"] == row["fp32_top1"] - row[f"{m}_top1"] for m in bench.MODELS)


def test_families_benchmark_distils_on_the_given_data_from_the_given_teacher(teacher_ckpt, tmp_path):
    """benchmarks/export.py --families with --data, --input-size and --teacher-ckpt: the student is distilled on
    that data at that size from that teacher, and its row carries fp32, INT8 and QAT figures."""
    from helpers import load_benchmark

    from sddcompress.engine.checkpoint import load_checkpoint

    bench = load_benchmark("export")
    row = bench.family_row("resnet8x4", tmp_path, 1, 64, 2, qat_epochs=0.05, teacher=teacher_ckpt, distil=True,
                           dataset="digits", input_size=16)
    config = load_checkpoint(str(tmp_path / "resnet8x4" / "train" / "checkpoints" / "best.pt"))["config"]
    assert (config["data"], config["input_size"], config["teacher_ckpt"], config["teacher"]) == \
        ("digits", 16, teacher_ckpt, "resnet20")
    assert row["distilled"] and 0 <= row["fp32_top1"] <= 100 and "qat_top1" in row and row["qat_rule"]["rule_images"] > 0
    assert row["drop"] == row["fp32_top1"] - row["int8_top1"]
    assert row["qat_drop"] == row["fp32_top1"] - row["qat_top1"] and row["drop_se"] >= 0

    (tmp_path / "families.json").write_text(json.dumps([row]))
    bench.rescore_main(tmp_path)  # the drops again, from the files the row left
    again, = json.loads((tmp_path / "families-paired.json").read_text())
    assert {k: again[k] for k in ("drop", "drop_se", "qat_drop", "int8_changed")} == \
        {k: row[k] for k in ("drop", "drop_se", "qat_drop", "int8_changed")}
    shipped = "qat" if row["qat_shipped"] == "quantization-aware" else "int8"
    assert again["shipped"] == shipped and again["shipped_drop"] == row["shipped_drop"]


def _preactivation_model(path) -> None:
    """conv -> ReLU -> BatchNorm -> ReLU -> conv -> global pool -> classifier: the BatchNorm follows no conv (a
    pre-activation block's), so it is not folded and its scale is a quantised weight of rank 1."""
    from onnx import helper, numpy_helper

    from helpers import random_initializers, save_constructed_classifier

    weight = random_initializers(0.5, seed=7)
    rng = np.random.default_rng(8)
    scale = np.array([0.02, 0.5, 3.0, 40.0], np.float32)  # per-tensor int8 would round the first to 0
    inits = [weight("c1.w", 4, 3, 3, 3), weight("c1.b", 4), numpy_helper.from_array(scale, "bn.scale"),
             weight("bn.bias", 4), numpy_helper.from_array(rng.random(4).astype(np.float32), "bn.mean"),
             numpy_helper.from_array(1.0 + rng.random(4).astype(np.float32), "bn.var"),
             weight("c2.w", 4, 4, 3, 3), weight("c2.b", 4), weight("fc.w", 4, 4), weight("fc.b", 4)]
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("BatchNormalization", ["r1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"],
                         name="bn"),
        helper.make_node("Relu", ["bn"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "c2.w", "c2.b"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    save_constructed_classifier(path, nodes, inits, 3, "preactivation")


def test_a_batchnorm_scale_is_quantised_per_channel_and_the_torch_model_runs_it(tmp_path, caplog):
    import onnx
    from onnx import numpy_helper

    from sddcompress.exporting.qat import quantization_aware_net
    from sddcompress_export.ort_quantization import quantize_int8

    _preactivation_model(tmp_path / "model.onnx")
    images = np.random.default_rng(9).standard_normal((64, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "model.int8.onnx"
    with caplog.at_level("WARNING"):
        result = quantize_int8(tmp_path / "model.onnx", path, images, method="minmax", keep_float="none")
    assert "out-of-range" not in caplog.text

    written = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    bn = next(n for n in written.graph.node if n.op_type == "BatchNormalization")
    dequantize = next(n for n in written.graph.node if n.output[0] == bn.input[1])
    assert dequantize.op_type == "DequantizeLinear" and inits[dequantize.input[1]].shape == (4,)
    restored = inits[dequantize.input[0]].astype(np.float32) * inits[dequantize.input[1]]
    assert np.all(np.abs(restored / np.array([0.02, 0.5, 3.0, 40.0]) - 1) < 0.01)  # each channel on its own step

    net = quantization_aware_net(tmp_path / "model.onnx", path, result.rewrite).eval()
    with torch.no_grad():
        ours = net(torch.from_numpy(images)).numpy()
    theirs = _ort_logits(path, images)
    assert np.abs(ours - theirs).max() <= _logit_step(net) * 1.001
