"""`sddcompress quickstart`: the whole distillation story offline, in a few minutes on a CPU.

Trains a ResNet-56 teacher on scikit-learn's bundled digits (1,797 real 8x8 scans, shown at 16 px, where
CIFAR-style ResNets still end on a 4x4 map), then ResNet-20 students with SDD-DKD from the teacher and
with cross-entropy alone, over several seeds. It checks the pipeline; it is not a method comparison:
digits is so easy that a student alone matches the teacher, and the printed verdict is whatever the
paired seeds show (mean +- std), usually "no clear difference". `benchmarks/methods.py` compares
methods. Every part resumes if interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .engine.config import TrainConfig
from .engine.trainer import RunResult, run
from .run_paths import QUICKSTART_DIR, SUMMARY_NAME, require_out_given
from .stats import mean_std

TEACHER, STUDENT, DATA, SIZE = "resnet56", "resnet20", "digits", 16
STUDENT_FRACTION = 1.0  # of each class's training images (0.1 with DKD's defaults: see README)
DEFAULT_EPOCHS, DEFAULT_SEEDS = 15, 3


def _config(out: Path, model: str, epochs: int, fresh: bool, **extra) -> TrainConfig:
    return TrainConfig(model=model, data=DATA, input_size=SIZE, epochs=epochs, lr=0.05, schedule="cosine",
                       weight_decay=5e-4, out=str(out), fresh=fresh, log_every=10, cpu=True, **extra)


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
                f"over {len(gains)} seeds (same seed, same images)")
    return (f"SDD-DKD - CE: {mean:+.2f} ± {std:.2f} points over {len(gains)} seeds: no clear difference at this "
            "budget")


def run_quickstart(out: str | Path, epochs: int | None, fresh: bool, echo: Callable[[str], None] = print,
                   seeds: int = DEFAULT_SEEDS) -> dict:
    """Train the teacher, then CE and SDD-DKD students over `seeds`; print and save (summary.json) the comparison."""
    require_out_given(out)
    out = Path(out)
    n = epochs or DEFAULT_EPOCHS
    n_teacher = 2 * n  # the deeper teacher needs longer to get ahead of what the student learns alone
    echo(f"quickstart: teacher {TEACHER} ({n_teacher} epochs), students {STUDENT} ({n} epochs, "
         f"{STUDENT_FRACTION:.0%} of the training digits) x {seeds} seed(s), {SIZE} px, in {out}/")
    echo(f"[teacher] {TEACHER} (cross-entropy)")
    teacher = run(_config(out / "teacher", TEACHER, n_teacher, fresh, batch_size=64), echo)
    t_ckpt = str(teacher.best)
    results: dict[str, list[RunResult]] = {"ce": [], "sdd-dkd": []}
    for seed in range(seeds):
        for method in ("sdd-dkd", "ce"):
            how = "SDD-DKD from the teacher" if method != "ce" else "cross-entropy only"
            echo(f"[seed {seed}] student {STUDENT}, {how}")
            extra = dict(teacher=TEACHER, teacher_ckpt=t_ckpt, method=method,
                         warmup_epochs=max(1.0, n / 12)) if method != "ce" else {}
            results[method].append(run(_config(_student_dir(out, method, seed), STUDENT, n, fresh, batch_size=64,
                                               seed=seed, train_fraction=STUDENT_FRACTION, **extra), echo))

    def row(role: str, model: str, runs: list[RunResult]) -> dict:
        top1s = [r.best_top1 for r in runs]
        mean, std = mean_std(top1s)
        return {"role": role, "model": model, "top1": mean, "top1_std": std, "top1_seeds": top1s,
                "params": runs[0].params, "checkpoint": str(runs[0].best)}

    rows = [row("teacher", TEACHER, [teacher]), row("student (CE)", STUDENT, results["ce"]),
            row("student (SDD-DKD)", STUDENT, results["sdd-dkd"])]
    gains = [s.best_top1 - c.best_top1 for s, c in zip(results["sdd-dkd"], results["ce"])]
    summary = {"data": DATA, "input_size": SIZE, "epochs": n, "teacher_epochs": n_teacher,
               "student_fraction": STUDENT_FRACTION, "seeds": seeds, "rows": rows,
               "gain_sdd_dkd_over_ce": {"mean": mean_std(gains)[0], "std": mean_std(gains)[1], "per_seed": gains},
               "verdict": verdict(gains), "teacher_checkpoint": t_ckpt,
               "student_checkpoint": str(results["sdd-dkd"][0].best)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    _print_table(rows, seeds, echo)
    echo(summary["verdict"])
    default_out = out.resolve() == QUICKSTART_DIR.resolve()
    student_ckpt = summary["student_checkpoint"]
    ckpt_flag = "" if default_out else f" --ckpt {student_ckpt}"
    echo(f"\nnext: sddcompress export{ckpt_flag} --ort-int8        # ONNX + parity + INT8 (add --trt fp16 on a GPU)")
    flags = "" if default_out else f" --teacher {t_ckpt} --student {student_ckpt}"
    echo("      python benchmarks/latency.py" + flags)
    return summary


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
