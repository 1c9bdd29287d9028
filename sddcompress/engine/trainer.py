"""The training loop behind `train` (cross-entropy) and `distill` (KD, DKD, SDD), on Accelerate.

Reproducibility contract (CPU): the same config and seed give the same weights, whether the run
is uninterrupted, killed and resumed, or split over N processes with the same global batch.
It rests on per-sample seeded augmentation, an epoch-seeded sampler, RNG states in every
checkpoint, and batch norm whose statistics are summed across processes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataBundle, EpochShuffleSampler, SeededTransform, load_dataset
from ..data.fraction import take_train_fraction
from ..data.preprocessing import preprocessed_as
from ..errors import UserError
from ..losses import MethodConfig, Objective, make_method
from ..models import build_model
from ..models.pretrained import build_pretrained
from ..run_paths import ensure_writable_dir
from .checkpoint import base_record, load_checkpoint, load_model_weights, model_record, require_finite_weights, \
    rng_state, save_checkpoint, set_rng_state
from .config import MSD_OPTIONS, TrainConfig, check_resume, default_out, train_out, validate
from .evaluate import evaluate
from .method_nets import detach_outputs, load_train_only_state, method_networks, split_outputs, train_only_state
from .run_preprocessing import weights_preprocessing
from .metrics import MetricsLog, format_terms
from .run_lock import RunLock, remove_orphan_temps
from .sync_batchnorm import convert_batchnorm


class NonFiniteLoss(UserError):
    """The loss became NaN/inf; the run stopped with the last good checkpoint intact."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written, re-running the command resumes."""


@dataclass
class RunResult:
    out: Path
    latest: Path
    best: Path
    best_top1: float
    final: dict
    teacher: dict | None
    params: int
    history: list[dict] = field(default_factory=list)


def method_from_config(cfg: TrainConfig) -> MethodConfig:
    return make_method(cfg.method, scales=cfg.scales, temperature=cfg.temperature, alpha=cfg.alpha, beta=cfg.beta,
                       gamma=cfg.gamma, ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight,
                       warmup_epochs=cfg.warmup_epochs, **{k: getattr(cfg, k) for k in MSD_OPTIONS})


def _previous_run(cfg: TrainConfig, out: Path, method: MethodConfig, say: Callable[[str], None]) -> dict | None:
    latest = out / "checkpoints" / "latest.pt"
    if cfg.fresh:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in ("metrics.jsonl", "metrics.csv"):
            (out / name).unlink(missing_ok=True)
        return None
    if not latest.exists():
        if cfg.resume:
            raise UserError(f"--resume: nothing to resume in '{out}' (no checkpoints/latest.pt)")
        return None
    ckpt = load_checkpoint(latest)
    check_resume(out, ckpt.get("config", {}), ckpt.get("method"), cfg, method.to_dict(), say)
    return ckpt


def _load_teacher(cfg: TrainConfig, bundle: DataBundle, say: Callable[[str], None]) -> tuple[nn.Module, dict]:
    if not cfg.teacher:
        raise UserError(f"method '{cfg.method}' needs a teacher: pass --teacher NAME --teacher-ckpt PATH")
    trained_here = Path(train_out(cfg.teacher, cfg.data)) / "checkpoints" / "best.pt"
    if not cfg.teacher_ckpt and not cfg.teacher_pretrained and trained_here.is_file():
        say(f"teacher weights: {trained_here} (from `sddcompress train`)")
        cfg.teacher_ckpt = str(trained_here)
    if cfg.teacher_ckpt:
        ckpt = load_checkpoint(cfg.teacher_ckpt)
        teacher = build_model(cfg.teacher, bundle.num_classes, bundle.input_size,
                              imagenet_stem=bool(ckpt["model"].get("imagenet_stem")))
        load_model_weights(teacher, ckpt, cfg.teacher, bundle.num_classes, cfg.teacher_ckpt)
        if ckpt.get("layout"):
            say(f"teacher weights: {cfg.teacher_ckpt} ({ckpt['layout']} layout, mapped onto {cfg.teacher})")
        saved_size = ckpt["model"].get("input_size")
        if saved_size not in (None, bundle.input_size):
            raise UserError(f"teacher checkpoint '{cfg.teacher_ckpt}' was trained at {saved_size} px, the data "
                            f"is {bundle.input_size} px; pass --input-size {saved_size}")
        info = {"name": cfg.teacher, "ckpt": str(cfg.teacher_ckpt)}
    elif cfg.teacher_pretrained:
        teacher, pretrained = build_pretrained(cfg.teacher, bundle.num_classes, bundle.input_size)
        if pretrained.head != "kept":
            raise UserError(f"pretrained '{cfg.teacher}' has ImageNet's classes, the data has {bundle.num_classes}: "
                            f"a fresh classifier would teach nothing. Fine-tune it first: `sddcompress train --model "
                            f"{cfg.teacher} --pretrained --data {cfg.data}`, then pass --teacher-ckpt")
        info = {"name": cfg.teacher, "ckpt": pretrained.source}
    else:
        raise UserError(f"the teacher has no weights: pass --teacher-ckpt PATH, or train it first with "
                        f"`sddcompress train --model {cfg.teacher} --data {cfg.data}` (writes {trained_here})")
    return teacher, info


def _make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps its settings in a per-process singleton; a second run in the same process
    # (quickstart, tests, notebooks) with another --precision must not inherit the first one's.
    AcceleratorState._reset_state()
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    try:
        return Accelerator(cpu=cfg.cpu, mixed_precision=cfg.precision, gradient_accumulation_steps=cfg.grad_accum,
                           rng_types=[], log_with=trackers, project_dir=str(out),
                           dynamo_backend="inductor" if cfg.compile else None)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot set up training ({str(exc).splitlines()[0]})") from None


class _StopFlag:
    """Set by SIGINT/SIGTERM; checked between optimiser steps. With `outside_loop`, the signal instead
    raises Interrupted at once (set-up, evaluation of the teacher: nothing to save yet)."""

    def __init__(self, outside_loop: bool = False) -> None:
        self.signum = 0
        self.outside_loop = outside_loop
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not the main thread
                pass
        return self

    def _set(self, signum, frame) -> None:
        self.signum = signum
        if self.outside_loop:
            raise Interrupted(f"interrupted ({signal.Signals(signum).name}) before training started or after it "
                              "ended; every saved checkpoint is intact; run the same command again to resume")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(cfg: TrainConfig, echo: Callable[[str], None] = print) -> RunResult:
    """Train (or distil into) `cfg.model`; returns the result, raises UserError for bad input.

    The output folder is locked for the whole run (one run per folder); temp files a killed
    checkpoint write left there are removed first."""
    validate(cfg)
    if cfg.out is None:
        cfg.out = default_out(cfg)
    out = ensure_writable_dir(cfg.out)
    first_process = int(os.environ.get("RANK", "0")) == 0
    with _StopFlag(outside_loop=True), (RunLock(out, echo) if first_process else nullcontext()):
        if first_process:
            removed = remove_orphan_temps(out / "checkpoints") + remove_orphan_temps(out)
            if removed:
                echo(f"removed {len(removed)} temporary file(s) left by a killed run ({removed[0].name})")
        return _run_locked(cfg, echo)


def _run_locked(cfg: TrainConfig, echo: Callable[[str], None]) -> RunResult:
    from accelerate.utils import gather_object, set_seed

    method = method_from_config(cfg)
    out = Path(cfg.out)
    previous = _previous_run(cfg, out, method, echo)
    acc = _make_accelerator(cfg, out)
    say = echo if acc.is_main_process else (lambda s: None)
    per_process = cfg.batch_size // (acc.num_processes * cfg.grad_accum)
    if per_process * acc.num_processes * cfg.grad_accum != cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by processes x --grad-accum "
                        f"({acc.num_processes} x {cfg.grad_accum})")

    set_seed(cfg.seed)
    bundle = load_dataset(cfg.data, cfg.data_dir, cfg.input_size, cfg.download, cfg.skip_bad_images)
    expected = weights_preprocessing(cfg, method.uses_teacher, bundle)
    if expected is not None:
        bundle = preprocessed_as(bundle, expected[1])
        say(f"images preprocessed as {expected[0]} expects: mean {bundle.mean}, std {bundle.std}")
    bundle = take_train_fraction(bundle, cfg.train_fraction)
    if bundle.skipped_images:
        say(f"skipped {bundle.skipped_images} unreadable images")
    size, classes = bundle.input_size, bundle.num_classes
    if len(bundle.train) < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(bundle.train)})")

    student_source = previous.get("pretrained") if previous is not None else None
    if cfg.pretrained and previous is None:
        student, pretrained = build_pretrained(cfg.model, classes, size)
        student_source = pretrained.source
        say(f"{cfg.model}: {pretrained.loaded_tensors} tensors from {pretrained.source}, classifier "
            f"{pretrained.head} for {classes} classes")
    else:
        student = build_model(cfg.model, classes, size, imagenet_stem=cfg.pretrained)
    if previous is not None:
        load_model_weights(student, previous, cfg.model, classes, str(out / "checkpoints" / "latest.pt"))
    if acc.num_processes > 1 and cfg.sync_bn:
        convert_batchnorm(student, cuda=acc.device.type == "cuda")
    teacher, teacher_info = _load_teacher(cfg, bundle, say) if method.uses_teacher else (None, None)
    student_net, teacher_net = method_networks(student, teacher, size, method, cfg.model, cfg.teacher)
    if teacher_net is not None:
        teacher_net.eval().requires_grad_(False).to(acc.device)
    if previous is not None:
        load_train_only_state(student_net, previous.get("train_only"))

    optimizer = torch.optim.SGD(student_net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if cfg.schedule == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=cfg.lr_decay)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)

    train_ds = SeededTransform(bundle.train, bundle.train_transform, cfg.seed)
    sampler = EpochShuffleSampler(len(train_ds), cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=per_process, sampler=sampler, drop_last=True,
                              num_workers=cfg.workers)
    val_loader = DataLoader(SeededTransform(bundle.val, bundle.val_transform, cfg.seed),
                            batch_size=max(2 * per_process, 64), num_workers=cfg.workers)
    student_p, optimizer_p, train_p, val_p = acc.prepare(student_net, optimizer, train_loader, val_loader)
    objective = Objective(method)

    start_epoch, skip, epoch_sums, best_top1, teacher_metrics = 0, 0, {}, -1.0, None
    if previous is not None:
        optimizer_p.load_state_dict(previous["optimizer"])
        scheduler.load_state_dict(previous["scheduler"])
        if acc.scaler is not None and previous.get("scaler"):
            acc.scaler.load_state_dict(previous["scaler"])
        rng = previous["rng"]
        if len(rng) == acc.num_processes:
            set_rng_state(rng[acc.process_index])
        start_epoch, skip = previous["epoch"], previous["step_in_epoch"]
        epoch_sums = previous.get("epoch_sums") or {}
        best_top1 = previous.get("best_top1", -1.0)
        teacher_metrics = previous.get("teacher_metrics")
        say(f"resuming {out} at epoch {start_epoch + 1}" + (f", batch {skip}" if skip else ""))

    log = MetricsLog(out)
    if acc.is_main_process:  # the log never runs ahead of the checkpoint the run starts from
        log.truncate_to(start_epoch, previous.get("metrics_row") if previous else None)
    if teacher_net is not None and teacher_metrics is None:
        teacher_metrics = evaluate(teacher_net, val_p, acc)
        say(f"teacher {cfg.teacher}: val top-1 {teacher_metrics['top1']:.2f}")
    if acc.log_with:
        acc.init_trackers("sddcompress", config={k: str(v) for k, v in cfg.to_dict().items()})

    steps = len(train_p) if not cfg.max_train_batches else min(len(train_p), cfg.max_train_batches)
    ckpt_dir = out / "checkpoints"
    latest, best = ckpt_dir / "latest.pt", ckpt_dir / "best.pt"
    params = sum(p.numel() for p in student.parameters())
    history: list[dict] = []
    last_val: dict = previous.get("last_val", {}) if previous else {}
    nonfinite_skipped = 0

    def save(path_list: list[Path], epoch_done: int, step_in_epoch: int, sums: dict, row: dict | None = None) -> None:
        require_finite_weights(student.state_dict(), epoch_done)  # on every process, so all stop together
        rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
        if acc.is_main_process:
            record = base_record(
                command="distill" if method.uses_teacher else "train",
                model=model_record(cfg.model, student, classes, size, imagenet_stem=cfg.pretrained),
                pretrained=student_source,
                teacher=teacher_info, teacher_metrics=teacher_metrics,
                optimizer=optimizer_p.state_dict(), scheduler=scheduler.state_dict(),
                scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
                rng=rngs, epoch=epoch_done, step_in_epoch=step_in_epoch, epoch_sums=sums,
                best_top1=best_top1, last_val=last_val, config=cfg.to_dict(), method=method.to_dict(),
                train_only=train_only_state(student_net),
                class_names=list(bundle.class_names), data=bundle.name, input_size=size,
                normalization={"mean": list(bundle.mean), "std": list(bundle.std)}, metrics_row=row,
                preprocessing=bundle.preprocessing.to_dict() if bundle.preprocessing else None,
            )
            save_checkpoint(record, path_list)
        acc.wait_for_everyone()

    if start_epoch >= cfg.epochs:
        say(f"the run in '{out}' is already complete ({cfg.epochs} epochs); pass --fresh to train again")
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            loader = acc.skip_first_batches(train_p, skip) if skip else train_p
            if hasattr(loader, "set_epoch"):  # Accelerate re-seeds the sampler from its own counter on __iter__
                loader.set_epoch(epoch)
            student_p.train()
            sums: dict[str, torch.Tensor | float] = defaultdict(float)
            sums.update(epoch_sums)
            started = time.perf_counter()
            progress = _Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", acc.is_main_process, cfg.log_every, say)
            for i, (images, labels) in enumerate(loader, start=skip):
                if i >= steps:
                    break
                with acc.accumulate(student_p):
                    s_logits, s_local, s_msd = split_outputs(student_p(images))
                    t_logits = t_local = t_msd = None
                    if teacher_net is not None:
                        with torch.inference_mode(), acc.autocast():
                            out_t = split_outputs(teacher_net(images))
                        t_logits, t_local, t_msd = detach_outputs(out_t)
                    terms = objective(s_logits, labels, teacher_logits=t_logits, student_local=s_local,
                                      teacher_local=t_local, epoch_progress=epoch + (i + 1) / steps,
                                      student_msd=s_msd, teacher_msd=t_msd)
                    bad = torch.tensor([0.0 if torch.isfinite(terms["loss"]) else 1.0, float(stop.signum)],
                                       device=acc.device)
                    if acc.num_processes > 1:
                        bad = acc.reduce(bad, "sum")
                    if bad[0] > 0:
                        if nonfinite_skipped < cfg.skip_nonfinite:
                            nonfinite_skipped += 1
                            optimizer_p.zero_grad()
                            say(f"skipped non-finite loss at epoch {epoch + 1} batch {i + 1} "
                                f"({nonfinite_skipped}/{cfg.skip_nonfinite})")
                            continue
                        raise NonFiniteLoss(
                            f"loss became {terms['loss'].item()} at epoch {epoch + 1} batch {i + 1}; stopped. The "
                            f"last good checkpoint is intact ({latest if latest.exists() else 'none yet'}); lower "
                            "--lr, use --precision no, or allow skips with --skip-nonfinite N")
                    acc.backward(terms["loss"])
                    optimizer_p.step()
                    optimizer_p.zero_grad()
                for k, v in terms.items():
                    sums[k] = sums[k] + v.detach().float()
                sums["correct"] = sums["correct"] + (s_logits.detach().argmax(1) == labels).sum().float()
                sums["seen"] = sums["seen"] + float(labels.numel())
                sums["batches"] = sums["batches"] + 1.0
                progress.advance(i + 1, terms["loss"])
                if bad[1] > 0 and acc.sync_gradients:
                    save([latest], epoch, i + 1, {k: float(v) for k, v in sums.items()})
                    progress.close()
                    raise Interrupted(f"interrupted at epoch {epoch + 1} batch {i + 1}; checkpoint saved to "
                                      f"{latest}; run the same command again to resume")
            progress.close()
            skip, epoch_sums = 0, {}
            scheduler.step()
            totals = {k: torch.as_tensor(v, dtype=torch.float64, device=acc.device) for k, v in sums.items()}
            if acc.num_processes > 1:
                totals = {k: acc.reduce(v, "sum") for k, v in totals.items()}
            totals = {k: float(v) for k, v in totals.items()}
            n_batches = max(totals.pop("batches", 1.0), 1.0)
            train_top1 = 100.0 * totals.pop("correct", 0.0) / max(totals.pop("seen", 1.0), 1.0)
            train_terms = {k: v / n_batches for k, v in totals.items()}
            last_val = evaluate(student, val_p, acc)
            improved = last_val["top1"] > best_top1
            best_top1 = max(best_top1, last_val["top1"])
            record = {"epoch": epoch + 1, "lr": optimizer_p.param_groups[0]["lr"],
                      **{f"train_{k}": v for k, v in train_terms.items()}, "train_top1": train_top1,
                      "val_top1": last_val["top1"], "val_top5": last_val["top5"], "val_loss": last_val["loss"],
                      "seconds": time.perf_counter() - started}
            history.append(record)
            if acc.log_with:
                acc.log(record, step=epoch + 1)
            say(f"epoch {epoch + 1}/{cfg.epochs}  {format_terms(train_terms)}  train top-1 {train_top1:.2f}  "
                f"val top-1 {last_val['top1']:.2f} top-5 {last_val['top5']:.2f}  ({record['seconds']:.1f}s)")
            save([latest, best] if improved else [latest], epoch + 1, 0, {}, row=record)
            if acc.is_main_process:  # after the checkpoint it describes
                log.write(record)
    if acc.log_with:
        acc.end_training()
    return RunResult(out, latest, best, best_top1, last_val, teacher_metrics, params, history)


class _Progress:
    """A rich progress bar on a terminal; otherwise a plain line every `every` batches."""

    def __init__(self, total: int, label: str, enabled: bool, every: int, say: Callable[[str], None]) -> None:
        self.total, self.label, self.every, self.say, self.bar = total, label, max(every, 1), say, None
        self.enabled = enabled
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[loss]}"), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, loss="")

    def advance(self, done: int, loss: torch.Tensor) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if done % 10 == 0 or done == self.total:
                self.bar.update(self.task, completed=done, loss=f"loss {loss.item():.4f}")
        elif done % self.every == 0 and done < self.total:
            value = loss.item()
            self.say(f"  {self.label} batch {done}/{self.total} loss {value:.4f}" if math.isfinite(value) else
                     f"  {self.label} batch {done}/{self.total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
