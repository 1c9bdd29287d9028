"""The torch-free stages of the deployment chain, shared by every command that builds artefacts.

  tensor file (data.npz) -> model.onnx (+ parity)  : made from a checkpoint by `sddcompress.exporting`
  model.onnx -> model.int8.onnx                    : `int8_model`, static symmetric Q/DQ INT8
  model.onnx -> model.fp16.onnx -> model.fp16.engine
  model.onnx / model.int8.onnx -> model.{fp32,int8}.engine : `tensorrt_engine`

`sddcompress export`, `sddcompress-deploy` and `sddcompress benchmark` call these functions with the
defaults of `defaults.DEFAULTS` and the file names below, so the same inputs give the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .defaults import DEFAULTS

TENSOR_FILE = "data.npz"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"
TIMING_CACHE = "timing.cache"
DEFAULT_BATCHES = (DEFAULTS.min_batch, DEFAULTS.opt_batch, DEFAULTS.max_batch)


def engine_file(precision: str) -> str:
    return f"model.{precision}.engine"


def int8_model(onnx_path: str | Path, out_path: str | Path, calib_images: np.ndarray,
               calib_labels: np.ndarray | None = None, calib_size: int = DEFAULTS.calib_size,
               method: str = DEFAULTS.calib_method, keep_float: str = DEFAULTS.keep_float,
               max_drop: float = DEFAULTS.max_drop, echo: Callable[[str], None] = lambda s: None, speed=None):
    """Quantise the fp32 ONNX file on the first `calib_size` calibration images (and their labels, which let
    the held-out slice be scored by top-1); returns the `QuantizationResult`. With `keep_float='auto'` the
    layers kept float are also chosen for speed on this CPU (`precision_plan`), timed by `speed` (default:
    measured here; tests pass a stand-in)."""
    from .ort_quantization import quantize_int8

    labels = None if calib_labels is None else calib_labels[:calib_size]
    return quantize_int8(onnx_path, out_path, calib_images[:calib_size], labels, method=method,
                         keep_float=keep_float, max_drop=max_drop, echo=echo, speed=speed)


def fp16_path(engine_path: str | Path) -> Path:
    """Where the fp16 ONNX file an fp16 engine is built from goes: beside the engine, same stem."""
    return Path(engine_path).with_suffix(".onnx")


def tensorrt_engine(onnx_path: str | Path, precision: str, engine_path: str | Path,
                    batches: tuple[int, int, int] = DEFAULT_BATCHES,
                    timing_cache: str | Path | None = None) -> tuple[Path, Path]:
    """Build a strongly typed engine; returns (engine path, the ONNX file it was built from).

    `onnx_path` is the fp32 model for fp32 and fp16 (fp16 builds from an fp16 copy written to
    `fp16_path(engine_path)`), and the Q/DQ model from `int8_model` for int8. The preprocessing metadata is
    read from the ONNX file; the timing cache defaults to `timing.cache` beside the engine and is reused.
    A wrong file is refused before the check for a GPU, which is refused before anything is written.
    """
    from .metadata import read_metadata
    from .tensorrt_engine import EngineSpec, build_engine, check_explicit_int8, require_tensorrt

    spec = EngineSpec(precision, *batches)
    spec.validate()
    meta = read_metadata(onnx_path)
    if precision == "int8":
        check_explicit_int8(onnx_path)
    require_tensorrt()
    engine_path = Path(engine_path)
    source = Path(onnx_path)
    if precision == "fp16":
        from .fp16_onnx import convert_to_fp16

        source = convert_to_fp16(onnx_path, fp16_path(engine_path))
    timing = timing_cache or engine_path.parent / TIMING_CACHE
    return build_engine(source, engine_path, spec, meta, timing_cache=timing), source
