"""Static INT8 quantisation (QDQ, per-channel weights) of an ONNX classifier with ONNX Runtime's tools."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import DeployError
from .metadata import load_onnx


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_images: np.ndarray, batch_size: int = 16,
                  method: str = "minmax") -> Path:
    """Calibrate on `calib_images` (preprocessed, N x 3 x H x W) and write a QDQ INT8 model.

    Activations are unsigned 8-bit, weights signed 8-bit per output channel; the graph is pre-processed
    (shape inference, fusions) first, as ONNX Runtime recommends. Metadata is carried over.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calib_images) == 0:
        raise DeployError("INT8 quantisation needs calibration images; pass --calib-size N > 0")
    source = load_onnx(fp32_path)
    input_name = source.graph.input[0].name
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise DeployError(f"unknown calibration method '{method}'; use one of {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calib_images[s:s + batch_size].astype(np.float32)
                                 for s in range(0, len(calib_images), batch_size)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared, skip_symbolic_shape=True)
        staged = os.path.join(tmp, "int8.onnx")
        quantize_static(prepared, staged, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        model = onnx.load(staged)
        del model.metadata_props[:]
        model.metadata_props.extend(source.metadata_props)
        onnx.save(model, str(out_path))
    return out_path
