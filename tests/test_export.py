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
from test_cli_errors import assert_one_line_error


def test_onnx_has_dynamic_batch_metadata_and_matches_torch(exported, teacher_ckpt):
    import torch

    from sddcompress.engine.evaluation_cli import model_from_checkpoint

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
