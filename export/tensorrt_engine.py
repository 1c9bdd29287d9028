"""TensorRT engines through Polygraphy, strongly typed (TensorRT 10 and 11): build and run.

The precision lives in the ONNX file, not in builder flags (TensorRT 11 removed weak typing):
fp32 is the exported model as is, fp16 an fp16 copy with fp32 inputs/outputs (`fp16_onnx`),
int8 the Q/DQ model `model.int8.onnx` (explicit quantisation, symmetric int8). The network is
parsed strongly typed, with one dynamic-batch optimisation profile and a reusable timing cache;
no calibrator, no calibration cache, no precision flags.

`tensorrt` and `polygraphy` are imported lazily: on a host without them, or without an NVIDIA GPU,
`tensorrt_unavailable()` returns the one-line reason and nothing here touches the GPU.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .defaults import DEFAULTS
from .errors import DeployError
from .metadata import ModelMetadata, load_onnx

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("pip install 'sddcompress[trt]' (tensorrt, polygraphy, onnxconverter-common) on a host with an "
                "NVIDIA GPU and driver")


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
    """What to build: the precision (a label: the ONNX file carries it) and the dynamic-batch profile."""

    precision: str = DEFAULTS.precision
    min_batch: int = DEFAULTS.min_batch
    opt_batch: int = DEFAULTS.opt_batch
    max_batch: int = DEFAULTS.max_batch

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise DeployError(f"unknown TensorRT precision '{self.precision}'; use one of {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise DeployError(f"TensorRT profile needs 1 <= min <= opt <= max batch, got "
                              f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")


def check_explicit_int8(onnx_path: str | Path) -> None:
    """A DeployError unless `onnx_path` is a Q/DQ model TensorRT can build: int8 with zero points 0."""
    from onnx import TensorProto, numpy_helper

    model = load_onnx(onnx_path)
    inits = {t.name: t for t in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not quantize:
        raise DeployError(f"'{onnx_path}' has no QuantizeLinear/DequantizeLinear nodes; TensorRT builds int8 only "
                          "from a Q/DQ model: pass model.int8.onnx from `sddcompress export --ort-int8` or "
                          "`sddcompress-deploy quantize`")
    for node in quantize:
        zero_name = node.input[2] if len(node.input) > 2 else ""
        if not zero_name:  # no zero point: ONNX then quantises to uint8
            kind = "uint8"
        elif zero_name not in inits:
            continue  # computed elsewhere in the graph; TensorRT's parser will judge it
        elif inits[zero_name].data_type != TensorProto.INT8:
            kind = "uint8"
        elif np.any(numpy_helper.to_array(inits[zero_name]) != 0):
            kind = "asymmetric int8"
        else:
            continue
        raise DeployError(f"'{onnx_path}' uses {kind} quantisation (at {node.name or node.output[0]}); TensorRT "
                          "needs symmetric int8 (zero point 0): re-quantise with symmetric int8 activations")


def build_plan(onnx_path: str | Path, engine_path: str | Path, spec: EngineSpec, meta: ModelMetadata,
               timing_cache: str | Path | None = None):
    """The Polygraphy loader chain that builds and saves the engine (constructed here, run by the caller).

    Strongly typed network from the ONNX file, one optimisation profile (min/opt/max batch), the
    timing cache loaded when it exists and saved after the build; no precision flags, no calibrator.
    Nothing here needs tensorrt until the returned loader is called.
    """
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    spec.validate()
    size = meta.input_size

    def shape(batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, size, size)

    profile = Profile().add(meta.input_name, min=shape(spec.min_batch), opt=shape(spec.opt_batch),
                            max=shape(spec.max_batch))
    cache = Path(timing_cache) if timing_cache else None
    config = CreateConfig(profiles=[profile],
                          load_timing_cache=str(cache) if cache and cache.exists() else None)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    engine = EngineFromNetwork(network, config=config, save_timing_cache=str(cache) if cache else None)
    return SaveEngine(engine, path=str(engine_path))


def build_engine(onnx_path: str | Path, engine_path: str | Path, spec: EngineSpec, meta: ModelMetadata,
                 timing_cache: str | Path | None = None) -> Path:
    """Build and save an engine for `onnx_path` (already in the wanted precision); writes `<engine>.json`
    with the preprocessing metadata, the precision, the TensorRT version and the profile."""
    spec.validate()
    if spec.precision == "int8":
        check_explicit_int8(onnx_path)
    require_tensorrt()
    import tensorrt as trt

    engine_path = Path(engine_path)
    try:
        build_plan(onnx_path, engine_path, spec, meta, timing_cache)()
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DeployError(f"TensorRT {trt.__version__} could not build '{onnx_path}' ({spec.precision}): {text}") \
            from None
    sidecar = {**meta.__dict__, "extra": {**meta.extra, "precision": spec.precision, "source_onnx": str(onnx_path),
                                          "tensorrt_version": trt.__version__,
                                          "profile": [spec.min_batch, spec.opt_batch, spec.max_batch]}}
    Path(str(engine_path) + ".json").write_text(json.dumps(sidecar, indent=2))
    return engine_path


def engine_metadata(engine_path: str | Path) -> ModelMetadata:
    side = Path(str(engine_path) + ".json")
    if not side.is_file():
        raise DeployError(f"'{side}' is missing: engines carry their preprocessing in a sidecar JSON written "
                          "by `sddcompress export --trt`")
    try:
        values = json.loads(side.read_text())
        return ModelMetadata(**{k: v for k, v in values.items() if k in ModelMetadata.__dataclass_fields__})
    except (ValueError, TypeError, AttributeError) as exc:
        raise DeployError(f"engine sidecar '{side}' is broken ({type(exc).__name__}); rebuild the engine with "
                          "`sddcompress-deploy build-trt` or `sddcompress export --trt`") from None


def profile_batches(meta: ModelMetadata) -> tuple[int, int]:
    """(min, max) batch of the engine's optimisation profile, from its sidecar."""
    low, _, high = meta.extra.get("profile", [1, 1, 1])
    return int(low), int(high)


def chunks(images: np.ndarray, max_batch: int) -> list[np.ndarray]:
    """`images` split into consecutive pieces of at most `max_batch`."""
    return [images[s:s + max_batch] for s in range(0, len(images), max_batch)]


class TrtClassifier:
    """A deserialised engine behind Polygraphy's TrtRunner: (B, 3, H, W) float32 -> (B, K) logits.

    Any batch size works: batches above the profile's max are run in chunks. Outputs are copied,
    because TrtRunner reuses its output buffers on the next call.
    """

    backend = "tensorrt"
    device = "cuda"
    clock_note = "host->device input and device->host output copies inside each call"

    def __init__(self, engine_path: str | Path) -> None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise DeployError(f"engine file '{engine_path}' does not exist")
        self.meta = engine_metadata(engine_path)
        require_tensorrt()
        import tensorrt as trt
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        try:
            engine = EngineFromBytes(BytesFromPath(str(engine_path)))()
        except Exception:
            engine = None
        if engine is None:
            built = self.meta.extra.get("tensorrt_version", "an unknown version")
            raise DeployError(f"TensorRT {trt.__version__} cannot deserialise '{engine_path}' (built with TensorRT "
                              f"{built}, possibly on another GPU); rebuild it on this host with "
                              "`sddcompress-deploy build-trt`")
        self.min_batch, self.max_batch = profile_batches(self.meta)
        self.runner = TrtRunner(engine)
        self.runner.activate()
        self.path = engine_path

    def _run(self, images: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.meta.input_name: np.ascontiguousarray(images, np.float32)})
        return np.array(out[self.meta.output_name], dtype=np.float32, copy=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) < self.min_batch:
            raise DeployError(f"batch of {len(images)} is below the engine's profile minimum {self.min_batch}; "
                              "rebuild with --min-batch 1")
        if len(images) <= self.max_batch:
            return self._run(images)
        return np.concatenate([self._run(piece) for piece in chunks(images, self.max_batch)])

    def close(self) -> None:
        self.runner.deactivate()
