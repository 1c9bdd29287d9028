"""TensorRT engines through Polygraphy: build (fp32/fp16/int8, dynamic-batch profile, timing cache) and run.

`tensorrt` and `polygraphy` are imported lazily: on a host without them, or without an NVIDIA GPU,
`tensorrt_unavailable()` returns the one-line reason and nothing here is imported.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError
from .metadata import ModelMetadata

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install 'sddcompress[trt]' (tensorrt, polygraphy) on a host with an NVIDIA GPU and driver"


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, reason if 0) from the driver library, without torch or CUDA toolkits."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0, "no NVIDIA driver (libcuda) found"
    if lib.cuInit(0) != 0:
        return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "no NVIDIA GPU visible to the driver"
    return count.value, ""


def tensorrt_unavailable() -> str | None:
    """None when engines can be built and run here; otherwise one line naming what is missing and the fix."""
    missing = []
    gpus, why = cuda_device_count()
    if gpus == 0:
        missing.append(why)
    for module in ("tensorrt", "polygraphy"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the '{module}' package is not installed")
        except Exception as exc:  # tensorrt raises OSError/RuntimeError when its CUDA libraries are absent
            missing.append(f"'{module}' failed to import ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if not missing:
        return None
    return f"TensorRT is not available here: {'; '.join(missing)}. Fix: {INSTALL_HINT}"


def require_tensorrt() -> None:
    reason = tensorrt_unavailable()
    if reason:
        raise DeployError(reason)


@dataclass
class EngineSpec:
    """What to build: precision and the dynamic-batch optimisation profile."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 2048

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise DeployError(f"unknown TensorRT precision '{self.precision}'; use one of {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise DeployError(f"TensorRT profile needs 1 <= min <= opt <= max batch, got "
                              f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")


def calibration_batches(images: np.ndarray | None, batch: int,
                        input_name: str = "input") -> list[dict[str, np.ndarray]]:
    """Full batches of `batch` calibration images (TensorRT calibrates at the profile's opt shape)."""
    if images is None or len(images) < batch:
        have = 0 if images is None else len(images)
        raise DeployError(f"--trt int8 needs calibration data: at least {batch} images (the profile's opt batch), "
                          f"got {have}; pass --calib-size or a tensor file with calib_images")
    n = (len(images) // batch) * batch
    return [{input_name: images[s:s + batch].astype(np.float32)} for s in range(0, n, batch)]


def build_engine(onnx_path: str | Path, engine_path: str | Path, spec: EngineSpec, meta: ModelMetadata,
                 calib_images: np.ndarray | None = None, timing_cache: str | Path | None = None,
                 calib_cache: str | Path | None = None) -> Path:
    """Build and save an engine for `onnx_path`; writes `<engine>.json` with the preprocessing metadata."""
    spec.validate()
    batches = None
    if spec.precision == "int8":
        batches = calibration_batches(calib_images, spec.opt_batch, meta.input_name)
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import (Calibrator, CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile,
                                        SaveEngine)

    size = meta.input_size
    shape = lambda b: (b, 3, size, size)  # noqa: E731
    profile = Profile().add(meta.input_name, min=shape(spec.min_batch), opt=shape(spec.opt_batch),
                            max=shape(spec.max_batch))
    calibrator = None
    if batches is not None:
        calibrator = Calibrator(data_loader=batches, cache=str(calib_cache) if calib_cache else None)
    timing_cache = Path(timing_cache) if timing_cache else None
    config = CreateConfig(
        fp16=spec.precision in ("fp16", "int8"), int8=spec.precision == "int8", profiles=[profile],
        calibrator=calibrator, memory_pool_limits={trt.MemoryPoolType.WORKSPACE: spec.workspace_mib << 20},
        load_timing_cache=str(timing_cache) if timing_cache and timing_cache.exists() else None)
    build = EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config,
                              save_timing_cache=str(timing_cache) if timing_cache else None)
    engine_path = Path(engine_path)
    try:
        SaveEngine(build, path=str(engine_path))()
    except Exception as exc:
        raise DeployError(f"TensorRT could not build '{onnx_path}' ({spec.precision}): "
                          f"{str(exc).strip().splitlines()[0][:300]}") from None
    sidecar = {**meta.__dict__, "extra": {**meta.extra, "precision": spec.precision,
                                          "tensorrt_version": trt.__version__,
                                          "profile": [spec.min_batch, spec.opt_batch, spec.max_batch]}}
    Path(str(engine_path) + ".json").write_text(json.dumps(sidecar, indent=2))
    return engine_path


def engine_metadata(engine_path: str | Path) -> ModelMetadata:
    side = Path(str(engine_path) + ".json")
    if not side.is_file():
        raise DeployError(f"'{side}' is missing: engines carry their preprocessing in a sidecar JSON written "
                          "by `sddcompress export --trt`")
    values = json.loads(side.read_text())
    return ModelMetadata(**{k: v for k, v in values.items() if k in ModelMetadata.__dataclass_fields__})


class TrtClassifier:
    """A deserialised engine behind Polygraphy's TrtRunner: (B, 3, H, W) float32 -> (B, K) logits."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path) -> None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise DeployError(f"engine file '{engine_path}' does not exist")
        require_tensorrt()
        import tensorrt as trt
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.meta = engine_metadata(engine_path)
        try:
            engine = EngineFromBytes(BytesFromPath(str(engine_path)))()
        except Exception:
            engine = None
        if engine is None:
            built = self.meta.extra.get("tensorrt_version", "an unknown version")
            raise DeployError(f"TensorRT {trt.__version__} cannot deserialise '{engine_path}' (built with TensorRT "
                              f"{built}, possibly on another GPU); rebuild it on this host with "
                              "`sddcompress-deploy build-trt`")
        self.runner = TrtRunner(engine)
        self.runner.activate()
        self.path = engine_path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.meta.input_name: np.ascontiguousarray(images, np.float32)})
        return np.asarray(out[self.meta.output_name])

    def close(self) -> None:
        self.runner.deactivate()
