"""Turn measurements into a console table, results.json, report.md and latency_accuracy.png; compare runs."""

from __future__ import annotations

import json
from pathlib import Path

from sddcompress_export.atomic import atomic_write_text

SCHEMA = "sddcompress-benchmark-v1"


def measured_cells(results: list[dict]) -> dict[tuple[str, str], dict]:
    """The (model, backend) cells that were measured (not skipped), by key."""
    return {(r["model"], r["backend"]): r for r in results if r["status"] == "ok"}


def teacher_student_comparison(results: list[dict]) -> list[dict]:
    """Per backend: the student's top-1 gap to the teacher and its p50 speed-up, per batch size."""
    by = measured_cells(results)
    eager_teacher = by.get(("teacher", "torch-eager"))
    rows = []
    for (model, backend), student in by.items():
        if model != "student":
            continue
        teacher = by.get(("teacher", backend))
        row = {"backend": backend, "top1_gap": None, "speedup": {}, "speedup_vs_teacher_eager": {}}
        if teacher:
            row["top1_gap"] = student["accuracy"]["top1"] - teacher["accuracy"]["top1"]
        for batch, lat in student["latency"].items():
            if "p50_ms" not in lat:
                continue
            if teacher and "p50_ms" in teacher["latency"].get(batch, {}):
                row["speedup"][batch] = teacher["latency"][batch]["p50_ms"] / lat["p50_ms"]
            if eager_teacher and "p50_ms" in eager_teacher["latency"].get(batch, {}):
                row["speedup_vs_teacher_eager"][batch] = eager_teacher["latency"][batch]["p50_ms"] / lat["p50_ms"]
        rows.append(row)
    return rows


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def rows_for_table(doc: dict) -> list[list[str]]:
    batches = [str(b) for b in doc["method"]["batch_sizes"]]
    lines = []
    for r in doc["results"]:
        if r["status"] != "ok":
            lines.append([r["model"], r["backend"], "skipped", "", *["" for _ in batches], "", r["reason"]])
            continue
        lat = [_fmt(r["latency"].get(b, {}).get("p50_ms"), ".3f", "n/a") for b in batches]
        top = r["latency"].get(batches[-1], {}).get("throughput_ips")
        lines.append([r["model"], r["backend"], _fmt(r["accuracy"]["top1"]), _fmt(r["accuracy"]["top5"]), *lat,
                      _fmt(top, ".0f"), _fmt(r.get("peak_memory_mb"), ".1f")])
    return lines


def header(doc: dict) -> list[str]:
    batches = doc["method"]["batch_sizes"]
    return ["model", "backend", "top-1", "top-5", *[f"p50 ms b={b}" for b in batches],
            f"img/s b={batches[-1]}", "peak MB / reason"]


def print_console(doc: dict, echo) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"teacher {doc['models']['teacher'].get('name')} vs student "
                        f"{doc['models']['student'].get('name')} on {doc['data']['name']} "
                        f"({doc['data']['val_images']} images)")
    for col in header(doc):
        table.add_column(col, overflow="fold")
    from rich.markup import escape

    seen: set[str] = set()
    for line in rows_for_table(doc):
        reason = line[-1]
        if line[2] == "skipped":
            line = [*line[:-1], "(same reason as above)" if reason in seen else reason]
            seen.add(reason)
        table.add_row(*(escape(cell) for cell in line))
    Console(width=140).print(table)
    for row in doc["comparison"]:
        speed = ", ".join(f"b={b}: {v:.2f}x" for b, v in row["speedup"].items())
        echo(f"student vs teacher on {row['backend']}: top-1 gap {_fmt(row['top1_gap'], '+.2f')} points; "
             f"speed-up {speed or '-'}")
    m = doc["method"]
    echo(f"method: {m['warmup']} warm-up iterations, then >= {m['min_iters']} iterations and >= {m['min_seconds']}s "
         f"per cell over {m.get('rounds', 1)} interleaved rounds; {doc['environment']['threads']} threads on "
         f"{doc['environment']['cpu']} "
         f"(GPU: {doc['environment']['gpu']}); same preprocessed inputs for every backend")


def write_json(doc: dict, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=1))


def write_markdown(doc: dict, path: Path, plot_name: str | None) -> Path:
    env, m = doc["environment"], doc["method"]
    out = [f"# sddcompress benchmark: teacher {doc['models']['teacher'].get('name')} vs student "
           f"{doc['models']['student'].get('name')}", "",
           f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} cores, {env['threads']} threads used; "
           f"GPU: {env['gpu']}); torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, "
           f"tensorrt {env['versions']['tensorrt']}.", "",
           f"Method: {m['warmup']} warm-up iterations, then at least {m['min_iters']} timed iterations and at least "
           f"{m['min_seconds']} s per (model, backend, batch), split over {m.get('rounds', 1)} rounds in which every "
           f"cell is timed in turn (so drift in the machine's load hits every cell alike); p50 over all timed "
           f"iterations; clock: {m['clock']}. Every backend gets the same "
           f"preprocessed inputs. Accuracy on {doc['data']['val_images']} validation images of {doc['data']['name']} "
           f"({doc['data'].get('sample', 'first images')} sample). Peak memory: {m['memory']}.", ""]
    cols = header(doc)
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in rows_for_table(doc)]
    if doc["comparison"]:
        out += ["", "| backend | student top-1 gap (points) | " +
                " | ".join(f"speed-up b={b}" for b in m["batch_sizes"]) + " |",
                "|---|---|" + "---|" * len(m["batch_sizes"])]
        for row in doc["comparison"]:
            out.append(f"| {row['backend']} | {_fmt(row['top1_gap'], '+.2f')} | " +
                       " | ".join(_fmt(row["speedup"].get(str(b)), ".2f") + "x" for b in m["batch_sizes"]) + " |")
    if plot_name:
        out += ["", f"![accuracy vs latency]({plot_name})"]
    path.write_text("\n".join(out) + "\n")
    return path


def plot(doc: dict, path: Path, batch: int) -> Path | None:
    """Top-1 against p50 latency (log x) at one batch size, saved as a PNG; None if nothing was measured."""
    import matplotlib.pyplot as plt

    fig = latency_figure(doc, batch)
    if fig is None:
        return None
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_figure(doc: dict, batch: int):
    """The accuracy-vs-latency figure: one labelled point per (model, backend); None if nothing to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["model"], r["backend"], r["latency"][str(batch)]["p50_ms"], r["accuracy"]["top1"])
              for r in doc["results"] if r["status"] == "ok" and "p50_ms" in r["latency"].get(str(batch), {})]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    styles = {"teacher": ("o", "tab:red"), "student": ("s", "tab:blue")}
    for role in ("teacher", "student"):
        xs = [p[2] for p in points if p[0] == role]
        ys = [p[3] for p in points if p[0] == role]
        marker, color = styles[role]
        name = doc["models"][role].get("name", role)
        ax.scatter(xs, ys, marker=marker, color=color, s=60, label=f"{role} ({name})", zorder=3)
    for i, (role, backend, x, y) in enumerate(points):
        ax.annotate(backend, (x, y), textcoords="offset points", xytext=(6, 6 if i % 2 == 0 else -12), fontsize=8)
    ax.set_xscale("log")
    # 1-2-5 ticks with plain numbers; no minor labels (matplotlib labels minor log ticks on a short
    # range, and those "2x10^-1"-style labels ran into each other)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"p50 latency per batch of {batch} (ms, log scale)")
    ax.set_ylabel(f"top-1 on {doc['data']['name']} validation (%)")
    ys = [p[3] for p in points]
    pad = max(0.5, (max(ys) - min(ys)) * 0.25)
    ax.set_ylim(min(ys) - pad, min(100.0, max(ys) + pad) + 0.2)
    xs = [p[2] for p in points]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    skipped = [f"{r['model']} {r['backend']}" for r in doc["results"] if r["status"] != "ok"]
    if skipped:
        fig.text(0.01, 0.01, "not measured here (see report): " + ", ".join(skipped), fontsize=7, color="gray",
                 wrap=True)
    env = doc["environment"]
    ax.set_title(f"accuracy vs latency, batch {batch} — {env['cpu']}, {env['threads']} threads, {env['date'][:10]}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    return fig


def load_results(path: str | Path) -> dict:
    from ..errors import UserError

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read benchmark results '{path}' ({type(exc).__name__})") from None
    if doc.get("schema") != SCHEMA:
        raise UserError(f"'{path}' is not an sddcompress benchmark results.json (schema {doc.get('schema')!r})")
    return doc


def compare(old: dict, new: dict) -> list[dict]:
    """NEW / OLD ratios of p50 latency and throughput, and the top-1 change, for every cell in both."""
    a, b = measured_cells(old["results"]), measured_cells(new["results"])
    rows = []
    for key in sorted(a.keys() & b.keys()):
        for batch in sorted(a[key]["latency"].keys() & b[key]["latency"].keys(), key=int):
            la, lb = a[key]["latency"][batch], b[key]["latency"][batch]
            if "p50_ms" not in la or "p50_ms" not in lb:
                continue
            rows.append({"model": key[0], "backend": key[1], "batch": int(batch),
                         "old_p50_ms": la["p50_ms"], "new_p50_ms": lb["p50_ms"],
                         "p50_ratio": lb["p50_ms"] / la["p50_ms"],
                         "throughput_ratio": lb["throughput_ips"] / la["throughput_ips"],
                         "top1_change": b[key]["accuracy"]["top1"] - a[key]["accuracy"]["top1"]})
    return rows


def unmatched(old: dict, new: dict) -> list[str]:
    """Cells measured in only one of the two runs (so absent from the ratios)."""
    a, b = measured_cells(old["results"]).keys(), measured_cells(new["results"]).keys()
    return ([f"only in OLD: {m} {k}" for m, k in sorted(a - b)]
            + [f"only in NEW: {m} {k}" for m, k in sorted(b - a)])


def print_compare(rows: list[dict], echo, only_in: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="NEW vs OLD (p50 ratio < 1 means NEW is faster)")
    for col in ("model", "backend", "batch", "old p50 ms", "new p50 ms", "p50 NEW/OLD", "img/s NEW/OLD",
                "top-1 change"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["backend"], str(r["batch"]), f"{r['old_p50_ms']:.3f}", f"{r['new_p50_ms']:.3f}",
                      f"{r['p50_ratio']:.2f}x", f"{r['throughput_ratio']:.2f}x", f"{r['top1_change']:+.2f}")
    Console(width=140).print(table)
    for line in only_in:
        echo(line)
