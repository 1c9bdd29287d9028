"""`sddcompress benchmark` (also `python benchmarks/latency.py`): teacher vs student across backends."""

from __future__ import annotations

import click
from sddcompress_export.closed_pipe import pipe_safe

from ..benchmarking.backends import BACKENDS


def _ints(ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None


@click.command("benchmark")
@click.option("--teacher", default=None, type=click.Path(), help="Teacher checkpoint. [default: the quickstart's]")
@click.option("--student", default=None, type=click.Path(), help="Student checkpoint. [default: the quickstart's]")
@click.option("--teacher-artifact", multiple=True, type=click.Path(),
              help="An exported teacher .onnx/.engine (repeatable); used instead of exporting on the fly.")
@click.option("--student-artifact", multiple=True, type=click.Path(),
              help="An exported student .onnx/.engine (repeatable). [default: RUN/export next to its checkpoint]")
@click.option("--data", default=None, help="Dataset name or data.npz for accuracy. [default: the student's]")
@click.option("--data-dir", default=None, help="Where the dataset's files are.")
@click.option("--val-size", type=int, default=2000, show_default=True, help="Validation images scored.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_ints, help="Batch sizes to sweep.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              help="Backends to try; unavailable ones are listed as skipped with the reason.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed iterations per cell.")
@click.option("--min-iters", type=int, default=30, show_default=True, help="Timed iterations per cell, at least.")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Timed seconds per cell, at least.")
@click.option("--rounds", type=int, default=10, show_default=True,
              help="Rounds per batch size; each times every cell in turn for its share of the iterations and "
                   "seconds, so drift hits all cells alike.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime. [default: torch's]")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Device for the torch backends.")
@click.option("--plot-batch", type=int, default=1, show_default=True, help="Batch size the plot shows.")
@click.option("--out", default="runs/benchmark", show_default=True,
              help="Folder for results.json, report.md and latency_accuracy.png.")
@click.option("--compare", nargs=2, default=None, metavar="OLD NEW",
              help="Instead of measuring, print NEW/OLD ratios of two results.json files (or their folders).")
def benchmark_cmd(teacher, student, teacher_artifact, student_artifact, data, data_dir, val_size, batch_sizes,
                  backends, warmup, min_iters, min_seconds, rounds, threads, device, plot_batch, out,
                  compare) -> None:
    """Accuracy and latency of the teacher and the student on every backend, as a table, results.json,
    report.md and an accuracy-vs-latency plot."""
    if compare:
        from ..benchmarking.report import compare as compare_docs
        from ..benchmarking.report import load_results, print_compare, unmatched

        old, new = load_results(compare[0]), load_results(compare[1])
        print_compare(compare_docs(old, new), click.echo, unmatched(old, new))
        return
    from ..benchmarking.latency import BenchmarkOptions, run_benchmark

    run_benchmark(BenchmarkOptions(
        teacher=teacher, student=student, teacher_artifacts=list(teacher_artifact),
        student_artifacts=list(student_artifact), data=data, data_dir=data_dir, val_size=val_size,
        batch_sizes=batch_sizes, backends=[b.strip() for b in backends.split(",") if b.strip()], warmup=warmup,
        min_iters=min_iters, min_seconds=min_seconds, rounds=rounds, threads=threads, out=out, plot_batch=plot_batch,
        device=device), echo=pipe_safe(click.echo))
