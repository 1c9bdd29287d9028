"""The backends a model can be measured on, each behind the same small runner interface.

A runner takes the SAME preprocessed float32 NCHW numpy batch for every backend; `prepare` does any
one-off host-side conversion outside the timed region, `run` is timed. Every `run` goes from a batch
in host memory to logits in host memory, so on a GPU torch-CUDA, ONNX Runtime (CUDA/TensorRT EP) and
TensorRT all include the host->device and device->host copies in their timings: one definition for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

BACKENDS = ("torch-eager", "torch-compiled", "ort-fp32", "ort-int8", "trt-fp32", "trt-fp16", "trt-int8")


GPU_CLOCK = "time.perf_counter, host->device and device->host copies inside"


class Runner:
    """Interface: prepare(batch) -> handle; run(handle) -> logits (any type); to_numpy(out) -> ndarray."""

    device = "cpu"
    clock = "time.perf_counter"

    def prepare(self, batch: np.ndarray) -> Any:
        return np.ascontiguousarray(batch, np.float32)

    def run(self, handle: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, out: Any) -> np.ndarray:
        return np.asarray(out)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.to_numpy(self.run(self.prepare(batch)))

    def sync(self) -> None:
        """Wait for queued device work (no-op on CPU)."""

    def close(self) -> None:
        pass


class TorchRunner(Runner):
    def __init__(self, model, compiled: bool = False, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = device
        self.model = model.eval().to(device)
        self.fn = torch.compile(self.model) if compiled else self.model
        self.clock = GPU_CLOCK if device == "cuda" else "time.perf_counter"

    def prepare(self, batch: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(batch, np.float32))  # stays on the host

    def run(self, handle):
        """Host batch -> device -> model -> host logits (`.cpu()` waits for the GPU), like ORT and TensorRT."""
        with self.torch.inference_mode():
            return self.fn(handle.to(self.device)).float().cpu()

    def to_numpy(self, out) -> np.ndarray:
        return out.numpy()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class ArtifactRunner(Runner):
    """ONNX Runtime sessions and TensorRT engines (both return host numpy arrays, so calls are synchronous)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.device = getattr(classifier, "device", "cpu")
        self.clock = GPU_CLOCK if self.device == "cuda" else "time.perf_counter"
        self.providers = getattr(classifier, "providers", None)  # ONNX Runtime: the execution providers used

    def run(self, handle):
        return self.classifier(handle)

    def close(self) -> None:
        close = getattr(self.classifier, "close", None)
        if close:
            close()


@dataclass
class Candidate:
    """One (model, backend) cell: either a way to build its runner, or the reason it is skipped."""

    model: str
    backend: str
    make: Callable[[], Runner] | None = None
    skipped: str | None = None
    artifact: str | None = None
