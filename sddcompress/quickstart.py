"""`sddcompress quickstart`: what distillation buys, offline, in a few minutes on a CPU.

The setting is distillation's most common real use: a teacher that knows more than the student can
learn alone, and many images of which few carry labels. A ResNet-56 teacher trains on every label of
scikit-learn's bundled digits (1,797 real 8x8 scans, shown at 16 px, where CIFAR-style ResNets still end
on a 4x4 map). The ResNet-20 students see the labels of only LABELLED_FRACTION of each class's training
digits (the same digits for both students of a seed): the CE student trains on those labelled digits
alone; the SDD-DKD student learns the same labels and distils the teacher on every training digit
(--labelled-fraction). Both take the same number of optimiser steps at the same batch size, over several
seeds, and the printed verdict is whatever the paired seeds show (mean +- std).

Then the seed-0 SDD-DKD student is exported (ONNX, then INT8 for ONNX Runtime, scored on the held-out
digits) and timed against the teacher: one line with accuracy, latency and size. Every training part
resumes if interrupted; the export is redone each time (seconds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from .engine.config import TrainConfig
from .data.label_scarce import matched_steps
from .engine.trainer import RunResult, run
from .run_paths import QUICKSTART_DIR, SUMMARY_NAME, require_out_given
from .stats import mean_std

TEACHER, STUDENT, DATA, SIZE, BATCH = "resnet56", "resnet20", "digits", 16, 64
LABELLED_FRACTION = 0.05  # of each class's training digits whose labels the students see
BETA = 2.0  # DKD's non-target weight for resnet56 -> resnet20 (configs/cifar100_resnet56_resnet20.yaml)
WARMUP_STEPS = 30  # optimiser steps over which the distillation term ramps in
DEFAULT_EPOCHS, DEFAULT_SEEDS = 8, 3


def _config(out: Path, model: str, epochs: int, fresh: bool, **extra) -> TrainConfig:
    return TrainConfig(model=model, data=DATA, input_size=SIZE, epochs=epochs, lr=0.05, schedule="cosine",
                       weight_decay=5e-4, batch_size=BATCH, out=str(out), fresh=fresh, log_every=10, cpu=True,
                       **extra)


def _student_dir(out: Path, method: str, seed: int) -> Path:
    # seed 0 keeps the folder names other commands (export, benchmark) know
    return out / (f"student-{method}" if seed == 0 else f"student-{method}-seed{seed}")


def verdict(gains: list[float]) -> str:
    """What the paired SDD-DKD - CE gains support, in words."""
    mean, std = mean_std(gains)
    if len(gains) < 2:
        return f"SDD-DKD - CE: {mean:+.2f} points on one seed; run --seeds 3 or more before reading anything into it"
    if abs(mean) > std and all((g > 0) == (mean > 0) for g in gains):
        word = "better" if mean > 0 else "worse"
        return (f"SDD-DKD students are {word} than CE students here: {mean:+.2f} ± {std:.2f} points "
                f"over {len(gains)} seeds (same seed, same labels)")
    return (f"SDD-DKD - CE: {mean:+.2f} ± {std:.2f} points over {len(gains)} seeds: no clear difference at this "
            "budget")


def run_quickstart(out: str | Path, epochs: int | None, fresh: bool, echo: Callable[[str], None] = print,
                   seeds: int = DEFAULT_SEEDS, deploy: bool = True) -> dict:
    """Train the teacher, then CE and SDD-DKD students over `seeds`; print and save (summary.json) the
    comparison; then (`deploy`) export the seed-0 SDD-DKD student to INT8 and time it against the teacher."""
    require_out_given(out)
    out = Path(out)
    n = epochs or DEFAULT_EPOCHS
    n_teacher = 2 * n  # the deeper teacher needs longer to get ahead of what the student learns alone
    all_steps, labelled_steps = matched_steps(DATA, SIZE, LABELLED_FRACTION, BATCH)
    n_ce = math.ceil(n * all_steps / max(labelled_steps, 1))  # the CE student takes as many steps
    echo(f"quickstart: teacher {TEACHER} ({n_teacher} epochs, every label); students {STUDENT} with the labels of "
         f"{LABELLED_FRACTION:.0%} of the training digits, {n * all_steps} steps each: SDD-DKD distils on every "
         f"digit, CE trains on the labelled ones ({n_ce} epochs of them); x {seeds} seed(s), {SIZE} px, in {out}/")
    echo(f"[teacher] {TEACHER} (cross-entropy, every label)")
    teacher = run(_config(out / "teacher", TEACHER, n_teacher, fresh), echo)
    t_ckpt = str(teacher.best)
    results: dict[str, list[RunResult]] = {"ce": [], "sdd-dkd": []}
    for seed in range(seeds):
        for method in ("sdd-dkd", "ce"):
            if method == "ce":
                echo(f"[seed {seed}] student {STUDENT}, cross-entropy on the labelled digits only")
                cfg = _config(_student_dir(out, method, seed), STUDENT, n_ce, fresh, seed=seed,
                              labelled_fraction=LABELLED_FRACTION)
            else:
                echo(f"[seed {seed}] student {STUDENT}, SDD-DKD from the teacher on every digit")
                cfg = _config(_student_dir(out, method, seed), STUDENT, n, fresh, seed=seed,
                              labelled_fraction=LABELLED_FRACTION, teacher=TEACHER, teacher_ckpt=t_ckpt,
                              method=method, beta=BETA, warmup_epochs=WARMUP_STEPS / all_steps)
            results[method].append(run(cfg, echo))

    def row(role: str, model: str, runs: list[RunResult]) -> dict:
        top1s = [r.best_top1 for r in runs]
        mean, std = mean_std(top1s)
        return {"role": role, "model": model, "top1": mean, "top1_std": std, "top1_seeds": top1s,
                "params": runs[0].params, "checkpoint": str(runs[0].best)}

    rows = [row("teacher", TEACHER, [teacher]), row("student (CE)", STUDENT, results["ce"]),
            row("student (SDD-DKD)", STUDENT, results["sdd-dkd"])]
    gains = [s.best_top1 - c.best_top1 for s, c in zip(results["sdd-dkd"], results["ce"])]
    summary = {"data": DATA, "input_size": SIZE, "epochs": n, "teacher_epochs": n_teacher, "ce_epochs": n_ce,
               "steps": n * all_steps, "labelled_fraction": LABELLED_FRACTION, "seeds": seeds, "rows": rows,
               "gain_sdd_dkd_over_ce": {"mean": mean_std(gains)[0], "std": mean_std(gains)[1], "per_seed": gains},
               "verdict": verdict(gains), "teacher_checkpoint": t_ckpt,
               "student_checkpoint": str(results["sdd-dkd"][0].best)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    _print_table(rows, seeds, echo)
    echo(summary["verdict"])
    if deploy:
        echo("[deploy] the seed-0 SDD-DKD student: ONNX, INT8 for ONNX Runtime, timed against the teacher")
        summary["deploy"] = deploy_comparison(t_ckpt, summary["student_checkpoint"])
        (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
        echo(f"exported to {summary['deploy']['export_dir']} (as `sddcompress export --ort-int8` writes it)")
        echo(deploy_line(summary))
    default_out = out.resolve() == QUICKSTART_DIR.resolve()
    flags = "" if default_out else f" --teacher {t_ckpt} --student {summary['student_checkpoint']}"
    echo("\nnext: python benchmarks/latency.py" + flags + "        # every backend, batch sizes, a plot")
    return summary


def deploy_comparison(teacher_ckpt: str, student_ckpt: str, min_seconds: float = 1.0) -> dict:
    """Export the student (ONNX + INT8 next to its checkpoint, as `sddcompress export --ort-int8` does) and
    time one image through the teacher (PyTorch fp32) and through the INT8 student (ONNX Runtime), both on
    PyTorch's intra-op thread count; sizes are the teacher's fp32 weights and the INT8 ONNX file."""
    import numpy as np
    import torch

    from sddcompress_export.onnxruntime_runner import OrtClassifier

    from .benchmarking.timer import measure
    from .engine.checkpoint_eval import model_from_checkpoint
    from .exporting.pipeline import ExportOptions, run_export

    report = run_export(ExportOptions(ckpt=student_ckpt, ort_int8=True), echo=lambda s: None)
    int8 = report["artifacts"]["ort_int8"]
    teacher, _ = model_from_checkpoint(teacher_ckpt)
    image = np.load(report["tensor_file"]["path"])["val_images"][:1]
    with torch.inference_mode():
        x = torch.from_numpy(image)
        teacher_ms = measure(lambda: teacher(x), warmup=5, min_iters=20, min_seconds=min_seconds).p50
    threads = torch.get_num_threads()
    student = OrtClassifier(int8["path"], threads=threads)
    student_ms = measure(lambda: student(image), warmup=5, min_iters=20, min_seconds=min_seconds).p50
    teacher_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    return {"export_dir": report["out"], "int8_path": int8["path"], "int8_top1": int8["metrics"]["top1"],
            "fp32_top1": report["artifacts"]["onnx"]["metrics"]["top1"], "val_images": report["tensor_file"]["val_images"],
            "teacher_ms": teacher_ms, "student_int8_ms": student_ms, "teacher_fp32_bytes": teacher_bytes,
            "student_int8_bytes": int8["bytes"], "speedup": teacher_ms / student_ms,
            "smaller": teacher_bytes / int8["bytes"], "threads": threads, "ort_providers": student.providers}


def deploy_line(summary: dict) -> str:
    """teacher X% at A ms (PyTorch fp32) - student alone Y% - distilled student Z% at B ms (ONNX Runtime INT8)."""
    d, rows = summary["deploy"], {r["role"]: r for r in summary["rows"]}
    return (f"teacher {rows['teacher']['top1']:.1f}% at {d['teacher_ms']:.2f} ms (PyTorch fp32) - student alone "
            f"{rows['student (CE)']['top1']:.1f}% - distilled student {d['int8_top1']:.1f}% at "
            f"{d['student_int8_ms']:.2f} ms (ONNX Runtime INT8): {d['speedup']:.1f}x faster, "
            f"{d['smaller']:.0f}x smaller (one image, {d['threads']} thread(s); accuracy on {d['val_images']} "
            f"held-out digits; students see {summary['labelled_fraction']:.0%} of the labels)")


def _print_table(rows: list[dict], seeds: int, echo: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quickstart results (best val top-1 on the 360 held-out digits; students: mean ± std over "
                        f"{seeds} seed(s))")
    for col in ("role", "model", "top-1 %", "per seed", "params", "checkpoint (seed 0)"):
        table.add_column(col)
    for r in rows:
        spread = f" ± {r['top1_std']:.2f}" if len(r["top1_seeds"]) > 1 else ""
        table.add_row(r["role"], r["model"], f"{r['top1']:.2f}{spread}", " ".join(f"{v:.1f}" for v in r["top1_seeds"]),
                      f"{r['params'] / 1e6:.2f}M", r["checkpoint"])
    console = Console(width=160)
    with console.capture() as cap:
        console.print(table)
    echo(cap.get().rstrip())
