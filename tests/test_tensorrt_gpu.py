"""Real TensorRT engines (fp32 / fp16 / int8, strongly typed) on an NVIDIA GPU: `pytest -m gpu`.

Skipped, with the reason, on a host without an NVIDIA GPU, tensorrt or polygraphy. Accuracy: top-1 of
each engine within 0.5 point of ONNX Runtime fp32 on the same images. Speed: fp16 and int8 engines
faster than fp32 at batch 32, timed side by side in this process with the input already on the GPU
(so the comparison is of the engines, not of host<->device copies).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from sddcompress_export.tensorrt_engine import tensorrt_unavailable

REASON = tensorrt_unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def student_export(tmp_path_factory) -> dict:
    """A ResNet-20 student trained a few epochs on digits (16 px), exported with the Q/DQ INT8 model."""
    from sddcompress.engine.config import TrainConfig
    from sddcompress.engine.trainer import run
    from sddcompress.exporting.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("gpu-student")
    result = run(TrainConfig(model="resnet20", data="digits", input_size=16, epochs=8, batch_size=64, lr=0.05,
                             out=str(out / "run"), log_every=1000, cpu=True), echo=lambda s: None)
    return run_export(ExportOptions(ckpt=str(result.best), out=str(out / "export"), ort_int8=True, calib_size=256,
                                    trt=["fp32", "fp16", "int8"]), echo=lambda s: None)


def test_engines_keep_ort_fp32_accuracy(student_export):
    ort_top1 = student_export["artifacts"]["onnx"]["metrics"]["top1"]
    engines = student_export["artifacts"]["tensorrt"]
    assert set(engines) == {"fp32", "fp16", "int8"}
    for precision, entry in engines.items():
        assert abs(entry["metrics"]["top1"] - ort_top1) <= 0.5, (precision, entry["metrics"], ort_top1)


def _engine_ms(path: str, batch: np.ndarray, iters: int = 300) -> float:
    from polygraphy.cuda import DeviceArray

    from sddcompress_export.tensorrt_engine import TrtClassifier

    clf = TrtClassifier(path)
    try:
        device_input = DeviceArray(shape=batch.shape, dtype=batch.dtype).copy_from(batch)
        feed = {clf.meta.input_name: device_input}
        for _ in range(30):
            clf.runner.infer(feed, copy_outputs_to_host=False)
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            clf.runner.infer(feed, copy_outputs_to_host=False)  # synchronous: returns after the stream syncs
            times.append(time.perf_counter() - started)
        device_input.free()
        return statistics.median(times) * 1000
    finally:
        clf.close()


def test_fp16_and_int8_engines_are_faster_than_fp32_at_batch_32(tmp_path):
    """A wider CIFAR ResNet at 32 px, so the engines do enough work per call for precision to matter."""
    from sddcompress.exporting.onnx_writer import write_onnx
    from sddcompress.models import build_model
    from sddcompress_export.chain import int8_model, tensorrt_engine
    from sddcompress_export.metadata import ModelMetadata

    net = build_model("resnet32x4", 100, 32).eval()
    meta = ModelMetadata(class_names=[str(i) for i in range(100)], input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    onnx_path = tmp_path / "model.onnx"
    write_onnx(net, onnx_path, meta)
    calib = np.random.default_rng(0).normal(size=(64, 3, 32, 32)).astype(np.float32)
    batch = calib[:32].copy()
    ms = {}
    int8_path = int8_model(onnx_path, tmp_path / "model.int8.onnx", calib).path
    for precision in ("fp32", "fp16", "int8"):
        model = int8_path if precision == "int8" else onnx_path
        engine, _ = tensorrt_engine(model, precision, tmp_path / f"model.{precision}.engine", (1, 32, 32))
        ms[precision] = _engine_ms(str(engine), batch)
    assert ms["fp16"] < ms["fp32"] and ms["int8"] < ms["fp32"], ms
