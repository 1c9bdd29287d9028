"""The TensorRT part of `sddcompress export`: one engine per precision, built by the chain, scored here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from sddcompress_export.chain import engine_file, tensorrt_engine
from sddcompress_export.classifier_metrics import logits_metrics, predict_all
from sddcompress_export.parity import compare_logits
from sddcompress_export.tensor_file import TensorFile


def build_engines(onnx_path: Path, int8_source: Callable[[], Path], out: Path, precisions: list[str],
                  batches: tuple[int, int, int], tensors: TensorFile, reference_logits: np.ndarray,
                  echo: Callable[[str], None]) -> dict:
    """Build one engine per precision (int8 from the Q/DQ model `int8_source()` returns, the others from
    `onnx_path`) and score it on the validation images; the report entry per precision."""
    from sddcompress_export.tensorrt_engine import TrtClassifier

    engines = {}
    for precision in precisions:
        started = time.perf_counter()
        model = int8_source() if precision == "int8" else onnx_path
        path, source = tensorrt_engine(model, precision, out / engine_file(precision), batches)
        runner = TrtClassifier(path)
        try:
            logits = predict_all(runner, tensors.val_images, 64)  # the runner splits batches above the profile's max
        finally:
            runner.close()
        metrics = logits_metrics(logits, tensors.val_labels)
        engines[precision] = {"path": str(path), "onnx": str(source), "build_seconds": time.perf_counter() - started,
                              "metrics": metrics, "parity": compare_logits(reference_logits, logits)}
        echo(f"TensorRT {precision}: {path} (from {source.name}): top-1 {metrics['top1']:.2f}")
    return engines
