"""Peak memory while a block runs: CUDA's allocator statistics on GPU, sampled process RSS on CPU."""

from __future__ import annotations

import threading


class PeakMemory:
    """Use as a context manager; `.peak_mb` is the peak above the level at entry (None if unmeasurable).

    On CPU the resident set size is sampled every 2 ms, so it includes every library's allocations
    (PyTorch, ONNX Runtime arenas) but can miss spikes shorter than the sampling period.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device, self.peak_mb, self.method = device, None, ""

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        try:
            import psutil
        except ImportError:
            self.method = "unavailable (psutil not installed)"
            return self
        self._proc = psutil.Process()
        self._base = self._top = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.method = "process RSS sampled every 2 ms"
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._top = max(self._top, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._top = max(self._top, self._proc.memory_info().rss)
            self.peak_mb = (self._top - self._base) / 2**20
