"""Export stage: ONNX correctness and metadata, INT8, the torch-free path (TensorRT: test_tensorrt.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from sddcompress_export.errors import DeployError
from sddcompress_export.metadata import read_metadata
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.tensor_file import load_tensor_file
from helpers import assert_one_line_error


def test_onnx_has_dynamic_batch_metadata_and_matches_torch(exported, teacher_ckpt):
    import torch

    from sddcompress.engine.checkpoint_eval import model_from_checkpoint

    path = Path(exported["artifacts"]["onnx"]["path"])
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert exported["artifacts"]["onnx"]["opset"] == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    meta = read_metadata(path)
    ckpt_meta = torch.load(teacher_ckpt, weights_only=True)
    assert meta.class_names == [str(c) for c in ckpt_meta["class_names"]] or meta.class_names == ckpt_meta["class_names"]
    assert meta.input_size == 16 and meta.mean == pytest.approx(ckpt_meta["normalization"]["mean"])
    assert meta.source_checkpoint_sha256 and len(meta.source_checkpoint_sha256) == 64
    net, _ = model_from_checkpoint(teacher_ckpt)
    ort_model = OrtClassifier(path)
    for batch in (1, 7):  # any batch size
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        with torch.inference_mode():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ort_model(x), want, atol=1e-4, rtol=1e-4)


def test_report_records_parity_and_accuracy(exported):
    report = json.loads((Path(exported["out"]) / "export_report.json").read_text())
    parity = report["artifacts"]["onnx"]["parity"]
    assert parity["count"] == 200 and parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 100.0
    assert report["artifacts"]["onnx"]["metrics"]["top1"] == pytest.approx(report["torch_metrics"]["top1"])
    assert report["status"] == "ok"


def test_ort_int8_is_static_qdq_per_channel(exported):
    info = exported["artifacts"]["ort_int8"]
    model = onnx.load(info["path"])
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: i for i in model.graph.initializer}
    # per-channel: some DequantizeLinear of a weight has a vector scale
    vector_scales = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert vector_scales
    assert info["bytes"] < 0.5 * exported["artifacts"]["onnx"]["bytes"]
    assert read_metadata(info["path"]).input_size == 16  # metadata carried over
    assert abs(info["metrics"]["top1"] - exported["artifacts"]["onnx"]["metrics"]["top1"]) <= 5.0


def test_tensor_file_holds_preprocessed_splits(exported):
    data = load_tensor_file(exported["tensor_file"]["path"])
    assert data.calib_images.shape == (64, 3, 16, 16) and data.val_images.shape == (200, 3, 16, 16)
    assert data.val_labels.dtype == np.int64 and data.class_names
    assert abs(float(data.val_images.mean())) < 1.0  # normalised, not raw pixels


def test_eval_artifact_equals_eval_for_fp32_onnx(cli, exported, teacher_ckpt):
    code, out, _ = cli("eval", "--ckpt", teacher_ckpt, "--json")
    assert code == 0
    want = json.loads(out)
    code, out, err = cli("eval-artifact", "--model", exported["artifacts"]["onnx"]["path"], "--data", "digits",
                         "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["top1"], got["top5"], got["count"]) == (want["top1"], want["top5"], want["count"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_deployment_stage_runs_without_torch(exported):
    """The export/ package on a host with no torch: block the import and score both artefacts."""
    script = (
        "import sys, json\n"
        "sys.modules['torch'] = None\n"
        "from sddcompress_export.cli import main\n"
        f"main(['eval', {exported['artifacts']['ort_int8']['path']!r}, '--data', "
        f"{exported['tensor_file']['path']!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 200


def test_trt_request_without_gpu_is_one_line_and_keeps_onnx(cli, teacher_ckpt, tmp_path):
    result = cli("export", "--ckpt", teacher_ckpt, "--out", str(tmp_path), "--trt", "fp16", "--val-size", "50")
    assert_one_line_error(result, "TensorRT is not available here", "sddcompress[trt]", "model.onnx was written")
    assert (tmp_path / "model.onnx").is_file()
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert "not available" in report["artifacts"]["tensorrt"]["skipped"]


@pytest.mark.parametrize("args,fragment", [
    (["--ckpt", "nope.pt"], "nope.pt"),
    (["--opset", "11"], "--opset 11 is not supported"),
    (["--trt", "int8", "--calib-size", "0"], "--trt int8 needs calibration data"),
    (["--atol", "0"], "parity failure"),
])
def test_export_bad_inputs(cli, teacher_ckpt, tmp_path, args, fragment):
    base = ["export", "--out", str(tmp_path / "o"), "--val-size", "40"]
    if "--ckpt" not in args:
        base += ["--ckpt", teacher_ckpt]
    assert_one_line_error(cli(*base, *args), fragment)


def test_export_corrupt_checkpoint(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("export", "--ckpt", str(bad), "--out", str(tmp_path / "o")), "bad.pt")


def test_export_unwritable_out(cli, teacher_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(cli("export", "--ckpt", teacher_ckpt, "--out", str(blocker / "sub")), "not writable")


def test_eval_artifact_not_a_model(cli, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage\xff" * 10)
    assert_one_line_error(cli("eval-artifact", "--model", str(junk), "--data", "digits"), "is not an ONNX model")


def test_deploy_cli_missing_tensor_file(exported, capsys):
    from sddcompress_export.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", exported["artifacts"]["onnx"]["path"], "--data", "missing.npz"])
    assert exc.value.code == 2
    assert "missing.npz' does not exist" in capsys.readouterr().err


def test_fixed_batch_export(cli, teacher_ckpt, tmp_path):
    code, out, err = cli("export", "--ckpt", teacher_ckpt, "--out", str(tmp_path), "--batch", "1", "--opset", "19",
                         "--val-size", "20")
    assert code == 0, err
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["artifacts"]["onnx"]["parity"]["count"] == 20


def _deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sddcompress_export.cli", *args], capture_output=True, text=True)


def test_deploy_cli_quantize_info_and_build_trt_boundary(exported, tmp_path):
    onnx_path, npz = exported["artifacts"]["onnx"]["path"], exported["tensor_file"]["path"]
    done = _deploy("quantize", onnx_path, "--data", npz, "--out", str(tmp_path / "q.onnx"), "--calib-size", "32")
    assert done.returncode == 0, done.stderr
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    info = json.loads(_deploy("info", str(tmp_path / "q.onnx")).stdout)
    assert info["input_size"] == 16 and len(info["mean"]) == 3
    trt = _deploy("build-trt", onnx_path, "--precision", "fp16")
    assert trt.returncode == 2
    assert trt.stderr.strip().count("\n") == 0 and "TensorRT is not available here" in trt.stderr


def test_tensor_file_of_another_input_size_is_refused(exported, tmp_path, cli):
    from sddcompress_export.tensor_file import save_tensor_file

    small = save_tensor_file(tmp_path / "s.npz", np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 8, 8)), np.zeros(4), ["a"],
                             [0.0] * 3, [1.0] * 3)
    msg = "holds 8px images but the model expects 16px"
    assert_one_line_error(cli("eval-artifact", "--model", exported["artifacts"]["onnx"]["path"], "--data", str(small)),
                          msg)
    done = _deploy("eval", exported["artifacts"]["onnx"]["path"], "--data", str(small))
    assert done.returncode == 2 and msg in done.stderr


# ---- INT8: one symmetric QDQ artefact, calibrated and picked on training images only ----

def _quant_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_zero_points_are_all_zero_int8(exported):
    from onnx import TensorProto

    from sddcompress_export.ort_quantization import zero_points

    model = onnx.load(exported["artifacts"]["ort_int8"]["path"])
    points = zero_points(model)
    assert len(points) >= len(_quant_nodes(model)) // 2 > 0  # activations and weights
    assert all(v == 0 for values in points.values() for v in values)
    inits = {i.name: i for i in model.graph.initializer}
    activation_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_points and {inits[name].data_type for name in activation_points} == {TensorProto.INT8}
    # weights int8 (signed, symmetric around 0); only biases are int32, as QDQ biases always are
    assert {inits[name].data_type for name in points} == {TensorProto.INT8, TensorProto.INT32}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].data_type == TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 for n in weight_dq)  # per-channel conv weights


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_each_calibration_method_produces_a_model(exported, tmp_path, method):
    from sddcompress_export.ort_quantization import quantize_int8, zero_points

    data = load_tensor_file(exported["tensor_file"]["path"])
    result = quantize_int8(exported["artifacts"]["onnx"]["path"], tmp_path / "q.onnx", data.calib_images[:32],
                           data.calib_labels[:32], method=method, keep_float="none")
    assert result.method == method and result.float_nodes == [] and result.held_out_images == 8
    model = onnx.load(str(result.path))
    assert _quant_nodes(model) and all(v == 0 for vs in zero_points(model).values() for v in vs)
    logits = OrtClassifier(result.path)(data.val_images[:4])
    assert logits.shape == (4, len(data.class_names)) and np.isfinite(logits).all()


def test_auto_picks_on_held_out_calibration_images_never_validation(exported, tmp_path, monkeypatch):
    """Every image ONNX Runtime sees while quantising is a calibration (training) image: calibration runs on
    the first 3/4, method/layer choices are scored on the last 1/4, and no validation image is ever fed."""
    import onnxruntime as ort

    import sddcompress_export.channel_balance as channel_balance
    import sddcompress_export.ort_quantization as ort_quantization
    from sddcompress.exporting.pipeline import ExportOptions, run_export

    data = load_tensor_file(exported["tensor_file"]["path"])
    seen: list[tuple[str, np.ndarray]] = []
    quantising, probing = [], []  # set while quantize_int8 runs; while the channel rewrite probes the float graph
    real_run = ort.InferenceSession.run

    def recording_run(self, output_names, feed, *args, **kwargs):
        if quantising:
            kind = "probe" if probing else str(getattr(self, "_model_path", ""))
            seen.extend((kind, x) for x in feed.values())
        return real_run(self, output_names, feed, *args, **kwargs)

    def flagged(real, flag: list):
        def call(*args, **kwargs):
            flag.append(True)
            try:
                return real(*args, **kwargs)
            finally:
                flag.clear()
        return call

    monkeypatch.setattr(ort.InferenceSession, "run", recording_run)
    monkeypatch.setattr(ort_quantization, "quantize_int8", flagged(ort_quantization.quantize_int8, quantising))
    monkeypatch.setattr(channel_balance, "channel_maxima", flagged(channel_balance.channel_maxima, probing))
    report = run_export(ExportOptions(ckpt=exported["checkpoint"], out=str(tmp_path), ort_int8=True,
                                      calib_file=exported["tensor_file"]["path"]), echo=lambda s: None)
    info = report["artifacts"]["ort_int8"]
    fit, held = data.calib_images[:48], data.calib_images[48:]
    assert info["calibration_images"] == 48 and info["held_out_images"] == 16

    def rows_in(batch: np.ndarray, pool: np.ndarray) -> bool:
        flat = pool.reshape(len(pool), -1)
        return all((flat == row.reshape(1, -1)).all(1).any() for row in batch)

    calibration = [x for path, x in seen if "augmented" in path or path == "probe"]
    scoring = [x for path, x in seen if "augmented" not in path and path != "probe"]
    assert calibration and scoring
    assert all(rows_in(x, fit) for x in calibration)
    assert all(rows_in(x, held) for x in scoring)
    assert not any(rows_in(x[:1], data.val_images) for _, x in seen)
    candidates = info["quantization"]["candidates"]
    assert set(candidates) == {"minmax", "percentile", "entropy"} and info["calibration_requested"] == "auto"
    best = min(candidates[m]["held_out_drop"] for m in candidates)
    assert candidates[info["calibration_method"]]["held_out_drop"] == best


def test_int8_report_names_method_float_layers_and_drop(exported):
    from sddcompress_export import latency_ratio

    report = json.loads((Path(exported["out"]) / "export_report.json").read_text())
    info = report["artifacts"]["ort_int8"]
    assert info["calibration_method"] in ("minmax", "percentile", "entropy")
    assert isinstance(info["float_nodes"], list) and info["float_reason"]
    assert info["top1_drop"] == pytest.approx(report["artifacts"]["onnx"]["metrics"]["top1"] - info["metrics"]["top1"])
    assert info["goal"].startswith("met" if info["top1_drop"] <= 0.5 else "NOT met")
    images = report["artifacts"]["onnx"]["metrics"]["count"]
    assert f"(standard error {info['top1_drop_standard_error']:.2f} on {images} validation images)" in info["goal"]
    assert info["changed_predictions"] > 0 or info["top1_drop_standard_error"] == 0
    assert info["quantization"]["held_out_fp32_top1"] is not None
    latency = info["latency"]  # INT8 vs fp32 in ORT at batch 32, side by side
    assert latency["batch"] == 32 and latency["fp32_ms"] > 0 and latency["int8_ms"] > 0
    assert latency["ratio"] == pytest.approx(latency["int8_ms"] / latency["fp32_ms"])
    assert latency["goal"].startswith("met" if latency["ratio"] <= 0.7 else "NOT met")
    assert latency["fastest_ratio"] > 0 and latency_ratio.MIN_ROUNDS <= latency["rounds"] <= latency_ratio.ROUNDS
    if "one_thread" in latency:
        assert set(latency["one_thread"]) == {"fp32_ms", "int8_ms", "ratio", "fastest_ratio"}


def test_int8_verdict_says_how_finely_the_validation_images_resolve_the_drop():
    from sddcompress.exporting.int8_report import verdict

    assert verdict(0.3, 0.5, [], 0.25, 400) == "met: top-1 drop +0.30 <= 0.5 points (standard error 0.25 on 400 " \
                                               "validation images)"
    near = verdict(0.7, 0.5, ["conv1"], 0.3, 400)
    assert near.startswith("NOT met: post-training quantisation loses 0.70 top-1 points here (standard error 0.30 "
                           "on 400 validation images) (1 node in float); that is within one standard error")
    assert "--val-size" in near and "--qat-epochs" in near
    far = verdict(1.7, 0.5, [], 0.3, 400)
    assert "--val-size" not in far and "--qat-epochs" in far
    assert "standard error" not in verdict(0.7, 0.5, []) and "standard error" not in verdict(0.7, 0.5, [], None, 1)


def test_latency_ratio_interleaves_the_models_on_one_batch():
    import numpy as np

    from sddcompress_export.latency_ratio import batch_of, median_ms_side_by_side

    images = np.arange(5 * 3, dtype=np.float32).reshape(5, 3, 1, 1)
    x = batch_of(images, 12)  # fewer images than the batch: repeated in order
    assert x.shape == (12, 3, 1, 1) and np.array_equal(x[5:10], images) and np.array_equal(x[10:], images[:2])
    calls = []
    ms = median_ms_side_by_side({"a": lambda b: calls.append(("a", len(b))),
                                 "b": lambda b: calls.append(("b", len(b)))}, x, rounds=4, warmup=1)
    assert calls == [("a", 12), ("b", 12)] * 5 and set(ms) == {"a", "b"}


def test_latency_ratio_times_as_many_rounds_as_fit_its_budget(monkeypatch):
    """Calls of a set length on a fake clock: long calls get fewer rounds, never fewer than MIN_ROUNDS nor more
    than ROUNDS."""
    import numpy as np

    from sddcompress_export import latency_ratio

    clock = [0.0]
    monkeypatch.setattr(latency_ratio.time, "perf_counter", lambda: clock[0])
    images = np.zeros((2, 3, 1, 1), np.float32)

    def rounds_for(ms: float) -> int:
        def run(_):
            clock[0] += ms / 1e3
        return latency_ratio.int8_latency_ratio(run, run, images, batch=4)["rounds"]

    monkeypatch.setattr(latency_ratio, "TIME_BUDGET_S", 15.0)
    assert rounds_for(1.0) == latency_ratio.ROUNDS
    assert rounds_for(62.5) == 120  # a round of two calls takes 0.125 s: 15 s hold 120
    assert rounds_for(15_000.0) == latency_ratio.MIN_ROUNDS


def test_latency_ratio_reports_medians_and_fastest_calls(monkeypatch):
    """A fake clock that each call advances by a set time: the verdict uses the medians, `fastest_ratio`
    the minimums (a load spike on one call moves neither)."""
    import numpy as np

    from sddcompress_export import latency_ratio

    clock = [0.0]
    fp32_ms, int8_ms = iter([4.0] * 3 + [5.0, 4.0, 9.0]), iter([3.0] * 3 + [3.5, 2.8, 3.0])

    def call(durations):
        def run(_):
            clock[0] += next(durations) / 1e3
        return run

    monkeypatch.setattr(latency_ratio.time, "perf_counter", lambda: clock[0])
    images = np.zeros((2, 3, 1, 1), np.float32)
    result = latency_ratio.int8_latency_ratio(call(fp32_ms), call(int8_ms), images, batch=4, rounds=3)
    assert result["fp32_ms"] == pytest.approx(5.0) and result["int8_ms"] == pytest.approx(3.0)
    assert result["ratio"] == pytest.approx(0.6) and result["fastest_ratio"] == pytest.approx(2.8 / 4.0)
    assert result["goal"] == "met: INT8 takes 0.60x the fp32 time at batch 4 (goal <= 0.7; fastest calls 0.70x)"


def test_keep_float_ends_leaves_first_conv_and_classifier_unquantised(exported, tmp_path):
    from sddcompress_export.ort_quantization import quantize_int8

    data = load_tensor_file(exported["tensor_file"]["path"])
    result = quantize_int8(exported["artifacts"]["onnx"]["path"], tmp_path / "q.onnx", data.calib_images[:32],
                           method="minmax", keep_float="ends")
    model = onnx.load(str(result.path))
    produced_by = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name for i in model.graph.initializer}
    kept = [n for n in model.graph.node if n.name in result.float_nodes]
    assert len(kept) == 2 and {n.op_type for n in kept} <= {"Conv", "Gemm", "MatMul"}
    for node in kept:  # float weights straight from an initializer, no DequantizeLinear in front
        assert node.input[1] in inits and node.input[1] not in produced_by
    quantised = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in result.float_nodes]
    assert quantised and all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in quantised)
    with pytest.raises(DeployError, match="no node named 'nope'"):
        quantize_int8(exported["artifacts"]["onnx"]["path"], tmp_path / "r.onnx", data.calib_images[:16],
                      keep_float="nope")


def test_expected_drop_counts_every_pair():
    from sddcompress_export.ort_quantization import expected_drop

    rng = np.random.default_rng(3)
    margins = rng.integers(-40, 80, 97) / 8.0  # eighths: every sum below is exact
    changes = rng.integers(-120, 40, 97) / 8.0
    pairs = (margins[:, None] + changes[None, :]) > 0
    assert expected_drop(margins, changes) == pytest.approx(100.0 * ((margins > 0).mean() - pairs.mean()), abs=1e-12)
    assert expected_drop(margins, np.zeros(97)) == 0.0
    assert expected_drop(np.zeros(8), np.zeros(8)) == 0.0  # tied logits: no change, no drop


@pytest.mark.parametrize("images, calibrate", [(7, 7), (8, 6), (32, 24), (256, 192), (341, 256), (1024, 256),
                                               (3000, 256)])
def test_training_images_beyond_what_calibration_needs_are_held_out(images, calibrate):
    """Three quarters calibrate, at most 256; the rest, in order, score the INT8 choices (none below 8 images)."""
    from sddcompress_export.ort_quantization import split_calibration

    x, labels = np.arange(images, dtype=np.float32).reshape(images, 1), np.arange(images) % 10
    fit, held, held_labels = split_calibration(x, labels)
    assert len(fit) == calibrate and np.array_equal(np.concatenate([fit, held]), x)
    assert np.array_equal(held_labels, labels[calibrate:])


def test_a_drop_too_rare_to_count_on_the_held_out_slice_is_expected():
    """INT8 cuts 2 margins of 64 by 10, on the two images confident enough to stay right: counted on these
    64 images nothing is lost, but the same cut on any of the other 62 (margin 2) would flip it, so the expected
    top-1 is 100 x (1 - 2 x 62 / 64^2) and that drop decides."""
    from sddcompress_export.ort_quantization import score_against

    labels = np.arange(64) % 10
    ref = np.zeros((64, 10), np.float32)
    ref[np.arange(64), labels] = 2.0
    ref[[5, 40], labels[[5, 40]]] = 20.0
    quantized = ref.copy()
    quantized[[5, 40], labels[[5, 40]]] -= 10.0
    score = score_against(quantized, ref, labels)
    assert score.top1 == score.fp32_top1 == score.agreement == 100.0
    assert score.expected_top1 == pytest.approx(100.0 * (1 - 2 * 62 / 64 ** 2))
    assert score.drop() == pytest.approx(100.0 - score.expected_top1) and score.drop() > 0.5  # default max drop
    unlabelled = score_against(quantized, ref, None)
    assert unlabelled.top1 is None and unlabelled.drop() == pytest.approx(2 * 62 / 64 ** 2 * 100.0)
    gentle = score_against(ref + np.float32(0.5), ref, labels)  # every logit moved alike: no margin changes
    assert gentle.drop() == 0.0 and gentle.expected_top1 == 100.0


def test_a_float_layer_must_win_back_accuracy_not_just_logit_error():
    from sddcompress_export.ort_quantization import HeldOutScore, wins_back_accuracy

    best = HeldOutScore(top1=96.875, agreement=96.875, logit_mse=1.0)
    assert not wins_back_accuracy(HeldOutScore(96.875, 96.875, 0.5), best)  # same predictions, smaller error
    assert wins_back_accuracy(HeldOutScore(98.4375, 96.875, 1.2), best)     # one more image right
    assert wins_back_accuracy(HeldOutScore(96.875, 98.4375, 1.2), best)     # closer to fp32's predictions
    assert not wins_back_accuracy(HeldOutScore(95.3125, 100.0, 0.1), best)  # top-1 decides first


def test_a_calibration_method_that_fails_is_skipped_under_auto(exported, tmp_path, monkeypatch):
    """A histogram calibrator that raises (a degenerate activation range) leaves `auto` the other methods;
    asked for by name, it is one line naming the other choices."""
    import sddcompress_export.ort_quantization as ort_quantization
    from sddcompress_export.errors import DeployError

    real = ort_quantization._Quantizer.quantize

    def percentile_fails(self, method, *args, **kwargs):
        if method == "percentile":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        return real(self, method, *args, **kwargs)

    monkeypatch.setattr(ort_quantization._Quantizer, "quantize", percentile_fails)
    data = load_tensor_file(exported["tensor_file"]["path"])
    said: list[str] = []
    result = ort_quantization.quantize_int8(exported["artifacts"]["onnx"]["path"], tmp_path / "q.onnx",
                                            data.calib_images[:32], data.calib_labels[:32], method="auto",
                                            keep_float="none", echo=said.append)
    assert result.method in ("minmax", "entropy") and result.path.is_file()
    assert result.candidates["percentile"] == {"error": "Too many bins for data range. Cannot create 2048 "
                                                        "finite-sized bins."}
    assert "INT8 percentile: calibration failed (Too many bins for data range. Cannot create 2048 finite-sized " \
           "bins.); skipped" in said
    with pytest.raises(DeployError, match=r"^INT8 calibration with percentile failed \(Too many bins.*\); pass "
                                          r"another --int8-calibration \(auto, minmax, entropy\)$"):
        ort_quantization.quantize_int8(exported["artifacts"]["onnx"]["path"], tmp_path / "p.onnx",
                                       data.calib_images[:32], data.calib_labels[:32], method="percentile",
                                       keep_float="none")


def test_calibration_benchmark_quantises_one_export_with_each_size(teacher_ckpt, tmp_path):
    """benchmarks/calibration.py: one export holding the largest size's training images; each size splits them
    as the INT8 stage does and is scored on the same validation images."""
    from helpers import load_benchmark

    bench = load_benchmark("calibration")
    rows = bench.checkpoint_rows(Path(teacher_ckpt), tmp_path / "out", [4, 32, 400], None)
    assert [(r["calib_size"], r["calibrated"], r["held_out"]) for r in rows] == \
        [(4, 4, 0), (32, 24, 8), (400, 256, 144)]
    data = load_tensor_file(tmp_path / "out" / "data.npz")
    assert len(data.calib_images) == 400 and len({r["fp32_top1"] for r in rows}) == 1
    fp32 = OrtClassifier(tmp_path / "out" / "model.onnx")(data.val_images).argmax(1)
    for r in rows:
        int8 = OrtClassifier(tmp_path / "out" / f"model.int8-{r['calib_size']}.onnx")(data.val_images).argmax(1)
        assert r["fp32_top1"] == pytest.approx(100.0 * (fp32 == data.val_labels).mean())
        assert r["drop"] == pytest.approx(r["fp32_top1"] - 100.0 * (int8 == data.val_labels).mean())
        assert r["agreement"] == pytest.approx(100.0 * (int8 == fp32).mean())
        assert r["ship"] in ("int8", "fp32") and (r["held_out_drop"] is None) == (r["held_out"] == 0)
    text = bench.table(rows, [4, 32, 400])  # four images: nothing held out, no held-out drop to print
    assert text.count("\n| resnet20 |") == 3 and "| 400 | 1 |" in text
