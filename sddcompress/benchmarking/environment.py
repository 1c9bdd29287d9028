"""The machine and library versions a measurement came from."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "none"


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return ort.get_available_providers()
    except ImportError:
        return []


def environment(threads: int) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "gpu": gpu_name(),
        "onnxruntime_providers": ort_providers(),
        "versions": {p: _version(p) for p in ("sddcompress", "torch", "torchvision", "onnx", "onnxruntime",
                                               "onnxruntime-gpu", "tensorrt", "polygraphy", "onnxconverter-common",
                                               "numpy")},
    }
