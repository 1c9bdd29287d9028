"""Per-epoch metrics to JSONL and CSV (and TensorBoard through Accelerate when installed)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sddcompress_export.atomic import atomic_write_text


class MetricsLog:
    """Appends one record per epoch to metrics.jsonl and metrics.csv in `out`.

    A record is written after the checkpoint of its epoch, so the log never runs ahead of the
    checkpoints; `truncate_to` brings it back in line with the checkpoint a run starts from.
    """

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

    def records(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        rows = []
        for line in self.jsonl.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line torn by a kill mid-write
                continue
        return rows

    def truncate_to(self, epoch: int, last_record: dict | None = None) -> None:
        """Keep one record per epoch up to `epoch` (the checkpoint's); put back `last_record` (the
        checkpoint's own epoch) if a kill came between saving the checkpoint and logging it."""
        rows = self.records()
        by_epoch = {r["epoch"]: r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch}
        if last_record and last_record.get("epoch") == epoch and epoch not in by_epoch:
            by_epoch[epoch] = last_record
        kept = [by_epoch[e] for e in sorted(by_epoch)]
        if kept == rows and (self.csv.exists() or not kept):
            return
        self._rewrite(kept)

    def drop_after(self, epoch: int) -> None:
        """On resume: forget records of epochs the resumed run will redo."""
        self.truncate_to(epoch)

    def _rewrite(self, rows: list[dict]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        table = io.StringIO()
        if rows:
            writer = csv.DictWriter(table, fieldnames=list(rows[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for path, content in ((self.jsonl, text), (self.csv, table.getvalue())):
            if not content:
                path.unlink(missing_ok=True)
                continue
            atomic_write_text(path, content)


def format_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in terms.items())
