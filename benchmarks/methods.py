"""Distillation methods compared on real data over seeds, under one budget.

Trains (or reuses) one teacher on every label of the whole training split, then one student per
scenario, method and seed, all with the same schedule and batch:

* full-label: the students train on a fixed fraction of each class's training images (`--subset`), every
  one labelled; distillation and CE see the same images.
* label-scarce: the students see the labels of `--subset` of each class's training images
  (`--labelled-fraction`, drawn with the run's seed); the distillation terms use every training image.
  CE trains on the labelled images only, for as many optimiser steps as a distillation run takes.

A teacher that learned from more data than the student sees has something to give; a teacher no
better than the student alone has not, and then every method is noise around CE.

Writes to --out: one normal train/distill run folder per run (a killed sweep resumes: finished runs are
read back, a half-finished one continues from its checkpoint), methods.json, methods.md (per scenario:
mean +- std of the best-epoch and last-epoch val top-1 per method, each method's gain over CE on the
same seed with its spread; the teacher's top-1) and methods.png (one point per seed; mean and spread).

    python benchmarks/methods.py                        # the CIFAR-10 subset beside the checkout when present, ~1 h on 2 free cores
    python benchmarks/methods.py --scenarios label-scarce --methods ce,sdd-dkd
    python benchmarks/methods.py --epochs 60 --seeds 5 --subset 0.5    # scale up (e.g. on a GPU)
    python benchmarks/methods.py --data digits --methods ce,sdd-dkd --epochs 2 --out runs/try
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from sddcompress.stats import mean_std
from sddcompress_export.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
SHARED_SUBSET = REPO.parent / "shared" / "data" / "cifar10-subset"
PAPER_EPOCHS = 240  # the CIFAR-100 recipes' length; warm-ups/ramps are scaled from it to --epochs
SCENARIOS = ("full-label", "label-scarce")


def default_data() -> tuple[str, int]:
    """The CIFAR-10 subset beside the checkout, ../shared/data/cifar10-subset (shown at 16 px: 4x less compute),
    when present, else digits at 16 px."""
    if SHARED_SUBSET.is_dir():
        return f"imagefolder:{SHARED_SUBSET}", 16
    return "digits", 16


def resized_image_folder(data: str, size: int, out: Path) -> str:
    """An image folder's copy with every image resized to size x size (made once, PNG, under `out`)."""
    from PIL import Image

    source = Path(data.split(":", 1)[1])
    target = out / f"data-{source.name}-{size}px"
    marker = target / ".complete"
    if not marker.is_file():
        for split in ("train", "val"):
            for path in sorted((source / split).glob("*/*")):
                dest = target / split / path.parent.name / (path.stem + ".png")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(path) as img:
                    img.convert("RGB").resize((size, size), Image.Resampling.BOX).save(dest)
        marker.write_text("ok\n")
    return f"imagefolder:{target}"


def student_view(data: str, val_per_class: int, out: Path) -> str:
    """The same train images with the first `val_per_class` val images of each class (symlinks), for students:
    evaluating every epoch on the whole val split would cost more than training them."""
    source = Path(data.split(":", 1)[1])
    target = out / f"{source.name}-val{val_per_class}"
    marker = target / ".complete"
    if not marker.is_file():
        target.mkdir(parents=True, exist_ok=True)
        if not (target / "train").exists():
            (target / "train").symlink_to((source / "train").resolve(), target_is_directory=True)
        for class_dir in sorted(p for p in (source / "val").iterdir() if p.is_dir()):
            dest = target / "val" / class_dir.name
            dest.mkdir(parents=True, exist_ok=True)
            for path in sorted(class_dir.iterdir())[:val_per_class]:
                if not (dest / path.name).exists():
                    (dest / path.name).symlink_to(path.resolve())
        marker.write_text("ok\n")
    return f"imagefolder:{target}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="dataset (see `sddcompress train --help`) [default: the shared "
                                                   "CIFAR-10 subset if present, else digits]")
    ap.add_argument("--input-size", type=int, default=None,
                    help="px; an image folder is first copied at this size [default: 16]")
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--teacher-ckpt", default=None, help="reuse this teacher instead of training one")
    ap.add_argument("--teacher-epochs", type=int, default=30, help="teacher epochs (on the whole train split)")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--methods", default=None, help="comma separated [default: every registered method]")
    ap.add_argument("--label-scarce-methods", default=None,
                    help="comma separated, for the label-scarce scenario (its runs take 1/--subset times the "
                         "steps) [default: --methods]")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10, help="student epochs")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma separated, of: {', '.join(SCENARIOS)} [default: both]")
    ap.add_argument("--subset", type=float, default=0.1,
                    help="fraction of each class's train images the students see (full-label) or whose labels "
                         "they see (label-scarce)")
    ap.add_argument("--batch-size", type=int, default=32, help="student batch")
    ap.add_argument("--val-per-class", type=int, default=50,
                    help="image folders: students are scored on this many val images per class (0 = all)")
    ap.add_argument("--teacher-batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--beta", type=float, default=2.0,
                    help="DKD's non-target weight for the *dkd methods (the official resnet56->resnet20 recipe: 2; "
                         "the methods' default 8 overwhelms a short run)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--max-train-batches", type=int, default=0, help="cap batches per epoch (smoke tests)")
    ap.add_argument("--out", default=str(REPO / "runs" / "methods"))
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, out: Path, model: str, seed: int, epochs: int, fraction: float,
               batch_size: int, data: str | None = None, **extra):
    """A run's TrainConfig: `fraction` of each class's training images (--train-fraction); `extra` on top."""
    from sddcompress.engine.config import TrainConfig

    return TrainConfig(model=model, data=data or args.data, input_size=args.input_size, epochs=epochs,
                       batch_size=batch_size, lr=args.lr, schedule="cosine", weight_decay=5e-4, seed=seed,
                       out=str(out), train_fraction=fraction, cpu=True, log_every=10**9,
                       max_train_batches=args.max_train_batches, **extra)


def read_run(out: Path, epochs: int) -> dict | None:
    """{"best", "last", "epochs", "seconds"} of a finished run folder, else None."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or rows[-1]["epoch"] < epochs:
        return None
    rows = rows[:epochs]
    return {"best": max(r["val_top1"] for r in rows), "last": rows[-1]["val_top1"], "epochs": len(rows),
            "seconds": sum(r.get("seconds", 0.0) for r in rows)}


def ensure_run(cfg, epochs: int, log) -> dict:
    """Read a finished run, or train (resuming a partial one) and read it."""
    from sddcompress.engine.trainer import run

    out = Path(cfg.out)
    done = read_run(out, epochs)
    if done is None:
        started = time.perf_counter()
        run(cfg, echo=lambda s: log(f"    {s}"))
        done = read_run(out, epochs)
        if done is None:
            raise RuntimeError(f"{out}: run ended without {epochs} epochs in metrics.jsonl")
        log(f"  finished in {time.perf_counter() - started:.0f} s")
    done["checkpoint"] = str(out / "checkpoints" / "best.pt")
    return done


_CLAIMS: dict[Path, object] = {}  # the runs this process holds


def _claim_lock(run_dir: Path):
    from sddcompress.engine.run_lock import RunLock

    return RunLock(run_dir.parent, lambda s: None, name=f".{run_dir.name}.claim")


def claimed(run_dir: Path) -> bool:
    """Whether a live process holds this run (the lock dies with its holder)."""
    if run_dir in _CLAIMS:
        return True
    probe = _claim_lock(run_dir)
    if not probe.try_acquire():
        return True
    probe.__exit__()
    return False


def claim(run_dir: Path) -> bool:
    """Take the run for this process unless a live one holds it."""
    if run_dir in _CLAIMS:
        return True
    lock = _claim_lock(run_dir)
    if not lock.try_acquire():
        return False
    _CLAIMS[run_dir] = lock
    return True


def release(run_dir: Path) -> None:
    lock = _CLAIMS.pop(run_dir, None)
    if lock is not None:
        lock.__exit__()


def method_overrides(name: str, epochs: int, beta: float | None = None) -> dict:
    """Ramps/warm-ups scaled from the 240-epoch recipe to this budget (20/240 of the run); DKD's beta."""
    from sddcompress.losses import make_method

    method, scale = make_method(name), epochs / PAPER_EPOCHS
    over = {"warmup_epochs": method.warmup_epochs * scale} if method.warmup_epochs > 0 else {}
    if getattr(method, "uses_msd", False):
        over["msd_ramp_epochs"] = method.msd_ramp_epochs * scale
    if beta is not None and "beta" in method.spec.options:
        over["beta"] = beta
    return over


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: mean/std of best and last top-1, and the paired (same seed) gain over ce."""
    ce = {r["seed"]: r for r in runs.get("ce", [])}
    table = {}
    for method, rows in runs.items():
        if not rows:
            continue
        entry = {"n": len(rows)}
        for key in ("best", "last"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std([r[key] for r in rows])
            gains = [r[key] - ce[r["seed"]][key] for r in rows if r["seed"] in ce]
            if gains and method != "ce":
                entry[f"gain_{key}_mean"], entry[f"gain_{key}_std"] = mean_std(gains)
                entry[f"gain_{key}_n"] = len(gains)
        table[method] = entry
    return table


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def fmt(mean: float, std: float, n: int, sign: bool = False) -> str:
    value = f"{mean:+.2f}" if sign else f"{mean:.2f}"
    return value if n < 2 else f"{value} ± {std:.2f}"


SCENARIO_TEXT = {
    "full-label": "students train on {pct}% of each class's training images, every one labelled",
    "label-scarce": "students see the labels of {pct}% of each class's training images (drawn per seed); the "
                    "distillation terms use every training image; ce trains on the labelled images only, "
                    "{ce_epochs} epochs of them (as many steps as the others' {epochs} epochs)",
}


def write_markdown(path: Path, result: dict) -> None:
    s, t = result["settings"], result["teacher"]
    lines = [
        f"# Distillation methods over seeds ({result['date']}, {result['machine']})", "",
        f"Teacher {s['teacher']} trained {s['teacher_epochs']} epochs on every label of the whole train split of "
        f"{s['data']} ({s['input_size']} px): val top-1 {t['best']:.2f} (best epoch), {t['last']:.2f} (last)"
        + (f"; {t['student_val']:.2f} on the students' val images." if t.get("student_val") is not None else "."),
        f"Students {s['student']}, {s['epochs']} epochs, cosine LR {s['lr']}, batch {s['batch_size']} (teacher "
        f"{s['teacher_batch_size']}), DKD beta {s.get('beta', 8.0):g}, warm-ups/ramps scaled to "
        f"{s['epochs']}/{PAPER_EPOCHS} of the paper recipes; seeds {', '.join(map(str, s['seeds']))}. Val top-1 in % "
        f"on " + (f"{s['val_per_class']} val images per class" if s.get("val_per_class") else "the val split")
        + ", mean ± std over seeds; the gain over ce is paired by seed.",
    ]
    for name, scenario in result["scenarios"].items():
        text = SCENARIO_TEXT[name].format(pct=f"{100 * s['subset']:g}", epochs=s["epochs"],
                                          ce_epochs=scenario.get("ce_epochs", s["epochs"]))
        lines += ["", f"## {name}", "", f"The {text}.", "",
                  "| method | seeds | best-epoch top-1 | last-epoch top-1 | gain over ce (best) | gain over ce (last) |",
                  "|---|---|---|---|---|---|"]
        for method, e in scenario["summary"].items():
            gains = [fmt(e[f"gain_{k}_mean"], e[f"gain_{k}_std"], e[f"gain_{k}_n"], sign=True)
                     if f"gain_{k}_mean" in e else "—" for k in ("best", "last")]
            lines.append(f"| {method} | {e['n']} | {fmt(e['best_mean'], e['best_std'], e['n'])} | "
                         f"{fmt(e['last_mean'], e['last_std'], e['n'])} | {gains[0]} | {gains[1]} |")
    lines += ["", f"Total training time {result['seconds'] / 60:.0f} min (sum of epoch times, teacher included; "
                  "the runs shared the CPU)."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, result: dict) -> None:
    """Best-epoch val top-1, one panel per scenario: a dot per seed, mean and spread per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = result["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4), sharey=True, squeeze=False)
    t_top1 = result["teacher"].get("student_val") or result["teacher"]["best"]
    for ax, (name, scenario) in zip(axes[0], scenarios.items()):
        methods = list(scenario["summary"])
        for i, m in enumerate(methods):
            rows = scenario["runs"][m]
            n = len(rows)
            xs = [i + (j - (n - 1) / 2) * 0.08 for j in range(n)]
            ax.scatter(xs, [r["best"] for r in rows], s=18, color="tab:blue", alpha=0.6, zorder=2)
            e = scenario["summary"][m]
            ax.errorbar([i + 0.25], [e["best_mean"]], yerr=[e["best_std"]], fmt="o", color="black", capsize=4,
                        zorder=3)
        ax.axhline(t_top1, color="tab:red", ls="--", lw=1, label=f"teacher {t_top1:.1f}")
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_title(f"{name}: best-epoch val top-1")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_ylabel("top-1 % (dots: seeds; black: mean ± std)")
    s = result["settings"]
    fig.suptitle(f"{s['student']} students, {100 * s['subset']:g}% of the labels, {s['epochs']} epochs; "
                 f"{result['date']}, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _prepare_data(args, out: Path) -> tuple[str, str]:
    """(the data as given, the teacher's data): the default subset, resized once, and the students' view."""
    if args.data is None:
        args.data, size = default_data()
        args.input_size = args.input_size or size
    source_data = args.data
    if args.data.startswith("imagefolder:") and args.input_size:
        args.data = resized_image_folder(args.data, args.input_size, out)
    teacher_data = args.data
    if args.data.startswith("imagefolder:") and args.val_per_class:
        args.data = student_view(args.data, args.val_per_class, out)
    return source_data, teacher_data


def _scenarios(args) -> list[str]:
    """The scenarios to run; an unknown one ends the sweep in one line."""
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        sys.exit(f"error: unknown scenario(s) {', '.join(unknown) or '(none given)'}; pass --scenarios with "
                 f"{' and/or '.join(SCENARIOS)}")
    return names


def _methods(given: str | None, registered: tuple[str, ...]) -> list[str]:
    """The methods to compare (comma separated; None: every registered one), the CE baseline first; an unknown
    one ends the sweep in one line."""
    methods = [m.strip() for m in given.split(",")] if given else list(registered)
    methods = ["ce"] + [m for m in methods if m != "ce"]
    unknown = [m for m in methods if m not in registered]
    if unknown:
        sys.exit(f"error: unknown method(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
    return methods


class Sweep:
    """The plan (every scenario x seed x method) and its teacher: trained run by run, reported after each.

    Every process works through the plan, claiming runs no live process holds, so several can share a sweep."""

    def __init__(self, args, out: Path, methods: list[str], settings: dict, teacher_data: str, log) -> None:
        self.args, self.out, self.methods, self.settings, self.teacher_data, self.log = \
            args, out, methods, settings, teacher_data, log
        self.plan = [(scenario, seed, method) for scenario in settings["scenarios"] for seed in settings["seeds"]
                     for method in settings["scenario_methods"][scenario]]
        self.ce_epochs = args.epochs  # label-scarce CE: as many optimiser steps as a distillation run
        if "label-scarce" in settings["scenarios"]:
            from sddcompress.data.label_scarce import matched_steps

            every, labelled = matched_steps(args.data, args.input_size, args.subset, args.batch_size)
            if args.max_train_batches:
                every, labelled = min(every, args.max_train_batches), min(labelled, args.max_train_batches)
            self.ce_epochs = math.ceil(args.epochs * every / max(labelled, 1))
        self.teacher_dir = out / f"teacher-{args.teacher}"
        self.teacher = {"best": float("nan"), "last": float("nan"),
                        "checkpoint": str(self.teacher_dir / "checkpoints" / "best.pt"), "seconds": 0.0}
        if args.teacher_ckpt:
            from sddcompress.engine.checkpoint import load_checkpoint

            ckpt = load_checkpoint(args.teacher_ckpt)
            top1 = float(ckpt.get("best_top1", float("nan")))
            last = float(ckpt.get("last_val", {}).get("top1", top1))
            self.teacher = {"best": top1, "last": last, "checkpoint": args.teacher_ckpt, "seconds": 0.0}

    def folder(self, scenario: str, seed: int, method: str) -> Path:
        tag = "" if scenario == "full-label" else f"-{scenario}"
        return self.out / f"{self.args.student}-{method}{tag}-seed{seed}"

    def epochs(self, scenario: str, method: str) -> int:
        return self.ce_epochs if (scenario, method) == ("label-scarce", "ce") else self.args.epochs

    def finished(self, scenario: str, seed: int, method: str) -> dict | None:
        return read_run(self.folder(scenario, seed, method), self.epochs(scenario, method))

    def teacher_ready(self) -> bool:
        if self.args.teacher_ckpt:
            return True
        done = read_run(self.teacher_dir, self.args.teacher_epochs)
        if done is not None:
            self.teacher = {**done, "checkpoint": str(self.teacher_dir / "checkpoints" / "best.pt")}
        return done is not None

    def report(self) -> dict:
        """Summary of every finished run of the plan (whichever process trained it)."""
        self.teacher_ready()
        scenarios: dict[str, dict] = {}
        for name in self.settings["scenarios"]:
            runs: dict[str, list[dict]] = {m: [] for m in self.methods}
            for scenario, seed, method in self.plan:
                row = self.finished(scenario, seed, method) if scenario == name else None
                if row is not None:
                    checkpoint = self.folder(scenario, seed, method) / "checkpoints" / "best.pt"
                    runs[method].append({**row, "seed": seed, "checkpoint": str(checkpoint)})
            runs = {m: rows for m, rows in runs.items() if rows}
            if runs:
                scenarios[name] = {"summary": summarise(runs), "runs": runs}
                if name == "label-scarce":
                    scenarios[name]["ce_epochs"] = self.ce_epochs
        distilled = [r for sc in scenarios.values() for m, rows in sc["runs"].items() if m != "ce" for r in rows]
        if distilled:  # the teacher scored on the students' val images (the comparable number)
            from sddcompress.engine.checkpoint import load_checkpoint

            metrics = load_checkpoint(distilled[0]["checkpoint"]).get("teacher_metrics") or {}
            self.teacher["student_val"] = metrics.get("top1")
        seconds = sum(r["seconds"] for sc in scenarios.values() for rs in sc["runs"].values() for r in rs)
        result = {"date": dt.date.today().isoformat(), "machine": machine(), "settings": self.settings,
                  "teacher": self.teacher, "scenarios": scenarios, "seconds": self.teacher["seconds"] + seconds}
        atomic_write_text(self.out / "methods.json", json.dumps(result, indent=2))
        if any(sc["runs"].get("ce") for sc in scenarios.values()):
            write_markdown(self.out / "methods.md", result)
            write_plot(self.out / "methods.png", result)
        return result

    def _train_teacher(self) -> None:
        args = self.args
        self.log(f"teacher {args.teacher}: {args.teacher_epochs} epochs on the whole train split")
        try:
            ensure_run(run_config(args, self.teacher_dir, args.teacher, 0, args.teacher_epochs, 1.0,
                                  args.teacher_batch_size, self.teacher_data), args.teacher_epochs, self.log)
        finally:
            release(self.teacher_dir)
        self.teacher_ready()
        self.log(f"teacher val top-1 {self.teacher['best']:.2f} (best), {self.teacher['last']:.2f} (last)")

    def _train(self, scenario: str, seed: int, method: str) -> None:
        args, folder, epochs = self.args, self.folder(scenario, seed, method), self.epochs(scenario, method)
        extra = {} if method == "ce" else dict(teacher=args.teacher, teacher_ckpt=self.teacher["checkpoint"])
        if scenario == "label-scarce":
            fraction, extra["labelled_fraction"] = 1.0, args.subset
        else:
            fraction = args.subset
        cfg = run_config(args, folder, args.student, seed, epochs, fraction, args.batch_size, method=method,
                         **extra, **method_overrides(method, epochs, args.beta))
        self.log(f"[{scenario}, seed {seed}] {method}")
        try:
            row = ensure_run(cfg, epochs, self.log)
        finally:
            release(folder)
        self.log(f"  {folder.name}: best {row['best']:.2f} last {row['last']:.2f}")

    def run(self) -> dict:
        while True:
            if not self.teacher_ready() and claim(self.teacher_dir):
                self._train_teacher()
            todo = [run for run in self.plan if self.finished(*run) is None]
            if not todo:
                break
            ready = [run for run in todo if run[2] == "ce" or self.teacher_ready()]
            picked = next((run for run in ready if claim(self.folder(*run))), None)
            if picked is None:
                if all(claimed(self.folder(*run)) for run in todo):
                    break  # the rest is in other processes' hands
                time.sleep(20)  # waiting for the teacher
                continue
            self._train(*picked)
            self.report()
        return self.report()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from sddcompress.losses import method_names

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source_data, teacher_data = _prepare_data(args, out)
    methods = _methods(args.methods, method_names())
    scenarios = _scenarios(args)
    scarce = _methods(args.label_scarce_methods, method_names()) if args.label_scarce_methods else methods
    log_file = (out / "sweep.log").open("a")

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    settings = {"data": source_data, "data_used": args.data, "teacher_data": teacher_data,
                "val_per_class": args.val_per_class, "input_size": args.input_size, "teacher": args.teacher,
                "student": args.student, "teacher_epochs": args.teacher_epochs, "epochs": args.epochs,
                "scenarios": scenarios,
                "scenario_methods": {s: scarce if s == "label-scarce" else methods for s in scenarios},
                "subset": args.subset, "batch_size": args.batch_size, "teacher_batch_size": args.teacher_batch_size,
                "lr": args.lr, "beta": args.beta, "seeds": list(range(args.seeds)), "methods": methods,
                "max_train_batches": args.max_train_batches, "threads": torch.get_num_threads()}
    log(f"methods sweep (pid {os.getpid()}): {json.dumps(settings)}")
    result = Sweep(args, out, methods, settings, teacher_data, log).run()
    log((out / "methods.md").read_text())
    log(f"wrote {out / 'methods.json'}, {out / 'methods.md'}, {out / 'methods.png'}")
    return result


if __name__ == "__main__":
    from sddcompress.engine.trainer import Interrupted
    from sddcompress.errors import UserError

    try:
        main()
    except (UserError, Interrupted) as exc:  # a stopped run keeps its checkpoint: re-running resumes the sweep
        sys.exit(f"error: {exc}")
