"""The TensorRT part of `sddcompress export`: one ONNX file per precision, then strongly typed engines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from sddcompress_export.classifier_metrics import logits_metrics, predict_all
from sddcompress_export.metadata import ModelMetadata
from sddcompress_export.parity import compare_logits


def precision_onnx(onnx_path: Path, precision: str, out: Path, calib_images: np.ndarray,
                   int8_path: str | None = None) -> Path:
    """The ONNX file TensorRT builds for `precision`: fp32 as is, an fp16 copy (fp32 I/O), or the Q/DQ model.

    `int8_path` is the Q/DQ model this export already wrote (--ort-int8); without one it is made here
    from the calibration images, so an engine never comes from another checkpoint's file.
    """
    if precision == "fp32":
        return onnx_path
    if precision == "fp16":
        from sddcompress_export.fp16_onnx import convert_to_fp16

        return convert_to_fp16(onnx_path, out / "model.fp16.onnx")
    if int8_path:
        return Path(int8_path)
    from sddcompress_export.ort_quantization import quantize_int8

    return quantize_int8(onnx_path, out / "model.int8.onnx", calib_images).path


def build_engines(onnx_path: Path, out: Path, precisions: list[str], batches: tuple[int, int, int],
                  meta: ModelMetadata, calib_images: np.ndarray, val_images: np.ndarray, labels: np.ndarray,
                  reference_logits: np.ndarray, int8_path: str | None,
                  echo: Callable[[str], None]) -> dict:
    """Build one engine per precision, score it on the validation images; the report entry per precision."""
    from sddcompress_export.tensorrt_engine import EngineSpec, TrtClassifier, build_engine

    engines = {}
    for precision in precisions:
        spec = EngineSpec(precision, *batches)
        started = time.perf_counter()
        source = precision_onnx(onnx_path, precision, out, calib_images, int8_path)
        path = build_engine(source, out / f"model.{precision}.engine", spec, meta, timing_cache=out / "timing.cache")
        runner = TrtClassifier(path)
        try:
            logits = predict_all(runner, val_images, 64)  # the runner splits batches above the profile's max
        finally:
            runner.close()
        metrics = logits_metrics(logits, labels)
        engines[precision] = {"path": str(path), "onnx": str(source), "build_seconds": time.perf_counter() - started,
                              "metrics": metrics, "parity": compare_logits(reference_logits, logits)}
        echo(f"TensorRT {precision}: {path} (from {source.name}): top-1 {metrics['top1']:.2f}")
    return engines
