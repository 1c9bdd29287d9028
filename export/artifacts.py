"""Open any exported artefact (.onnx or TensorRT .engine/.plan) as a callable classifier."""

from __future__ import annotations

from pathlib import Path

from .errors import DeployError
from .metadata import ModelMetadata, read_metadata

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artifact_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise DeployError(f"'{path}' is neither an .onnx file nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")


def open_artifact(path: str | Path, threads: int | None = None):
    """(classifier, metadata) for an artefact; the classifier maps float32 NCHW batches to logits."""
    if artifact_kind(path) == "onnx":
        from .onnxruntime_runner import OrtClassifier

        meta = read_metadata(path)
        return OrtClassifier(path, threads=threads), meta
    from .tensorrt_engine import TrtClassifier

    runner = TrtClassifier(path)
    return runner, runner.meta


def artifact_metadata(path: str | Path) -> ModelMetadata:
    if artifact_kind(path) == "onnx":
        return read_metadata(path)
    from .tensorrt_engine import engine_metadata

    return engine_metadata(path)
