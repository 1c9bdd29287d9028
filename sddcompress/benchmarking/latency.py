"""Teacher vs student across backends: accuracy on the validation split and latency per batch size."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sddcompress_export.classifier_metrics import score
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.latency_ratio import batch_of

from ..errors import UserError
from ..run_paths import QUICKSTART_DIR, SUMMARY_NAME, ensure_writable_dir, quickstart_checkpoints, require_out_given
from .backends import BACKENDS, Candidate, Runner
from .candidates import Calibration, ModelSource, candidates_for
from .environment import environment
from .memory import PeakMemory
from ..data.sampling import dataset_labels, stratified_indices
from .report import SCHEMA, plot, print_console, teacher_student_comparison, write_json, write_markdown
from .timer import TimingStats, measure

CLOCK = ("time.perf_counter around each call, after a synchronisation. Every backend is timed the same way: "
         "a call takes the preprocessed float32 batch in host memory and returns the logits in host memory, so on "
         "a GPU (torch CUDA, ONNX Runtime CUDA/TensorRT EP, TensorRT) the host->device copy of the input and the "
         "device->host copy of the logits are INSIDE the timing")


# After a call, PyTorch's OpenMP workers keep spinning for several milliseconds; ONNX Runtime's are
# stopped by the runner. A pause this long before each block keeps one backend's spinning out of the next
# one's timing.
IDLE_SECONDS = 0.03


@dataclass
class BenchmarkOptions:
    teacher: str | None = None
    student: str | None = None
    teacher_artifacts: list[str] = field(default_factory=list)
    student_artifacts: list[str] = field(default_factory=list)
    data: str | None = None
    data_dir: str | None = None
    val_size: int = 2000
    calib_size: int = DEFAULTS.calib_size
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    warmup: int = 10
    min_iters: int = 30
    min_seconds: float = 1.0
    rounds: int = 10
    threads: int | None = None
    out: str = "runs/benchmark"
    plot_batch: int = 1
    device: str = "auto"


def _validate(o: BenchmarkOptions) -> None:
    require_out_given(o.out)
    if not o.batch_sizes or any(b <= 0 for b in o.batch_sizes):
        raise UserError(f"--batch-sizes must be positive integers, got {o.batch_sizes}")
    if o.val_size <= 0:
        raise UserError(f"--val-size must be > 0, got {o.val_size}")
    if o.warmup < 0 or o.min_iters <= 0 or not (0 <= o.min_seconds < float("inf")):  # also refuses nan
        raise UserError("--warmup must be >= 0, --min-iters > 0 and --min-seconds >= 0")
    if o.rounds <= 0:
        raise UserError(f"--rounds must be >= 1, got {o.rounds}")
    unknown = [b for b in o.backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend '{unknown[0]}'; use {', '.join(BACKENDS)}")
    if o.plot_batch not in o.batch_sizes:
        raise UserError(f"--plot-batch {o.plot_batch} is not one of --batch-sizes {o.batch_sizes}")


def _validation_tensors(o: BenchmarkOptions, sources: list[ModelSource],
                       size: int) -> tuple[dict, dict[str, tuple[np.ndarray, Calibration]], np.ndarray]:
    """(data description, {role: (val images, calibration)}, val labels), preprocessed once per model
    as that model's own preprocessing record says (never with the dataset's statistics when they differ).

    The validation images are a class-stratified sample of `val_size` (every class its share), never
    the first N of a split that may be sorted by class; every model sees the same images and labels.
    """
    student = sources[-1]
    data = o.data or student.record.get("data")
    inputs: dict[str, tuple[np.ndarray, Calibration]] = {}
    if data and data.endswith(".npz"):
        from sddcompress_export.tensor_file import load_tensor_file, normalise_pixels

        from ..exporting.pipeline import tensor_file_normalization

        t = load_tensor_file(data, size)
        if not len(t.val_images):
            raise UserError(f"'{data}' holds no validation images (val_images is empty); pass another data.npz or "
                            "the dataset name as --data")
        idx = stratified_indices(t.val_labels, o.val_size)
        images, labels = t.val_images[idx], t.val_labels[idx]
        file_stats = tensor_file_normalization(Path(data))
        file_mean = file_stats.get("mean")
        for source in sources:
            spec = source.preprocessing
            if images.dtype.kind in "iu":  # raw pixels: each model's own normalisation, as every reader does
                mean, std = (spec.mean, spec.std) if spec is not None else \
                    (file_stats.get("mean"), file_stats.get("std"))
                if not mean or not std:
                    raise UserError(f"'{data}' holds raw pixels and the {source.role} does not say its normalisation; "
                                    "pass the dataset name as --data")
                mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
                inputs[source.role] = (normalise_pixels(data, "val_images", images, mean, std),
                                       Calibration(normalise_pixels(data, "calib_images", t.calib_images, mean, std)
                                                   if t.calib_images.dtype.kind in "iu" else t.calib_images,
                                                   t.calib_labels, o.calib_size))
                continue
            if spec is not None and file_mean and not np.allclose(file_mean, spec.mean):
                raise UserError(f"'{data}' holds images normalised with mean {[round(m, 4) for m in file_mean]} but "
                                f"the {source.role} expects mean {list(spec.mean)}; pass the dataset name as --data "
                                "so each model gets its own preprocessing")
            inputs[source.role] = (images, Calibration(t.calib_images, t.calib_labels, o.calib_size))
    elif data:
        from ..data import load_dataset
        from ..data.preprocessing import preprocessed_as
        from ..exporting.tensor_data import calibration_split, preprocess

        bundle = load_dataset(data, o.data_dir, size)
        idx = stratified_indices(dataset_labels(bundle.val), o.val_size)
        made: dict = {}
        for source in sources:
            own = bundle if source.preprocessing is None else preprocessed_as(bundle, source.preprocessing)
            if own.preprocessing not in made:
                calib = Calibration(*calibration_split(own, o.calib_size), o.calib_size)
                images, labels = preprocess(own.val, own.val_transform, idx.tolist())
                made[own.preprocessing] = (images, calib)
            inputs[source.role] = made[own.preprocessing]
    else:
        raise UserError("pass --data (a dataset name or a data.npz): the models do not say which dataset to use")
    if images.shape[-1] != size:
        raise UserError(f"'{data}' gives {images.shape[-1]}px images but the models expect {size}px")
    classes = int(len(np.unique(labels)))
    for source in sources:  # results.json says how each model's images were made
        source.record["preprocessing"] = source.preprocessing.to_dict() if source.preprocessing else "the dataset's"
    return ({"name": data, "val_images": int(len(images)), "input_size": size, "classes_in_sample": classes,
             "sample": "class-stratified"}, inputs, labels)


def start_cell(c: Candidate, images: np.ndarray, labels: np.ndarray, o: BenchmarkOptions,
               device: str = "cpu") -> tuple[dict, Runner | None]:
    """One (model, backend) cell's row, with its peak memory and accuracy, and its runner (None when the
    cell is skipped or failed; the row then says why)."""
    row: dict = {"model": c.model, "backend": c.backend}
    if c.skipped:
        return {**row, "status": "skipped", "reason": c.skipped}, None
    largest = max(o.batch_sizes)
    # Peak memory: from before the runner exists until its largest batch has run once (model/session/
    # engine + workspace). The sampling thread stops here, before any cell is timed.
    with PeakMemory("cuda" if c.backend.startswith("torch-") and device == "cuda" else "cpu") as memory:
        try:
            runner = c.make()
            runner.predict(batch_of(images, largest))  # first call: compiles / builds / allocates
        except Exception as exc:  # a backend that cannot run here is reported, never silently dropped
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return {**row, "status": "skipped", "reason": f"failed to start: {type(exc).__name__}: {text}"}, None
    row.update(status="ok", device=runner.device, clock=runner.clock, latency={},
               peak_memory_mb=memory.peak_mb, memory_method=memory.method)
    if getattr(runner, "providers", None):
        row["providers"] = runner.providers
    row["accuracy"] = score(runner.predict, images, labels, min(32, largest))
    if not np.isfinite(row["accuracy"]["loss"]):  # NaN/inf logits: its accuracy and speed mean nothing
        runner.close()
        return {**row, "status": "failed", "reason": "non-finite logits: the model's weights or the artefact "
                                                     "are broken"}, None
    return row, runner


def time_cells(cells: list[tuple[dict, Runner, np.ndarray]], o: BenchmarkOptions,
               say: Callable[[str], None]) -> None:
    """Fill each started cell's `latency`, per batch size, over `o.rounds` rounds: in each round every cell is
    timed in turn for a block of `min_iters / rounds` calls and `min_seconds / rounds` seconds, so drift in the
    machine's load hits every cell alike. The p50 is over all timed calls of all rounds."""
    block_iters, block_seconds = -(-o.min_iters // o.rounds), o.min_seconds / o.rounds
    for batch in sorted(o.batch_sizes):
        handles = [runner.prepare(batch_of(images, batch)) for _, runner, images in cells]
        times: list[list[float]] = [[] for _ in cells]
        failures: dict[int, str] = {}
        for round_index in range(o.rounds):
            for k, (_, runner, _) in enumerate(cells):
                if k in failures:
                    continue
                time.sleep(IDLE_SECONDS)  # let the previous runtime's spinning worker threads go idle
                try:
                    stats = measure(lambda: runner.run(handles[k]), warmup=o.warmup if round_index == 0 else 2,
                                    min_iters=block_iters, min_seconds=block_seconds, batch=batch, sync=runner.sync)
                except Exception as exc:
                    failures[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                    continue
                times[k] += stats.times_ms
        for k, (row, _, _) in enumerate(cells):
            if k in failures:
                row["latency"][str(batch)] = {"skipped": failures[k]}
                continue
            stats = TimingStats(times[k], batch=batch, warmup=o.warmup)
            row["latency"][str(batch)] = {**stats.to_dict(), "rounds": o.rounds}
            say(f"  {row['model']:8s} {row['backend']:15s} b={batch:<3d} p50 {stats.p50:8.3f} ms  "
                f"{stats.throughput:9.1f} img/s  ({stats.iterations} iterations in {o.rounds} rounds)")


def run_benchmark(o: BenchmarkOptions, echo: Callable[[str], None] = print) -> dict:
    """Measure, write results.json / report.md / latency_accuracy.png into `o.out`, print the table."""
    import torch

    _validate(o)
    if not any([o.teacher, o.student, o.teacher_artifacts, o.student_artifacts]):
        quickstart = quickstart_checkpoints()
        if quickstart is None:
            raise UserError(f"pass --teacher and --student checkpoints (or artefacts); there is no "
                            f"{QUICKSTART_DIR / SUMMARY_NAME} (run `sddcompress quickstart` first)")
        o.teacher, o.student = quickstart["teacher"], quickstart["student"]
        echo(f"using the quickstart's models: teacher {o.teacher}, student {o.student}")
    out = ensure_writable_dir(o.out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if o.device == "auto" else o.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch here")
    threads = o.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    teacher = ModelSource("teacher", o.teacher, o.teacher_artifacts, out / "artifacts", echo)
    student = ModelSource("student", o.student, o.student_artifacts, out / "artifacts", echo)
    if teacher.input_size != student.input_size:
        raise UserError(f"teacher expects {teacher.input_size}px inputs but the student {student.input_size}px; "
                        "benchmark models trained at the same input size")
    data, inputs, labels = _validation_tensors(o, [teacher, student], student.input_size)

    cells = (candidates_for(teacher, o.backends, inputs["teacher"][1], max(o.batch_sizes), device, threads)
             + candidates_for(student, o.backends, inputs["student"][1], max(o.batch_sizes), device, threads))
    echo(f"measuring {sum(c.skipped is None for c in cells)} (model, backend) pairs at batch sizes {o.batch_sizes} "
         f"on {device} with {threads} threads ({sum(c.skipped is not None for c in cells)} skipped)")
    results, started = [], []
    for c in cells:
        row, runner = start_cell(c, inputs[c.model][0], labels, o, device)
        results.append(row)
        if runner is not None:
            started.append((row, runner, inputs[c.model][0]))
    try:
        time_cells(started, o, echo)
    finally:
        for _, runner, _ in started:
            runner.close()
    doc = {
        "schema": SCHEMA,
        "environment": {**environment(threads), "device": device},
        "method": {"warmup": o.warmup, "min_iters": o.min_iters, "min_seconds": o.min_seconds,
                   "rounds": o.rounds, "batch_sizes": o.batch_sizes, "threads": threads,
                   "clock": CLOCK,
                   "memory": "torch.cuda.max_memory_allocated for torch on GPU; otherwise the growth of the "
                             "process RSS (sampled every 2 ms) from before the runner is created until its "
                             "largest batch has run once (every runner stays alive until all are timed, but "
                             "memory the process freed earlier may be reused, so it is a lower bound); the "
                             "sampling thread is stopped before any timing",
                   "inputs": "the same preprocessed batch for every backend of a model (each model's images "
                             "preprocessed as its own record says); accuracy on a class-stratified sample of the "
                             "validation split"},
        "data": data,
        "models": {"teacher": teacher.record | {"artifacts": teacher.artifacts},
                   "student": student.record | {"artifacts": student.artifacts}},
        "results": results,
    }
    doc["comparison"] = teacher_student_comparison(results)
    write_json(doc, out / "results.json")
    png = plot(doc, out / "latency_accuracy.png", o.plot_batch)
    write_markdown(doc, out / "report.md", png.name if png else None)
    print_console(doc, echo)
    echo(f"wrote {out / 'results.json'}, {out / 'report.md'}" + (f", {png}" if png else ""))
    return doc
