"""A wall-clock timer: warm-up, then at least N iterations and at least T seconds."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class TimingStats:
    """Per-iteration times (ms) and their summary; `batch` turns them into images/s."""

    times_ms: list[float] = field(repr=False)
    batch: int = 1
    warmup: int = 0

    @property
    def iterations(self) -> int:
        return len(self.times_ms)

    def percentile(self, q: float) -> float:
        """Linear-interpolated percentile (q in 0..100) of the iteration times."""
        xs = sorted(self.times_ms)
        if len(xs) == 1:
            return xs[0]
        pos = (len(xs) - 1) * q / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def throughput(self) -> float:
        """Images per second at the mean iteration time."""
        return 1000.0 * self.batch / self.mean

    def summary(self) -> dict:
        return {
            "iterations": self.iterations, "warmup": self.warmup, "batch": self.batch,
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "mean_ms": self.mean,
            "throughput_ips": self.throughput,
        }

    def to_dict(self) -> dict:
        return {**self.summary(), **{k: v for k, v in asdict(self).items() if k == "times_ms"}}


def measure(fn: Callable[[], object], *, warmup: int = 5, min_iters: int = 20, min_seconds: float = 0.0,
            max_iters: int = 100_000, batch: int = 1, sync: Callable[[], None] | None = None,
            clock: Callable[[], float] = time.perf_counter,
            interval: Callable[[Callable[[], object]], float] | None = None) -> TimingStats:
    """Call `fn` `warmup` times untimed, then time it until both `min_iters` and `min_seconds` are met.

    `sync` (e.g. torch.cuda.synchronize) runs before each clock read so asynchronous device work is
    counted in the iteration that launched it. `interval`, if given, times one call itself and returns
    milliseconds (e.g. with CUDA events); `clock` then only bounds the total duration.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    started = clock()
    while len(times) < max_iters and (len(times) < min_iters or clock() - started < min_seconds):
        if interval is not None:
            times.append(interval(fn))
            continue
        t0 = clock()
        fn()
        if sync:
            sync()
        times.append((clock() - t0) * 1000.0)
    return TimingStats(times, batch=batch, warmup=warmup)

