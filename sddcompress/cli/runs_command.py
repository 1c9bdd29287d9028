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


def _from_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        return {}
    return {"epoch": rows[-1]["epoch"], "best_top1": max(r["val_top1"] for r in rows),
            "last_top1": rows[-1]["val_top1"]}


def describe_run(run_dir: Path) -> dict:
    """What a run folder holds, from its latest checkpoint (weights_only) and, failing that, its metrics."""
    from ..engine.checkpoint import load_checkpoint

    info = {"run": str(run_dir), **_from_metrics(run_dir)}
    latest = run_dir / "checkpoints" / "latest.pt"
    try:
        ckpt = load_checkpoint(latest) if latest.is_file() else {}
    except UserError as exc:
        info["error"] = str(exc)
        ckpt = {}
    config = ckpt.get("config") or {}
    teacher = ckpt.get("teacher") or {}
    info.update({
        "model": (ckpt.get("model") or {}).get("name") or config.get("model"),
        "teacher": teacher.get("name"),
        "method": config.get("method"),
        "seed": config.get("seed"),
        "data": ckpt.get("data") or config.get("data"),
        "train_fraction": config.get("train_fraction", 1.0) if config else None,
        "epochs_planned": config.get("epochs"),
    })
    if ckpt:
        info["epoch"] = ckpt.get("epoch", info.get("epoch"))
        info["best_top1"] = ckpt.get("best_top1", info.get("best_top1"))
        last = (ckpt.get("last_val") or {}).get("top1")
        if last is not None:
            info["last_top1"] = last
    best = run_dir / "checkpoints" / "best.pt"
    info["checkpoint"] = str(best if best.is_file() else latest) if (best.is_file() or latest.is_file()) else None
    return info


def _cell(value, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


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
        fraction = r.get("train_fraction")
        table.add_row(
            str(Path(r["run"]).relative_to(root)) if Path(r["run"]) != root else ".",
            _cell(r.get("model")), _cell(r.get("teacher")), _cell(r.get("method")), _cell(r.get("seed")),
            "—" if fraction is None else f"{fraction:.0%}",
            f"{_cell(r.get('epoch'))}/{_cell(r.get('epochs_planned'))}",
            _cell(r.get("best_top1"), "{:.2f}"), _cell(r.get("last_top1"), "{:.2f}"),
            _cell(r.get("checkpoint")) if "error" not in r else f"unreadable: {r['error']}")
    Console(width=max(160, Console().width)).print(table)
