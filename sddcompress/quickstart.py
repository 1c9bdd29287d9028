"""`sddcompress quickstart`: the whole distillation story offline, in a few minutes on a CPU.

Trains a ResNet-56 teacher on scikit-learn's bundled digits (1,797 real 8x8 scans, shown at 16 px,
where CIFAR-style ResNets still end on a 4x4 map), then a ResNet-20 student twice: with SDD-DKD
from the teacher and with cross-entropy alone. Every part resumes if interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .engine.config import TrainConfig
from .engine.trainer import RunResult, run
from .run_paths import QUICKSTART_DIR, SUMMARY_NAME

TEACHER, STUDENT, DATA, SIZE = "resnet56", "resnet20", "digits", 16


def _config(out: Path, model: str, epochs: int, fresh: bool, **extra) -> TrainConfig:
    return TrainConfig(model=model, data=DATA, input_size=SIZE, epochs=epochs, batch_size=64, lr=0.05,
                       schedule="cosine", weight_decay=5e-4, out=str(out), fresh=fresh, log_every=10, cpu=True,
                       **extra)


def run_quickstart(out: Path, epochs: int | None, fresh: bool, echo: Callable[[str], None] = print) -> dict:
    """Run the three trainings and print and save (summary.json) the comparison."""
    n = epochs or 15
    n_teacher = 2 * n  # the deeper teacher needs longer to get ahead of what the student learns alone
    echo(f"quickstart: teacher {TEACHER} ({n_teacher} epochs), student {STUDENT} ({n} epochs), data {DATA} at "
         f"{SIZE} px, in {out}/")
    echo(f"[1/3] teacher {TEACHER} (cross-entropy)")
    teacher = run(_config(out / "teacher", TEACHER, n_teacher, fresh), echo)
    t_ckpt = str(teacher.best)
    echo(f"[2/3] student {STUDENT} distilled with SDD-DKD")
    sdd = run(_config(out / "student-sdd-dkd", STUDENT, n, fresh, teacher=TEACHER, teacher_ckpt=t_ckpt,
                      method="sdd-dkd", warmup_epochs=max(1.0, n / 12)), echo)
    echo(f"[3/3] student {STUDENT} with cross-entropy only")
    ce = run(_config(out / "student-ce", STUDENT, n, fresh), echo)

    def row(role: str, model: str, r: RunResult) -> dict:
        return {"role": role, "model": model, "top1": r.best_top1, "params": r.params, "checkpoint": str(r.best)}

    rows = [row("teacher", TEACHER, teacher), row("student (CE)", STUDENT, ce), row("student (SDD-DKD)", STUDENT, sdd)]
    summary = {"data": DATA, "input_size": SIZE, "epochs": n, "teacher_epochs": n_teacher, "rows": rows,
               "teacher_checkpoint": t_ckpt, "student_checkpoint": str(sdd.best)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    _print_table(rows, echo)
    default_out = out.resolve() == QUICKSTART_DIR.resolve()
    ckpt_flag = "" if default_out else f" --ckpt {sdd.best}"
    echo(f"\nnext: sddcompress export{ckpt_flag} --ort-int8        # ONNX + parity + INT8 (add --trt fp16 on a GPU)")
    echo("      python benchmarks/latency.py" + ("" if default_out else f" --teacher {t_ckpt} --student {sdd.best}"))
    return summary


def _print_table(rows: list[dict], echo: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="quickstart results (best val top-1 on held-out digits)")
    for col in ("role", "model", "top-1 %", "params", "checkpoint"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["role"], r["model"], f"{r['top1']:.2f}", f"{r['params'] / 1e6:.2f}M", r["checkpoint"])
    console = Console(width=140)
    with console.capture() as cap:
        console.print(table)
    echo(cap.get().rstrip())
