"""Run an ONNX classifier in ONNX Runtime, on the GPU execution providers when this install has them."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from .cpu_int8_plan import PLAN_STEPS, cpu_plan
from .errors import DeployError
from .metadata import load_onnx

# Most capable first. TensorRT's EP is only offered when the `tensorrt` libraries import (ORT lists it
# in every GPU build, but it needs TensorRT itself); CPU is always last.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime would quantise the float weights of a layer left in float between Q/DQ nodes (symmetric
# per-tensor int8); a layer the INT8 export keeps in float must run in float, as TensorRT runs it.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
GPU_INSTALL_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && "
                   "pip install 'onnxruntime-gpu[cuda,cudnn]' (one ONNX Runtime wheel per environment)")


@lru_cache(maxsize=1)
def _distributions_providing_onnxruntime() -> tuple[str, ...]:
    names = metadata.packages_distributions().get("onnxruntime", [])
    return tuple(sorted({n.lower().replace("_", "-") for n in names}))


def ort_distributions() -> list[str]:
    """The installed distributions that provide the `onnxruntime` module (normally exactly one)."""
    return list(_distributions_providing_onnxruntime())


def ort_install_problem() -> str | None:
    """One line naming a broken ONNX Runtime install and the fix, or None.

    `onnxruntime` and `onnxruntime-gpu` both install the `onnxruntime` module into the same folder;
    with both present, whichever was installed last wins file by file and the CUDA provider breaks.
    """
    dists = ort_distributions()
    if len(dists) > 1:
        return f"{' and '.join(dists)} are installed side by side and overwrite each other; fix: {GPU_INSTALL_FIX}"
    return None


def _tensorrt_libraries_load() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def default_providers(available: list[str] | None = None) -> list[str]:
    """The execution providers to ask for: TensorRT/CUDA when this ONNX Runtime has them, CPU otherwise."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    if "TensorrtExecutionProvider" in chosen and not _tensorrt_libraries_load():
        chosen.remove("TensorrtExecutionProvider")
    return chosen or ["CPUExecutionProvider"]


class OrtClassifier:
    """An ONNX Runtime session that maps a (B, 3, H, W) float32 batch to (B, K) logits.

    `providers=None` picks `default_providers()`; the ones the session really uses (ORT falls back
    to CPU when a GPU provider cannot load) are in `.providers`, and `.device` says where it runs.
    On the CPU provider a symmetric INT8 model runs through `cpu_int8_plan` (ReLUs and ReLU6s folded into uint8
    outputs, 7-bit weights where the input is signed and the CPU lacks VNNI, the image's channels padded to a
    multiple of 4, the spatial mean as a global pool, the remaining signed activations re-encoded as uint8;
    `.cpu_plan` counts each), unless `use_cpu_plan=False`. With `profile_prefix`,
    ONNX Runtime's profiler records every node's kernel time until `end_profiling()` returns the JSON file.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 use_cpu_plan: bool = True, profile_prefix: str | None = None) -> None:
        import onnxruntime as ort

        model = load_onnx(path)  # a clear error for a missing/non-ONNX file before ORT's own message
        problem = ort_install_problem()
        if problem:
            raise DeployError(f"ONNX Runtime install is broken: {problem}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle intra-op threads otherwise spin after each run; with two sessions in one process (the
        # side-by-side INT8/fp32 timing, the benchmark) they take the cores the other session runs on.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        available = ort.get_available_providers()
        wanted = default_providers(available) if providers is None else providers
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in chosen and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* wheels that onnxruntime-gpu[cuda,cudnn] installs
                ort.preload_dlls()
            except Exception:
                pass
        source: str | bytes = str(path)
        self.cpu_plan = dict.fromkeys(PLAN_STEPS, 0)
        if use_cpu_plan and chosen[0] == "CPUExecutionProvider":
            self.cpu_plan = cpu_plan(model)
            if any(self.cpu_plan.values()):
                source = model.SerializeToString()
        try:
            self.session = ort.InferenceSession(source, options, providers=chosen,
                                                disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise DeployError(f"ONNX Runtime cannot load '{path}': {first}") from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images, np.float32)})[0]

    def as_written(self) -> "OrtClassifier | None":
        """The same file on the same providers without the CPU plan, its Q/DQ rounding and clipping as written
        (TensorRT's); None where the plan changed nothing, so both run the same graph."""
        if not any(self.cpu_plan.values()):
            return None
        return OrtClassifier(self.path, providers=self.providers, use_cpu_plan=False)

    def end_profiling(self) -> str:
        """Stop ONNX Runtime's profiler; returns the path of the JSON file it wrote."""
        return self.session.end_profiling()

    @property
    def static_batch(self) -> int | None:
        dim = self.session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) else None


def runtime_report() -> dict:
    """What `sddcompress-deploy check` prints: ONNX Runtime's install and providers, TensorRT's status."""
    import onnxruntime as ort

    from .tensorrt_engine import tensorrt_unavailable

    report = {"onnxruntime": ort.__version__, "onnxruntime_distributions": ort_distributions(),
              "available_providers": ort.get_available_providers(),
              "providers_used": default_providers(), "tensorrt": tensorrt_unavailable() or "available"}
    problem = ort_install_problem()
    if problem:
        raise DeployError(f"ONNX Runtime install is broken: {problem}")
    return report
