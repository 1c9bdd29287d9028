"""How much faster the INT8 model runs than fp32, measured side by side in one process.

Both models get the same batch, round after round (fp32, INT8, fp32, ...), so drift in the machine's
load hits them alike; the ratio of the median times is reported, not absolute times, and beside it the
ratio of the fastest calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

GOAL_RATIO = 0.7  # INT8 time / fp32 time at batch 32 in ONNX Runtime
BATCH = 32
ROUNDS = 300  # at most: about 2 s for the quickstart student; fewer short calls let load swing the ratio widely
TIME_BUDGET_S = 15.0  # timed calls of both models together; long calls (224-px models) get fewer rounds
MIN_ROUNDS = 30  # at least, however long the calls


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """`batch` images from `images`, repeating them when there are fewer."""
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch], np.float32)


def ms_side_by_side(models: dict[str, Callable[[np.ndarray], object]], images: np.ndarray,
                    rounds: int = ROUNDS, warmup: int = 3) -> dict[str, list[float]]:
    """The milliseconds of every call of each model, the models interleaved call by call."""
    for _ in range(warmup):
        for run in models.values():
            run(images)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, run in models.items():
            started = time.perf_counter()
            run(images)
            times[name].append((time.perf_counter() - started) * 1e3)
    return times


def ms_within_budget(models: dict[str, Callable[[np.ndarray], object]], images: np.ndarray, budget_s: float,
                     at_least: int, at_most: int, warmup: int = 2) -> dict[str, list[float]]:
    """`ms_side_by_side` for as many rounds as fit in `budget_s` seconds (within [at_least, at_most]), judged by
    the time of one round after `warmup` rounds (which warm the models up for the timing)."""
    ms_side_by_side(models, images, rounds=0, warmup=warmup)
    started = time.perf_counter()
    ms_side_by_side(models, images, rounds=0, warmup=1)
    per_round = max(time.perf_counter() - started, 1e-6)
    rounds = int(min(at_most, max(at_least, budget_s / per_round)))
    return ms_side_by_side(models, images, rounds=rounds, warmup=0)


def median_ms_side_by_side(models: dict[str, Callable[[np.ndarray], object]], images: np.ndarray,
                           rounds: int = ROUNDS, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each model, the models interleaved call by call."""
    times = ms_side_by_side(models, images, rounds=rounds, warmup=warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def int8_latency_ratio(fp32: Callable[[np.ndarray], object], int8: Callable[[np.ndarray], object],
                       images: np.ndarray, batch: int = BATCH, rounds: int | None = None) -> dict:
    """{"batch", "rounds", "fp32_ms", "int8_ms", "ratio", "fastest_ratio", "goal"}: INT8 / fp32 median time
    at `batch` (the verdict), and the ratio of each model's fastest call (its speed when nothing else
    interfered; on a shared machine the medians carry its load as well). `rounds` defaults to as many as fit
    in `TIME_BUDGET_S`, between `MIN_ROUNDS` and `ROUNDS`."""
    x = batch_of(images, batch)
    models = {"fp32": fp32, "int8": int8}
    ms = ms_within_budget(models, x, TIME_BUDGET_S, MIN_ROUNDS, ROUNDS) if rounds is None else \
        ms_side_by_side(models, x, rounds=rounds)
    rounds = len(ms["fp32"])
    fp32_ms, int8_ms = statistics.median(ms["fp32"]), statistics.median(ms["int8"])
    ratio, fastest = int8_ms / fp32_ms, min(ms["int8"]) / min(ms["fp32"])
    goal = (f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}: INT8 takes {ratio:.2f}x the fp32 time at batch "
            f"{batch} (goal <= {GOAL_RATIO}; fastest calls {fastest:.2f}x)")
    return {"batch": batch, "rounds": rounds, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "ratio": ratio,
            "fastest_ratio": fastest, "goal": goal}
