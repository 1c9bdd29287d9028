"""`sddcompress runs [FOLDER]`: one table of the train/distill runs under a folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError


def find_runs(root: Path) -> list[Path]:
    """Run folders (holding checkpoints/latest.pt or metrics.jsonl) under `root`, sorted by path."""
    found = {p.parent.parent for p in root.rglob("checkpoints/latest.pt")}
    found |= {p.parent for p in root.rglob("metrics.jsonl")}
    return sorted(found)


class DamagedRun(Exception):
    """A run's file holds something our runs never write; the message says which file and line."""


def _number(value) -> float | None:
    """`value` if it is a real number (not a bool), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _from_metrics(run_dir: Path) -> dict:
    """Epoch, best and last val top-1 from metrics.jsonl; DamagedRun if a line is not a metrics record.
    An unparsable last line without its newline is a write a kill cut short, and is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DamagedRun(f"metrics.jsonl cannot be read ({why})") from None
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                continue
            raise DamagedRun(f"metrics.jsonl line {number} is not JSON") from None
        if not isinstance(row, dict) or _number(row.get("epoch")) is None or _number(row.get("val_top1")) is None:
            raise DamagedRun(f"metrics.jsonl line {number} is not a metrics record (epoch and val_top1 numbers)")
        rows.append(row)
    if not rows:
        return {}
    return {"epoch": rows[-1]["epoch"], "best_top1": max(r["val_top1"] for r in rows),
            "last_top1": rows[-1]["val_top1"]}


def describe_run(run_dir: Path) -> dict:
    """What a run folder holds, from its latest checkpoint (weights_only) and, failing that, its metrics.

    Both files are read as untrusted: a value of the wrong type is left out, and a file that is not
    what a run writes gives the row an `error` (shown as damaged) instead of stopping the listing."""
    from ..engine.checkpoint import load_checkpoint

    info: dict = {"run": str(run_dir)}
    try:
        info.update(_from_metrics(run_dir))
    except DamagedRun as exc:
        info["error"] = str(exc)
    latest = run_dir / "checkpoints" / "latest.pt"
    try:
        ckpt = load_checkpoint(latest) if latest.is_file() else {}
    except UserError as exc:
        info.setdefault("error", str(exc))
        ckpt = {}
    config = _dict(ckpt.get("config"))
    fraction = _number(config.get("train_fraction", 1.0))
    info.update({
        "model": _text(_dict(ckpt.get("model")).get("name")) or _text(config.get("model")),
        "teacher": _text(_dict(ckpt.get("teacher")).get("name")),
        "method": _text(config.get("method")),
        "seed": _number(config.get("seed")),
        "data": _text(ckpt.get("data")) or _text(config.get("data")),
        "train_fraction": fraction if config else None,
        "labelled_fraction": _number(config.get("labelled_fraction", 1.0)) if config else None,
        "labelled": _number(_dict(ckpt.get("labels")).get("labelled")),
        "unlabelled": _number(_dict(ckpt.get("labels")).get("unlabelled")),
        "epochs_planned": _number(config.get("epochs")),
    })
    if ckpt:
        for key, value in (("epoch", ckpt.get("epoch")), ("best_top1", ckpt.get("best_top1")),
                           ("last_top1", _dict(ckpt.get("last_val")).get("top1"))):
            if _number(value) is not None:
                info[key] = value
    best = run_dir / "checkpoints" / "best.pt"
    info["checkpoint"] = str(best if best.is_file() else latest) if (best.is_file() or latest.is_file()) else None
    return info


def _cell(value, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _labels_cell(row: dict) -> str:
    """The share of each class trained on (--train-fraction); for a label-scarce run (--labelled-fraction,
    --unlabelled) the labelled and unlabelled training images instead, after that share when it is < 1."""
    fraction = row.get("train_fraction")
    if fraction is None:
        return "—"
    labelled, unlabelled = row.get("labelled"), row.get("unlabelled")
    scarce = (row.get("labelled_fraction") or 1.0) < 1.0 or bool(unlabelled)
    if not scarce or labelled is None:
        return f"{fraction:.0%}"
    text = f"{labelled} labelled" + (f" + {unlabelled} unlabelled" if unlabelled else "")
    return text if fraction == 1.0 else f"{fraction:.0%}: {text}"


@click.command("runs")
@click.argument("folder", default="runs", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def runs_cmd(folder: str, as_json: bool) -> None:
    """Table of the train/distill runs under FOLDER (model, teacher, method, seed, epochs, best and last
    val top-1, checkpoint), read from their checkpoints and metrics files. [default: runs]"""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"'{folder}' is not a folder; pass the folder your runs went to (default: runs)")
    rows = [describe_run(d) for d in find_runs(root)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs under '{folder}' (a run folder holds checkpoints/latest.pt or metrics.jsonl)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs under {folder}")
    for col in ("run", "model", "teacher", "method", "seed", "labels", "epochs", "best top-1", "last top-1",
                "checkpoint"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(Path(r["run"]).relative_to(root)) if Path(r["run"]) != root else ".",
            _cell(r.get("model")), _cell(r.get("teacher")), _cell(r.get("method")), _cell(r.get("seed")),
            _labels_cell(r),
            f"{_cell(r.get('epoch'))}/{_cell(r.get('epochs_planned'))}",
            _cell(r.get("best_top1"), "{:.2f}"), _cell(r.get("last_top1"), "{:.2f}"),
            _cell(r.get("checkpoint")) if "error" not in r else f"damaged: {r['error']}")
    Console(width=max(160, Console().width)).print(table)
