"""The training loop behind `train` (cross-entropy) and `distill` (KD, DKD, SDD, MSDCRD), on Accelerate.

Read it like torchvision's reference scripts: `setup` (data, models, optimiser, loaders, resume
state), `train_one_epoch` (which calls `train_step` per batch), `evaluate`, `save_checkpoint`;
`run` strings them together under the output folder's lock.

Reproducibility contract (CPU): the same config and seed give the same weights, whether the run
is uninterrupted, killed and resumed, or split over N processes with the same global batch.
It rests on per-sample seeded augmentation, an epoch-seeded sampler, RNG states in every
checkpoint, and batch norm whose statistics are summed across processes.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataBundle, EpochShuffleSampler, SeededTransform, load_dataset
from ..data.augment import CropFlip
from ..data.device_pipeline import DeviceImages, device_pipeline_fits, passthrough_batch
from ..data.jpeg_pipeline import DeviceJpegImages, jpeg_pipeline_fits
from ..data.datasets import keep_samples, readable_samples
from ..data.fraction import take_train_fraction
from ..data.label_scarce import LabelSplit, describe_split, split_labels
from ..data.preprocessing import SMALL_INPUT_MAX, preprocessed_as
from ..errors import UserError
from ..losses import MethodConfig, Objective, make_method
from ..models import build_model
from ..models.pretrained import build_pretrained, pretrained_num_classes
from ..run_paths import ensure_writable_dir
from .checkpoint import base_record, load_checkpoint, load_model_weights, model_record, require_finite_weights, \
    rng_state, set_rng_state
from .checkpoint import save_checkpoint as write_checkpoint
from .config import (METHOD_OPTIONS, TrainConfig, check_resume, default_out, is_validated, resolve_workers, train_out,
                     validate)
from .captured_step import CapturedStep, CaptureFailed, EpochTally
from .evaluate import evaluate
from .host_memory import keep_freed_memory
from .method_nets import distillation_terms, load_train_only_state, method_networks, train_only_state
from .option_rules import INPUT_SIZE_MAX
from .run_preprocessing import weights_preprocessing
from .metrics import MetricsLog, format_terms
from .run_folder import claim_run_folder, recognise_run_folder, remove_run_files, remove_run_temps
from .run_lock import RunLock
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
    return make_method(cfg.method, **{name: getattr(cfg, name) for name in METHOD_OPTIONS})


def _previous_run(cfg: TrainConfig, out: Path, method: MethodConfig, say: Callable[[str], None]) -> dict | None:
    latest = out / "checkpoints" / "latest.pt"
    if cfg.fresh:  # only the files a run writes, by name: anything else in the folder stays
        remove_run_files(out)
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
        load_model_weights(teacher, ckpt, cfg.teacher, bundle.num_classes, cfg.teacher_ckpt,
                           class_fix=f"a teacher for {cfg.data} needs its {bundle.num_classes} classes: pass one "
                                     f"trained on it (`sddcompress train --model {cfg.teacher} --data {cfg.data}`) "
                                     "or the --data this teacher was trained on")
        if ckpt.get("layout"):
            say(f"teacher weights: {cfg.teacher_ckpt} ({ckpt['layout']} layout, mapped onto {cfg.teacher})")
        saved_size = ckpt["model"].get("input_size")
        if saved_size not in (None, bundle.input_size):
            raise UserError(f"teacher checkpoint '{cfg.teacher_ckpt}' was trained at {saved_size} px, the data "
                            f"is {bundle.input_size} px; pass --input-size {saved_size}")
        info = {"name": cfg.teacher, "ckpt": str(cfg.teacher_ckpt)}
    elif cfg.teacher_pretrained:
        # the class count is known before the weights are fetched: a misfit is refused without them
        fits = pretrained_num_classes(cfg.teacher) in (None, bundle.num_classes)
        teacher, pretrained = build_pretrained(cfg.teacher, bundle.num_classes, bundle.input_size) if fits else \
            (None, None)
        if pretrained is None or pretrained.head != "kept":
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
        return Accelerator(cpu=cfg.cpu, mixed_precision=resolve_precision(cfg),
                           gradient_accumulation_steps=cfg.grad_accum, rng_types=[], log_with=trackers, project_dir=str(out),
                           dynamo_backend="inductor" if cfg.compile else None)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot set up training ({str(exc).splitlines()[0]})") from None


def resolve_precision(cfg: TrainConfig) -> str:
    """--precision auto: bf16 autocast on a GPU that supports it, full float32 elsewhere."""
    if cfg.precision != "auto":
        return cfg.precision
    on_gpu = not cfg.cpu and torch.cuda.is_available()
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


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


@dataclass
class Session:
    """Everything one run holds: built by `setup`, used by `train_one_epoch`, `evaluate`, `save_checkpoint`."""

    cfg: TrainConfig
    method: MethodConfig
    acc: Any
    out: Path
    bundle: DataBundle
    student: nn.Module  # the plain model (what checkpoints hold)
    student_net: nn.Module  # the student as the method sees it (local logits, MSD embedding), unprepared
    student_p: nn.Module  # student_net prepared for training (DDP / compile / autocast)
    teacher: nn.Module | None  # never prepared: frozen, eval mode, on the device
    teacher_info: dict | None
    objective: Callable
    optimizer: Any
    scheduler: Any
    train_ds: SeededTransform | DeviceImages
    sampler: EpochShuffleSampler
    train_loader: Any
    val_loader: Any
    per_process: int
    say: Callable[[str], None]
    start_epoch: int = 0
    skip: int = 0  # micro-batches of `start_epoch` already done (mid-epoch resume)
    epoch_sums: dict = field(default_factory=dict)
    best_top1: float = -1.0
    teacher_metrics: dict | None = None
    last_val: dict = field(default_factory=dict)
    nonfinite_skipped: int = 0
    resume_row: dict | None = None  # the metrics row of the checkpoint being resumed
    student_source: str | None = None  # where pretrained student weights came from (--pretrained)
    tally: EpochTally | None = None  # the epoch's running sums, on the device
    captured: CapturedStep | None = None  # the step as a CUDA graph (--step graph/auto on one GPU)
    labels: LabelSplit | None = None  # labelled and unlabelled training images (--labelled-fraction, --unlabelled)

    @property
    def latest(self) -> Path:
        return self.out / "checkpoints" / "latest.pt"

    @property
    def best(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    @property
    def channels_last(self) -> bool:
        return self.acc.device.type == "cuda"


def setup(cfg: TrainConfig, echo: Callable[[str], None] = print, data: DataBundle | None = None) -> Session:
    """Data, models, optimiser and schedule, loaders, and the state of a run being resumed.

    `cfg` is validated and `cfg.out` set (as `run` does before it takes the folder's lock); `data`, when
    given, replaces the dataset `cfg.data` names (the benchmarks feed generated images this way)."""
    method = method_from_config(cfg)
    out = Path(cfg.out)
    previous = _previous_run(cfg, out, method, echo)
    acc = _make_accelerator(cfg, out)
    if acc.device.type == "cpu":
        keep_freed_memory()  # each step re-allocates the last step's buffers: keep them off page faults
    say = echo if acc.is_main_process else (lambda s: None)
    per_process = _per_process_batch(cfg, acc)

    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    bundle, labels = _training_data(cfg, acc, method, data, previous, say)
    student, student_source, teacher_info, student_net, teacher_net = _networks(cfg, acc, method, bundle, previous,
                                                                                out, say)
    graph_step = _use_graph_step(cfg, acc, say)
    optimizer, scheduler = _optimiser(cfg, student_net, acc.device.type == "cuda")
    train_ds, sampler, train_loader, val_loader = _loaders(cfg, acc, bundle, per_process)
    student_p, optimizer_p, train_p, val_p = acc.prepare(student_net, optimizer, train_loader, val_loader)

    objective = Objective(method, labelled_share=labels.labelled / (labels.labelled + labels.unlabelled))
    session = Session(cfg=cfg, method=method, acc=acc, out=out, bundle=bundle, student=student,
                      student_net=student_net, student_p=student_p, teacher=teacher_net, teacher_info=teacher_info,
                      objective=objective, optimizer=optimizer_p, scheduler=scheduler, train_ds=train_ds,
                      sampler=sampler, train_loader=train_p, val_loader=val_p, per_process=per_process, say=say,
                      student_source=student_source, tally=EpochTally(acc.device), labels=labels)
    if graph_step:
        session.captured = _record_step(cfg, acc, session)
    if previous is not None:
        _restore(session, previous)
    return session


def _per_process_batch(cfg: TrainConfig, acc) -> int:
    """The micro-batch of one process: the global batch over processes and --grad-accum."""
    per_process = cfg.batch_size // (acc.num_processes * cfg.grad_accum)
    if per_process * acc.num_processes * cfg.grad_accum != cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by processes x --grad-accum "
                        f"({acc.num_processes} x {cfg.grad_accum})")
    return per_process


def _training_data(cfg: TrainConfig, acc, method: MethodConfig, data: DataBundle | None, previous: dict | None,
                   say: Callable[[str], None]) -> tuple[DataBundle, LabelSplit]:
    """The dataset as the run trains on it: preprocessed as the weights expect, --train-fraction, and the
    labelled / unlabelled split (--labelled-fraction, --unlabelled)."""
    bundle = data if data is not None else load_training_data(cfg, acc)
    expected = weights_preprocessing(cfg, method.uses_teacher, bundle)
    if expected is not None:
        bundle = preprocessed_as(bundle, expected[1])
        say(f"images preprocessed as {expected[0]} expects: mean {bundle.mean}, std {bundle.std}")
    bundle = take_train_fraction(bundle, cfg.train_fraction)
    bundle, labels = split_labels(bundle, cfg.labelled_fraction, cfg.unlabelled, cfg.seed, method.uses_teacher,
                                  cfg.skip_bad_images)
    if cfg.labelled_fraction < 1.0 or cfg.unlabelled:
        say(describe_split(labels, cfg.labelled_fraction, cfg.seed))
    _check_same_unlabelled(previous, labels, cfg)
    if bundle.skipped_images:
        say(f"skipped {bundle.skipped_images} unreadable images")
    if len(bundle.train) < cfg.batch_size:
        which = f"{len(bundle.train)}"
        if cfg.labelled_fraction < 1.0 and not method.uses_teacher:
            which += f": the labelled images of --labelled-fraction {cfg.labelled_fraction:g}"
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({which})")
    return bundle, labels


def _networks(cfg: TrainConfig, acc, method: MethodConfig, bundle: DataBundle, previous: dict | None, out: Path,
              say: Callable[[str], None]):
    """(student, where pretrained student weights came from, teacher info, student_net, teacher_net): the
    student built (pretrained or resumed), the teacher loaded, both wrapped for the method and on the device."""
    size, classes = bundle.input_size, bundle.num_classes
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
    if previous is not None:
        load_train_only_state(student_net, previous.get("train_only"))
    memory_format = torch.channels_last if acc.device.type == "cuda" else torch.contiguous_format
    student_net.to(acc.device, memory_format=memory_format)
    if teacher_net is not None:  # never prepared: frozen, in eval mode, on the device
        teacher_net.eval().requires_grad_(False).to(acc.device, memory_format=memory_format)
        if cfg.compile:
            teacher_net = torch.compile(teacher_net)
    return student, student_source, teacher_info, student_net, teacher_net


def _optimiser(cfg: TrainConfig, student_net: nn.Module, cuda: bool):
    """SGD over student_net's parameters (the student's and any training-only part, MSDCRD's projection) and
    its schedule; fused on CUDA: one kernel for all parameters, after the step's replay or eager backward."""
    optimizer = torch.optim.SGD(student_net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, fused=cuda or None)
    if cfg.schedule == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=cfg.lr_decay)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return optimizer, scheduler


def _own_process_group(worker_id: int) -> None:
    """A loader worker leaves the training process's process group: a signal sent to that group (Ctrl-C in a
    terminal, `kill -- -PGID`) then reaches the training process alone, which stops at a step boundary with
    a checkpoint, instead of also killing the workers under it mid-batch. The workers still stop with
    their loader (and with the training process, which their watchdog checks)."""
    os.setpgid(0, 0)


def _loaders(cfg: TrainConfig, acc, bundle: DataBundle, per_process: int):
    """(training dataset, its epoch sampler, training loader, validation loader): the device-resident
    pipeline or the PIL loader (--pipeline), the last partial batch dropped (fixed shapes)."""
    cuda = acc.device.type == "cuda"
    workers = (cfg.workers or 0) if bundle.in_memory else resolve_workers(cfg.workers, acc.num_processes)
    loader_args = dict(num_workers=workers, pin_memory=cuda, persistent_workers=cuda and workers > 0,
                       worker_init_fn=_own_process_group if workers > 0 else None)
    sampler = EpochShuffleSampler(len(bundle.train), cfg.seed)
    pipeline = training_pipeline(cfg, bundle, cuda)
    if pipeline in ("device", "jpeg"):
        kind = DeviceImages if pipeline == "device" else DeviceJpegImages
        train_ds = kind(bundle.train, bundle.train_transform, cfg.seed, acc.device)
        train_loader = DataLoader(train_ds, batch_size=per_process, sampler=sampler, drop_last=True,
                                  collate_fn=passthrough_batch)
    else:
        train_ds = SeededTransform(bundle.train, bundle.train_transform, cfg.seed)
        train_loader = DataLoader(train_ds, batch_size=per_process, sampler=sampler, drop_last=True, **loader_args)
    val_loader = _val_loader(bundle, cfg, acc, per_process, isinstance(train_ds, DeviceImages), loader_args)
    return train_ds, sampler, train_loader, val_loader


def _record_step(cfg: TrainConfig, acc, s: "Session") -> CapturedStep:
    """The step recorded as a CUDA graph (run eagerly, uncaptured, off CUDA), with the run's precision."""
    cuda = acc.device.type == "cuda"
    step = CapturedStep(s.student_net, s.teacher, s.objective, s.tally, clip_grad_norm=cfg.clip_grad_norm,
                        autocast_dtype=torch.bfloat16 if resolve_precision(cfg) == "bf16" else None,
                        compile_student=cfg.compile, capture=cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned once, in the capture's warm-up
    return step


def _check_same_unlabelled(previous: dict | None, labels: LabelSplit, cfg: TrainConfig) -> None:
    """A resumed run must find as many images in its --unlabelled folder as it started with."""
    saved = (previous or {}).get("labels") or {}
    if cfg.unlabelled and "from_folder" in saved and saved["from_folder"] != labels.from_folder:
        raise UserError(f"'{cfg.out}' holds a run that started with {saved['from_folder']} images under --unlabelled "
                        f"'{cfg.unlabelled}'; it now holds {labels.from_folder}: restore the folder to resume, or "
                        "--fresh to start over")


def _use_graph_step(cfg: TrainConfig, acc, say: Callable[[str], None]) -> bool:
    """--step: graph where the step can be one CUDA graph, eager elsewhere; auto says why it falls back."""
    if cfg.step == "eager" or (cfg.step == "auto" and acc.device.type != "cuda"):
        return False
    reasons = [why for bad, why in (
        (acc.device.type != "cuda", "needs a CUDA GPU"),
        (acc.num_processes > 1, f"runs in one process ({acc.num_processes} here)"),
        (cfg.grad_accum > 1, "replays whole optimiser steps (--grad-accum 1)"),
        (cfg.skip_nonfinite > 0, "cannot check the loss on the host every step (--skip-nonfinite 0)"),
        (resolve_precision(cfg) == "fp16", "needs --precision bf16 or no (fp16's loss scaler syncs)"),
    ) if bad]
    if not reasons:
        return True
    if cfg.step == "graph":
        raise UserError(f"--step graph {reasons[0]}; pass --step eager or auto")
    say(f"training step: eager, not a CUDA graph (the graph step {reasons[0]})")
    return False


# evaluation batch on a GPU: large, since evaluation stores no activations for backward
GPU_EVAL_BATCH = {SMALL_INPUT_MAX: 1024, INPUT_SIZE_MAX: 256}  # input size up to N px -> batch


def _val_loader(bundle: DataBundle, cfg: TrainConfig, acc, per_process: int, device_resident: bool,
                loader_args: dict):
    """Validation batches: held on the device like the training images when those are, large on a GPU."""
    batch = max(2 * per_process, 64)
    if acc.device.type == "cuda":
        batch = max(batch, next((b for size, b in GPU_EVAL_BATCH.items() if bundle.input_size <= size), 64))
    if device_resident:
        train_tf = bundle.train_transform
        val_tf = CropFlip(train_tf.pre, 0, False, train_tf.mean, train_tf.std)  # no augmentation
        return DataLoader(DeviceImages(bundle.val, val_tf, cfg.seed, acc.device), batch_size=batch,
                          collate_fn=passthrough_batch)
    return DataLoader(SeededTransform(bundle.val, bundle.val_transform, cfg.seed), batch_size=batch, **loader_args)


def load_training_data(cfg: TrainConfig, acc) -> DataBundle:
    """The dataset, prepared by the main process first: only it downloads (--download) and decodes an image
    folder to find unreadable images (--skip-bad-images); the other processes wait for it, then read the
    files it fetched and take its list of readable images."""
    main = acc.is_main_process
    with acc.main_process_first():
        bundle = load_dataset(cfg.data, cfg.data_dir, cfg.input_size, cfg.download and main,
                              cfg.skip_bad_images and main)
    if cfg.skip_bad_images and acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        kept = [readable_samples(bundle) if main else None]
        broadcast_object_list(kept)
        bundle = keep_samples(bundle, kept[0])
    return bundle


def training_pipeline(cfg: TrainConfig, bundle: DataBundle, cuda: bool) -> str:
    """--pipeline resolved to device, jpeg or loader: the one asked for, or (auto) on a GPU the device pipeline
    for small images that fit and the JPEG pipeline for large JPEG folders; the PIL loader otherwise."""
    fits = device_pipeline_fits(bundle.train, bundle.train_transform, bundle.input_size)
    if cfg.pipeline == "device" and not fits:
        raise UserError(f"--pipeline device needs small images (input size <= {SMALL_INPUT_MAX} px) that fit in 4 GiB "
                        "as uint8; "
                        "use --pipeline loader")
    if cfg.pipeline in ("device", "loader"):
        return cfg.pipeline
    jpeg_misfit = jpeg_pipeline_fits(bundle.train, bundle.train_transform, bundle.input_size)
    if cfg.pipeline == "jpeg":
        if jpeg_misfit:
            raise UserError(f"--pipeline jpeg cannot read this data: {jpeg_misfit}; use --pipeline loader")
        return "jpeg"
    if cuda and fits:
        return "device"
    return "jpeg" if cuda and jpeg_misfit is None else "loader"


def _restore(s: Session, previous: dict) -> None:
    """Optimiser, schedule, scaler, RNG and progress of the checkpoint being resumed."""
    s.optimizer.load_state_dict(previous["optimizer"])
    s.scheduler.load_state_dict(previous["scheduler"])
    if s.acc.scaler is not None and previous.get("scaler"):
        s.acc.scaler.load_state_dict(previous["scaler"])
    rng = previous["rng"]
    if len(rng) == s.acc.num_processes:
        set_rng_state(rng[s.acc.process_index])
    s.start_epoch, s.resume_row = previous["epoch"], previous.get("metrics_row")
    # progress is kept in samples: a run resumed with another process count or --grad-accum skips
    # the same images (augmentation and order depend only on (seed, epoch, index), not on the split)
    samples = previous.get("samples_in_epoch")
    micro_batch = s.per_process * s.acc.num_processes
    s.skip = samples // micro_batch if samples is not None else previous["step_in_epoch"]
    s.epoch_sums = previous.get("epoch_sums") or {}
    s.best_top1 = previous.get("best_top1", -1.0)
    s.teacher_metrics = previous.get("teacher_metrics")
    s.last_val = previous.get("last_val", {})
    s.say(f"resuming {s.out} at epoch {s.start_epoch + 1}" + (f", batch {s.skip}" if s.skip else ""))


def save_checkpoint(s: Session, paths: list[Path], epoch_done: int, step_in_epoch: int, sums: dict,
                    row: dict | None = None) -> None:
    """Write one checkpoint (atomically) to each of `paths`; every process must call it.

    Weights holding NaN/inf are never saved (NonFiniteWeights, checked on every process so that all
    stop together); `row` is the metrics row the checkpoint ends on (a resume cuts the log back to it)."""
    from accelerate.utils import gather_object

    require_finite_weights(s.student.state_dict(), epoch_done)
    rngs = gather_object([rng_state()]) if s.acc.num_processes > 1 else [rng_state()]
    if s.acc.is_main_process:
        size, classes, bundle = s.bundle.input_size, s.bundle.num_classes, s.bundle
        record = base_record(
            command="distill" if s.method.uses_teacher else "train",
            model=model_record(s.cfg.model, s.student, classes, size, imagenet_stem=s.cfg.pretrained),
            pretrained=s.student_source,
            teacher=s.teacher_info, teacher_metrics=s.teacher_metrics,
            optimizer=s.optimizer.state_dict(), scheduler=s.scheduler.state_dict(),
            scaler=s.acc.scaler.state_dict() if s.acc.scaler is not None else None,
            rng=rngs, epoch=epoch_done, step_in_epoch=step_in_epoch,
            samples_in_epoch=step_in_epoch * s.per_process * s.acc.num_processes, epoch_sums=sums,
            best_top1=s.best_top1, last_val=s.last_val, config=s.cfg.to_dict(), method=s.method.to_dict(),
            train_only=train_only_state(s.student_net),
            class_names=list(bundle.class_names), data=bundle.name, input_size=size,
            normalization={"mean": list(bundle.mean), "std": list(bundle.std)}, metrics_row=row,
            labels=s.labels.to_dict() if s.labels is not None else None,
            preprocessing=bundle.preprocessing.to_dict() if bundle.preprocessing else None,
        )
        write_checkpoint(record, paths)
    s.acc.wait_for_everyone()


def _first_nonfinite(s: Session, bad_at: torch.Tensor) -> int:
    """The first micro-batch (any process) whose loss was NaN/inf, or -1: one host-device sync."""
    if s.acc.num_processes > 1:
        bad_at = s.acc.gather(bad_at.view(1))
        bad_at = torch.where(bad_at < 0, torch.iinfo(torch.long).max, bad_at).min()
        bad_at = torch.where(bad_at == torch.iinfo(torch.long).max, -1, bad_at)
    return int(bad_at)


def _stop_requested(s: Session, stop: "_StopFlag") -> bool:
    """Whether any process got SIGINT/SIGTERM (an all-reduce with several processes)."""
    if s.acc.num_processes == 1:
        return stop.signum != 0
    flag = torch.tensor([float(stop.signum != 0)], device=s.acc.device)
    return bool(s.acc.reduce(flag, "sum") > 0)


def _raise_nonfinite(s: Session, epoch: int, batch: int) -> None:
    raise NonFiniteLoss(
        f"loss became non-finite (NaN/inf) at epoch {epoch + 1} batch {batch + 1}; stopped. The last good "
        f"checkpoint is intact ({s.latest if s.latest.exists() else 'none yet'}); lower --lr, use --precision no, "
        "clip with --clip-grad-norm, or allow skips with --skip-nonfinite N")


def train_step(s: Session, images: torch.Tensor, labels: torch.Tensor, epoch_progress: float) -> dict:
    """Forward the student (and teacher), the objective, backward and (on sync steps) the optimiser step.

    No host-device sync: the caller checks the loss for NaN/inf only at log points."""
    images = _channels_last(s, images)
    with s.acc.accumulate(s.student_p):
        terms, s_logits = distillation_terms(s.objective, s.student_p, s.teacher, images, labels, epoch_progress,
                                             teacher_context=s.acc.autocast())
        if s.cfg.skip_nonfinite and _skip_nonfinite(s, terms["loss"]):
            return {}
        s.acc.backward(terms["loss"])
        if s.cfg.clip_grad_norm > 0 and s.acc.sync_gradients:
            s.acc.clip_grad_norm_(s.student_p.parameters(), s.cfg.clip_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
    terms["correct"] = (s_logits.detach().argmax(1) == labels).sum()
    return terms


def _captured_step(s: Session, images: torch.Tensor, labels: torch.Tensor) -> dict | None:
    """One replay of the recorded step and the optimiser step after it; None (and from then on the eager
    step) if the step cannot be recorded."""
    try:
        terms = s.captured(_channels_last(s, images), labels)
    except CaptureFailed as exc:
        s.say(f"training step: eager, the CUDA graph could not be recorded ({exc}); --step eager skips the try")
        s.captured = None
        return None
    s.optimizer.step()
    return terms


def _channels_last(s: Session, images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if s.channels_last else images


def _skip_nonfinite(s: Session, loss: torch.Tensor) -> bool:
    """--skip-nonfinite: check every step (a host-device sync per step, the price of skipping)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=s.acc.device)
    if s.acc.num_processes > 1:
        bad = s.acc.reduce(bad, "sum")
    if bad.item() == 0 or s.nonfinite_skipped >= s.cfg.skip_nonfinite:
        return False
    s.nonfinite_skipped += 1
    s.optimizer.zero_grad(set_to_none=True)
    s.say(f"skipped non-finite loss ({s.nonfinite_skipped}/{s.cfg.skip_nonfinite})")
    return True


def train_one_epoch(s: Session, epoch: int, stop: "_StopFlag") -> dict[str, float]:
    """One pass over the training data; returns the epoch's mean loss terms and train top-1."""
    cfg, acc = s.cfg, s.acc
    s.sampler.set_epoch(epoch)
    s.train_ds.set_epoch(epoch)
    steps = len(s.train_loader) if not cfg.max_train_batches else min(len(s.train_loader), cfg.max_train_batches)
    loader = acc.skip_first_batches(s.train_loader, s.skip) if s.skip else s.train_loader
    if hasattr(loader, "set_epoch"):  # Accelerate re-seeds the sampler from its own counter on __iter__
        loader.set_epoch(epoch)
    s.student_p.train()
    tally = s.tally
    tally.reset(s.skip, s.epoch_sums)
    if s.captured is not None:
        s.captured.set_epoch(epoch, steps)
    progress = _Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", acc.is_main_process, cfg.log_every, s.say)
    for i, (images, labels) in enumerate(loader, start=s.skip):
        if i >= steps:
            break
        terms = _captured_step(s, images, labels) if s.captured is not None else None
        if terms is None:
            terms = train_step(s, images, labels, epoch + (i + 1) / steps)
            if not terms:  # skipped (--skip-nonfinite)
                tally.skip()
                continue
            tally.add(terms, labels)
        at_log_point = (i + 1) % max(cfg.log_every, 1) == 0
        if at_log_point or (stop.signum and acc.num_processes == 1):
            first_bad = _first_nonfinite(s, tally.bad_at)
            if first_bad >= 0:
                progress.close()
                _raise_nonfinite(s, epoch, first_bad)
        progress.advance(i + 1, terms["loss"])
        if acc.sync_gradients and (at_log_point or acc.num_processes == 1) and _stop_requested(s, stop):
            save_checkpoint(s, [s.latest], epoch, i + 1, tally.floats())
            progress.close()
            raise Interrupted(f"interrupted at epoch {epoch + 1} batch {i + 1}; checkpoint saved to "
                              f"{s.latest}; run the same command again to resume")
    progress.close()
    first_bad = _first_nonfinite(s, tally.bad_at)  # before any checkpoint: never save non-finite weights
    if first_bad >= 0:
        _raise_nonfinite(s, epoch, first_bad)
    s.skip, s.epoch_sums = 0, {}
    totals = {k: v.to(torch.float64) for k, v in tally.sums.items()}
    if acc.num_processes > 1:
        totals = {k: acc.reduce(v, "sum") for k, v in totals.items()}
    totals = {k: float(v) for k, v in totals.items()}
    n_batches = max(totals.pop("batches", 1.0), 1.0)
    train_top1 = 100.0 * totals.pop("correct", 0.0) / max(totals.pop("seen", 1.0), 1.0)
    return {**{k: v / n_batches for k, v in totals.items()}, "top1": train_top1}


def run(cfg: TrainConfig, echo: Callable[[str], None] = print, data: DataBundle | None = None) -> RunResult:
    """Train (or distil into) `cfg.model`; returns the result, raises UserError for bad input.

    The output folder must be new, empty or a run of ours (run_folder.py); it is marked as a run
    and locked for the whole run (one run per folder); temp files a killed write left there are
    removed first."""
    if not is_validated(cfg):  # configs from build_config (the command line) were validated there
        validate(cfg)
    if cfg.out is None:
        cfg.out = default_out(cfg)
    first_process = int(os.environ.get("RANK", "0")) == 0
    # a folder that is not a run of ours is refused before anything is written into it
    state = recognise_run_folder(Path(cfg.out)) if first_process else None
    out = ensure_writable_dir(cfg.out)
    with _StopFlag(outside_loop=True), (RunLock(out, echo) if first_process else nullcontext()):
        if first_process:
            claim_run_folder(out, state)
            removed = remove_run_temps(out)
            if removed:
                echo(f"removed {len(removed)} temporary file(s) left by a killed run ({removed[0].name})")
        return _run_locked(cfg, echo, data)


def _run_locked(cfg: TrainConfig, echo: Callable[[str], None], data: DataBundle | None) -> RunResult:
    """setup -> the epochs -> the accelerator's teardown."""
    s = setup(cfg, echo, data)
    result = _train_epochs(cfg, s)
    # Trackers closed and the process group destroyed here rather than at the interpreter's exit,
    # where gloo's worker threads can abort the process. After a barrier, and only after a run that
    # finished: destroying a group while another process is still in a collective can hang.
    acc = s.acc
    acc.wait_for_everyone()
    # The DDP-wrapped student holds the process group. Freed after `end_training`, it would destroy the
    # group inside its own deallocation, which holds the GIL while joining gloo's worker thread, and that
    # thread may need the GIL to free the tensors of the last collective: the process hangs. Freed first,
    # the group outlives it, and `end_training` destroys the group with the GIL released.
    del s
    acc.free_memory()
    gc.collect()
    acc.end_training()
    return result


def _train_epochs(cfg: TrainConfig, s: Session) -> RunResult:
    """(teacher evaluation) -> for each epoch: train_one_epoch, scheduler step, evaluate,
    save_checkpoint, then the metrics row that checkpoint describes."""
    acc, say = s.acc, s.say
    log = MetricsLog(s.out)
    if acc.is_main_process:  # the log never runs ahead of the checkpoint the run starts from
        log.truncate_to(s.start_epoch, s.resume_row)
    if s.teacher is not None and s.teacher_metrics is None:
        s.teacher_metrics = evaluate(s.teacher, s.val_loader, acc, autocast=acc.autocast)
        say(f"teacher {cfg.teacher}: val top-1 {s.teacher_metrics['top1']:.2f}")
    if acc.log_with:
        acc.init_trackers("sddcompress", config={k: str(v) for k, v in cfg.to_dict().items()})
    history: list[dict] = []
    if s.start_epoch >= cfg.epochs:
        say(f"the run in '{s.out}' is already complete ({cfg.epochs} epochs); pass --fresh to train again")
    with _StopFlag() as stop:
        for epoch in range(s.start_epoch, cfg.epochs):
            started = time.perf_counter()
            train = train_one_epoch(s, epoch, stop)
            s.scheduler.step()
            trained = time.perf_counter()
            s.last_val = evaluate(s.student, s.val_loader, acc, autocast=acc.autocast)
            evaluated = time.perf_counter()
            improved = s.last_val["top1"] > s.best_top1
            s.best_top1 = max(s.best_top1, s.last_val["top1"])
            train_top1 = train.pop("top1")
            record = {"epoch": epoch + 1, "lr": s.optimizer.param_groups[0]["lr"],
                      **{f"train_{k}": v for k, v in train.items()}, "train_top1": train_top1,
                      "train_labelled": s.labels.labelled, "train_unlabelled": s.labels.unlabelled,
                      "val_top1": s.last_val["top1"], "val_top5": s.last_val["top5"],
                      "val_loss": s.last_val["loss"], "train_seconds": trained - started,
                      "eval_seconds": evaluated - trained, "seconds": time.perf_counter() - started}
            history.append(record)
            if acc.log_with:
                acc.log(record, step=epoch + 1)
            say(f"epoch {epoch + 1}/{cfg.epochs}  {format_terms(train)}  train top-1 {train_top1:.2f}  "
                f"val top-1 {s.last_val['top1']:.2f} top-5 {s.last_val['top5']:.2f}  "
                f"({record['train_seconds']:.1f}s + eval {record['eval_seconds']:.1f}s)")
            save_checkpoint(s, [s.latest, s.best] if improved else [s.latest], epoch + 1, 0, {}, row=record)
            if acc.is_main_process:  # after the checkpoint it describes
                log.write(record)
    params = sum(p.numel() for p in s.student.parameters())
    return RunResult(s.out, s.latest, s.best, s.best_top1, s.last_val, s.teacher_metrics, params, history)


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
