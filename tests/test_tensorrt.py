"""TensorRT, strongly typed, up to the GPU boundary, against the REAL Polygraphy and onnxconverter-common.

What is real here: Polygraphy's loader/config objects (the build plan is inspected, not mirrored),
the fp16 ONNX conversion (run in ONNX Runtime on the CPU), the Q/DQ int8 check on models made with
ONNX Runtime's quantiser. What cannot be installed on a CPU-only host is the TensorRT runtime and a
GPU: the few tests that need one use a stand-in for exactly that and say so. On a GPU host the
`gpu` tests (test_tensorrt_gpu.py) build and run real engines.
"""

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
from sddcompress_export.tensor_file import load_tensor_file
from sddcompress_export.tensorrt_engine import EngineSpec, tensorrt_unavailable

polygraphy_trt = pytest.importorskip("polygraphy.backend.trt", reason="polygraphy is in the dev extra")


@pytest.fixture(scope="module")
def onnx_path(exported) -> str:
    return exported["artifacts"]["onnx"]["path"]


@pytest.fixture(scope="module")
def tensors(exported):
    return load_tensor_file(exported["tensor_file"]["path"])


# ---- the build plan: real Polygraphy objects ----

def test_build_plan_is_strongly_typed_with_profile_and_no_precision_flags(onnx_path, tmp_path):
    from sddcompress_export.tensorrt_engine import build_plan

    meta = read_metadata(onnx_path)
    plan = build_plan(onnx_path, tmp_path / "m.engine", EngineSpec("fp16", 1, 8, 32), meta, tmp_path / "timing.cache")
    assert isinstance(plan, polygraphy_trt.SaveEngine) and plan.path == str(tmp_path / "m.engine")
    build = plan._engine  # Polygraphy keeps the loaders it chains; nothing of ours is mirrored
    assert isinstance(build, polygraphy_trt.EngineFromNetwork)
    network, config = build._network, build._config
    assert isinstance(network, polygraphy_trt.NetworkFromOnnxPath)
    assert network.path == onnx_path and network.strongly_typed is True
    assert isinstance(config, polygraphy_trt.CreateConfig)
    # strongly typed: the precision is in the ONNX file; no weak-typing flags, no calibrator
    assert (config.fp16, config.int8, config.bf16, config.fp8, config.tf32) == (False,) * 5
    assert config.calibrator is None and config.precision_constraints is None
    assert len(config.profiles) == 1
    shapes = config.profiles[0][meta.input_name]
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    # the timing cache: saved after the build; nothing to load yet
    assert build.timing_cache_path == str(tmp_path / "timing.cache") and config.timing_cache_path is None


def test_build_plan_reuses_an_existing_timing_cache(onnx_path, tmp_path):
    from sddcompress_export.tensorrt_engine import build_plan

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from an earlier build")
    plan = build_plan(onnx_path, tmp_path / "m.engine", EngineSpec("fp32", 2, 4, 16), read_metadata(onnx_path), cache)
    assert plan._engine._config.timing_cache_path == str(cache)
    shapes = plan._engine._config.profiles[0]["input"]
    assert (shapes.min[0], shapes.opt[0], shapes.max[0]) == (2, 4, 16)


def test_profile_validation():
    with pytest.raises(DeployError, match="min <= opt <= max"):
        EngineSpec("fp16", 4, 2, 8).validate()
    with pytest.raises(DeployError, match="unknown TensorRT precision"):
        EngineSpec("int4").validate()


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="a GPU host: the boundary is not reached")
def test_build_without_tensorrt_is_one_line(onnx_path, tmp_path):
    from sddcompress_export.tensorrt_engine import build_engine

    with pytest.raises(DeployError, match="TensorRT is not available here") as err:
        build_engine(onnx_path, tmp_path / "m.engine", EngineSpec("fp32"), read_metadata(onnx_path))
    assert "\n" not in str(err.value) and "sddcompress[trt]" in str(err.value)
    assert not (tmp_path / "m.engine").exists()


# ---- fp16: a real conversion, run in ONNX Runtime ----

def test_fp16_onnx_keeps_fp32_io_and_matches_fp32(onnx_path, tensors, tmp_path):
    from onnx import TensorProto

    from sddcompress_export.classifier_metrics import logits_metrics, predict_all
    from sddcompress_export.fp16_onnx import convert_to_fp16, is_fp16_onnx
    from sddcompress_export.onnxruntime_runner import OrtClassifier

    out = convert_to_fp16(onnx_path, tmp_path / "model.fp16.onnx", converter="onnxconverter-common")
    model = onnx.load(str(out))
    assert is_fp16_onnx(model) and not is_fp16_onnx(onnx.load(onnx_path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert read_metadata(out) == read_metadata(onnx_path)  # preprocessing travels with it

    fp32 = predict_all(OrtClassifier(onnx_path, providers=["CPUExecutionProvider"]), tensors.val_images)
    fp16 = predict_all(OrtClassifier(out, providers=["CPUExecutionProvider"]), tensors.val_images)
    assert fp16.dtype == np.float32
    scale = np.abs(fp32).max()
    assert np.abs(fp16 - fp32).max() <= 0.02 * scale  # fp16 rounding, not a different model
    agreement = (fp16.argmax(1) == fp32.argmax(1)).mean() * 100
    assert agreement >= 98.0
    top1 = logits_metrics(fp16, tensors.val_labels)["top1"], logits_metrics(fp32, tensors.val_labels)["top1"]
    assert abs(top1[0] - top1[1]) <= 1.0


def test_fp16_without_a_converter_is_one_line(onnx_path, tmp_path, monkeypatch):
    import sddcompress_export.fp16_onnx as f16

    monkeypatch.setattr(f16, "fp16_converter", lambda: None)
    with pytest.raises(DeployError, match="fp16 converter; fix: pip install"):
        f16.convert_to_fp16(onnx_path, tmp_path / "x.onnx")


# ---- int8: TensorRT builds only symmetric Q/DQ models ----

def _quantize(onnx_path: str, out: Path, calib: np.ndarray, symmetric: bool) -> Path:
    """A Q/DQ model made directly with ONNX Runtime's quantiser (independent of our own INT8 code)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[:16]}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(onnx_path, str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": symmetric})
    return out


def test_explicit_int8_check(onnx_path, tensors, tmp_path):
    from sddcompress_export.tensorrt_engine import check_explicit_int8

    check_explicit_int8(_quantize(onnx_path, tmp_path / "sym.onnx", tensors.calib_images, symmetric=True))
    with pytest.raises(DeployError, match="uses uint8 quantisation.*symmetric int8"):
        check_explicit_int8(_quantize(onnx_path, tmp_path / "u8.onnx", tensors.calib_images, symmetric=False))
    with pytest.raises(DeployError, match="no QuantizeLinear/DequantizeLinear nodes"):
        check_explicit_int8(onnx_path)


def test_int8_engine_request_refuses_an_fp32_model_before_the_gpu_check(onnx_path, tmp_path):
    from sddcompress_export.tensorrt_engine import build_engine

    with pytest.raises(DeployError, match="Q/DQ model"):
        build_engine(onnx_path, tmp_path / "m.engine", EngineSpec("int8"), read_metadata(onnx_path))


def _deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sddcompress_export.cli", *args], capture_output=True, text=True)


def test_deploy_build_trt_int8_on_fp32_model_is_one_line(onnx_path):
    done = _deploy("build-trt", onnx_path, "--precision", "int8")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "Q/DQ model" in done.stderr


# ---- running engines: a stand-in for the GPU runtime only ----

class ReusingRunner:
    """STAND-IN for Polygraphy's TrtRunner, which needs a GPU and the tensorrt runtime (not installable
    here). Like the real one, it returns the SAME output buffer on every call, overwritten each time."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch, self.batches = max_batch, []
        self.buffer = np.zeros((max_batch, 10), np.float32)

    def infer(self, feed):
        images = feed["input"]
        assert len(images) <= self.max_batch, "a real engine rejects a batch above its profile"
        self.batches.append(len(images))
        view = self.buffer[: len(images)]
        view[:] = images.reshape(len(images), -1)[:, :10]
        return {"logits": view}


def _classifier_on_stand_in(max_batch: int):
    from sddcompress_export.metadata import ModelMetadata
    from sddcompress_export.tensorrt_engine import TrtClassifier

    clf = object.__new__(TrtClassifier)  # everything but the engine deserialisation, which needs the GPU
    clf.meta = ModelMetadata(class_names=[str(i) for i in range(10)], input_size=4, mean=[0.0] * 3, std=[1.0] * 3,
                             extra={"profile": [1, 8, max_batch]})
    clf.min_batch, clf.max_batch = 1, max_batch
    clf.runner = ReusingRunner(max_batch)
    return clf


def test_engine_outputs_are_copied_and_large_batches_chunked():
    from sddcompress_export.classifier_metrics import score

    clf = _classifier_on_stand_in(32)
    images = np.random.default_rng(0).normal(size=(70, 3, 4, 4)).astype(np.float32)
    first = clf(images[:5])
    second = clf(images[5:10])
    assert np.array_equal(first, images[:5].reshape(5, -1)[:, :10])  # not overwritten by the second call
    assert np.array_equal(second, images[5:10].reshape(5, -1)[:, :10])
    clf.runner.batches.clear()
    logits = clf(images)  # 70 > the profile's 32: run as 32 + 32 + 6
    assert clf.runner.batches == [32, 32, 6]
    assert np.array_equal(logits, images.reshape(70, -1)[:, :10])
    labels = logits.argmax(1)
    assert score(clf, images, labels, batch_size=64)["top1"] == 100.0  # eval's default batch on a max-32 engine


def test_engine_from_another_tensorrt_is_one_line(exported, tmp_path, monkeypatch):
    """STAND-IN: a `tensorrt` module with only a version (the runtime needs a GPU). Polygraphy's real
    EngineFromBytes then fails to deserialise, as it does for an engine from another TensorRT/GPU."""
    import types

    import sddcompress_export.tensorrt_engine as te

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setattr(te, "cuda_device_count", lambda: (1, ""))
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"an engine serialised elsewhere")
    meta = read_metadata(exported["artifacts"]["onnx"]["path"])
    Path(str(engine) + ".json").write_text(json.dumps({**meta.__dict__, "extra": {"tensorrt_version": "10.9.0",
                                                                                  "profile": [1, 8, 32]}}))
    with pytest.raises(DeployError, match=r"TensorRT 11.4.0 cannot deserialise .*built with TensorRT 10.9.0.*"
                                          r"rebuild it on this host"):
        te.TrtClassifier(engine)


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="a GPU host: the boundary is not reached")
def test_eval_artifact_on_an_engine_without_tensorrt_is_one_line(cli, exported, tmp_path):
    from helpers import assert_one_line_error

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"engine")
    meta = read_metadata(exported["artifacts"]["onnx"]["path"])
    Path(str(engine) + ".json").write_text(json.dumps({**meta.__dict__, "extra": {"profile": [1, 8, 32]}}))
    assert_one_line_error(cli("eval-artifact", "--model", str(engine), "--data", exported["tensor_file"]["path"],
                              "--batch-size", "64"), "TensorRT is not available here")
