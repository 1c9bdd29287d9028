"""Per-epoch metrics to JSONL and CSV (and TensorBoard through Accelerate when installed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


class MetricsLog:
    """Appends one record per epoch to metrics.jsonl and metrics.csv in `out`."""

    def __init__(self, out: Path) -> None:
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"

    def write(self, record: dict) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)

    def drop_after(self, epoch: int) -> None:
        """On resume: forget records of epochs the resumed run will redo."""
        if not self.jsonl.exists():
            return
        kept = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if r.get("epoch", 0) <= epoch]
        self.jsonl.unlink()
        self.csv.unlink(missing_ok=True)
        for r in kept:
            self.write(r)


def format_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in terms.items())
