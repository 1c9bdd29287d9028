"""How much faster the INT8 model runs than fp32, measured side by side in one process.

Both models get the same batch, round after round (fp32, INT8, fp32, ...), so drift in the machine's
load hits them alike; the ratio of the median times is reported, not absolute times.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

GOAL_RATIO = 0.7  # INT8 time / fp32 time at batch 32 in ONNX Runtime
BATCH = 32


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """`batch` images from `images`, repeating them when there are fewer."""
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch], np.float32)


def median_ms_side_by_side(models: dict[str, Callable[[np.ndarray], object]], images: np.ndarray,
                           rounds: int = 100, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each model, the models interleaved call by call."""
    for _ in range(warmup):
        for run in models.values():
            run(images)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, run in models.items():
            started = time.perf_counter()
            run(images)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def int8_latency_ratio(fp32: Callable[[np.ndarray], object], int8: Callable[[np.ndarray], object],
                       images: np.ndarray, batch: int = BATCH, rounds: int = 100) -> dict:
    """{"batch", "fp32_ms", "int8_ms", "ratio", "goal"}: INT8 / fp32 median time at `batch`."""
    x = batch_of(images, batch)
    ms = median_ms_side_by_side({"fp32": fp32, "int8": int8}, x, rounds=rounds)
    ratio = ms["int8"] / ms["fp32"]
    goal = (f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}: INT8 takes {ratio:.2f}x the fp32 time at batch "
            f"{batch} (goal <= {GOAL_RATIO})")
    return {"batch": batch, "rounds": rounds, "fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "ratio": ratio,
            "goal": goal}
