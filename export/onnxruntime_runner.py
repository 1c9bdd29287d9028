"""Run an ONNX classifier in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DeployError
from .metadata import load_onnx


class OrtClassifier:
    """An ONNX Runtime session that maps a (B, 3, H, W) float32 batch to (B, K) logits."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        load_onnx(path)  # a clear error for a missing/non-ONNX file before ORT's own message
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise DeployError(f"ONNX Runtime cannot load '{path}': {first}") from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.device = "cuda" if chosen[0] == "CUDAExecutionProvider" else "cpu"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images, np.float32)})[0]

    @property
    def static_batch(self) -> int | None:
        dim = self.session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) else None
