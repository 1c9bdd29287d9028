"""Click options shared by `train` and `distill`; defaults come from TrainConfig."""

from __future__ import annotations

from typing import Callable

import click

from ..data import DATASET_HELP
from ..engine.config import TrainConfig

D = TrainConfig()


def _apply(options: list[Callable]) -> Callable:
    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def distill_options(fn: Callable) -> Callable:
    return _apply([
        click.option("--teacher", default=None, help="Teacher model name (see `sddcompress models`)."),
        click.option("--teacher-ckpt", default=None,
                     help="Teacher checkpoint. [default: runs/TEACHER-DATA/checkpoints/best.pt if `sddcompress "
                          "train` wrote it]"),
        click.option("--teacher-pretrained", is_flag=True, default=None,
                     help="Teacher from ImageNet weights (torchvision via torch hub, timm/NAME via Hugging Face; "
                          "downloaded once, then cached); only for 1000-class data, otherwise fine-tune it first "
                          "with `sddcompress train --pretrained`."),
        click.option("--method", default="sdd-dkd", show_default=True,
                     help="sdd-dkd, sdd-kd, dkd, kd, msdcrd, sdd-dkd+msdcrd or ce (student alone)."),
        click.option("--scales", default=D.scales, show_default=True,
                     help="SDD pooling scales, comma separated (1,2,4 = 1+4+16 regions)."),
        click.option("--temperature", type=float, default=None, help="Softmax temperature T. [default: 4]"),
        click.option("--alpha", type=float, default=None, help="DKD target-class weight. [default: 1]"),
        click.option("--beta", type=float, default=None, help="DKD non-target-class weight. [default: 8]"),
        click.option("--gamma", type=float, default=None, help="SDD weight of complementary regions. [default: 2]"),
        click.option("--ce-weight", type=float, default=None,
                     help="Cross-entropy weight. [default: 0.1 for (sdd-)kd, 1 for (sdd-)dkd]"),
        click.option("--kd-weight", type=float, default=None,
                     help="Distillation weight. [default: 0.9 for (sdd-)kd, 1 for (sdd-)dkd]"),
        click.option("--warmup-epochs", type=float, default=None,
                     help="Epochs over which the distillation term ramps 0 -> 1. [default: 20 for (sdd-)dkd, 0 else]"),
        click.option("--msd-scales", default=None,
                     help="MSDCRD pooling scales, comma separated. [default: 1,2,4]"),
        click.option("--msd-window", type=float, default=None,
                     help="MSDCRD window side in grid cells; > 1 overlaps neighbouring windows. [default: 1]"),
        click.option("--msd-tau", type=float, default=None, help="MSDCRD InfoNCE temperature. [default: 0.07]"),
        click.option("--msd-space", default=None,
                     help="MSDCRD embedding: features (student projected to the teacher's width) or logits "
                          "(each model's own head). [default: features]"),
        click.option("--msd-categorise", default=None,
                     help="MSDCRD region weights: sdd (complementary regions x gamma) or none. [default: sdd]"),
        click.option("--msd-sample-weight", type=float, default=None,
                     help="Weight of the sample-wise contrastive term. [default: 0.8]"),
        click.option("--msd-feature-weight", type=float, default=None,
                     help="Weight of the feature-wise contrastive term. [default: 0.8]"),
        click.option("--msd-ramp-epochs", type=float, default=None,
                     help="Epochs over which the MSDCRD terms ramp 0 -> 1. [default: 20]"),
    ])(fn)


def training_options(student_flag: str) -> Callable:
    return _apply([
        click.option("--config", default=None,
                     help="YAML file (or shipped config name, e.g. cifar100_resnet32x4_resnet8x4) with any of "
                          "these options; the command line wins."),
        click.option(student_flag, "model", default=D.model, show_default=True,
                     help="Model to train (see `sddcompress models`)."),
        click.option("--pretrained" if student_flag == "--model" else "--student-pretrained", "pretrained",
                     is_flag=True, default=None,
                     help="Start from ImageNet weights (torchvision via torch hub, timm/NAME via Hugging Face; "
                          "downloaded once, then cached) with a new classifier for the data's classes; the data "
                          "is normalised as the weights expect."),
        click.option("--data", default=D.data, show_default=True, help=f"Dataset: {DATASET_HELP}."),
        click.option("--data-dir", default=None, help="Dataset folder for cifar10/cifar100. [default: data/NAME]"),
        click.option("--download", is_flag=True, default=None, help="Download CIFAR if it is missing."),
        click.option("--input-size", type=int, default=None,
                     help="Input size in px. [default: 32, 224 for imagefolder]"),
        click.option("--skip-bad-images", is_flag=True, default=None,
                     help="Skip unreadable images in an image folder (counted) instead of failing."),
        click.option("--train-fraction", type=float, default=D.train_fraction, show_default=True,
                     help="Train on this fraction of each class's training images (fixed subset; val untouched)."),
        click.option("--labelled-fraction", type=float, default=D.labelled_fraction, show_default=True,
                     help="Cross-entropy sees the labels of this fraction of each class's training images (of "
                          "those --train-fraction keeps; a fixed subset drawn with --seed); the distillation terms "
                          "use every image. With --method ce the run trains on the labelled images only."),
        click.option("--unlabelled", default=None, metavar="FOLDER",
                     help="Images without labels (any layout, any size; searched recursively) added to the "
                          "training set for the distillation terms only."),
        click.option("--workers", type=int, default=None,
                     help="Data loader workers. [default: from the CPU count, at most 8]"),
        click.option("--pipeline", default=D.pipeline, show_default=True,
                     help="Training input: device (small images held once on the training device, augmented per "
                          "batch there), loader (PIL per image, DataLoader workers), auto (device on a GPU when "
                          "the images are <= 64 px and fit in 4 GiB, else loader)."),
        click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Training epochs."),
        click.option("--batch-size", type=int, default=D.batch_size, show_default=True,
                     help="Global batch per optimiser step (split across processes and --grad-accum)."),
        click.option("--lr", type=float, default=D.lr, show_default=True, help="Initial SGD learning rate."),
        click.option("--momentum", type=float, default=D.momentum, show_default=True, help="SGD momentum."),
        click.option("--weight-decay", type=float, default=D.weight_decay, show_default=True, help="Weight decay."),
        click.option("--schedule", default=D.schedule, show_default=True,
                     help="LR schedule: step (x lr-decay at --milestones) or cosine."),
        click.option("--milestones", default=",".join(map(str, D.milestones)), show_default=True,
                     help="Epochs at which the step schedule decays the LR."),
        click.option("--lr-decay", type=float, default=D.lr_decay, show_default=True, help="Step schedule factor."),
        click.option("--precision", default=D.precision, show_default=True,
                     help="Mixed precision: auto (bf16 on a GPU that supports it, else none), no, fp16, bf16."),
        click.option("--grad-accum", type=int, default=D.grad_accum, show_default=True,
                     help="Gradient accumulation steps."),
        click.option("--clip-grad-norm", type=float, default=D.clip_grad_norm, show_default=True,
                     help="Clip the gradient norm to this value (0 = off; the paper configs use 40)."),
        click.option("--compile", is_flag=True, default=None, help="torch.compile the student and the teacher."),
        click.option("--step", default=D.step, show_default=True,
                     help="Training step on a CUDA GPU: graph (the whole step recorded once as a CUDA graph and "
                          "replayed per batch), eager (op by op), auto (graph on one GPU; eager with several "
                          "processes, --grad-accum > 1, --skip-nonfinite or fp16, saying why)."),
        click.option("--cpu", is_flag=True, default=None, help="Train on CPU even if a GPU is present."),
        click.option("--sync-bn/--no-sync-bn", default=D.sync_bn, show_default=True,
                     help="Sum batch-norm statistics across processes (multi-process runs)."),
        click.option("--seed", type=int, default=D.seed, show_default=True, help="Random seed."),
        click.option("--out", default=None,
                     help="Output folder (checkpoints/, metrics.jsonl, metrics.csv): new, empty, or a run of "
                          "sddcompress; any other folder is refused. [default: runs/MODEL-DATA for train, "
                          "runs/STUDENT-from-TEACHER-METHOD-DATA for distill]"),
        click.option("--resume", is_flag=True, default=None,
                     help="Require a run to resume in --out (re-running into a non-empty --out resumes anyway)."),
        click.option("--fresh", is_flag=True, default=None, help="Discard the run in --out (its checkpoints and metrics; any other file stays) and start over."),
        click.option("--skip-nonfinite", type=int, default=D.skip_nonfinite, show_default=True,
                     help="Skip up to N steps with a NaN/inf loss instead of stopping. N > 0 checks the loss "
                          "every step (one host-device sync per step); with 0 the check runs at log points and "
                          "before every checkpoint."),
        click.option("--max-train-batches", type=int, default=D.max_train_batches, show_default=True,
                     help="Cap batches per epoch (0 = all); for smoke tests."),
        click.option("--log-every", type=int, default=D.log_every, show_default=True,
                     help="Progress line every N batches when not on a terminal."),
    ])
