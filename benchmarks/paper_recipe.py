"""The paper recipe's speed through the real trainer: SDD-DKD resnet32x4 -> resnet8x4 on CIFAR-100-shaped data.

Runs `sddcompress distill --config cifar100_resnet32x4_resnet8x4` -- the same `trainer.run` that the
command calls, never a copy of its loop -- for a few epochs on generated CIFAR-100-shaped images
(random pixels, 50,000 train / 10,000 val at 32 px, fed to the trainer in memory through the same
input pipelines as real CIFAR files), and reports ms per step, train and evaluation seconds per epoch,
and the 240-epoch projection. The first epoch holds the one-off costs (CUDA-graph capture, cuDNN
autotuning, compilation) and is reported apart; the projection uses the epochs after it.

    python benchmarks/paper_recipe.py                       # GPU: 3 epochs, default --step auto
    python benchmarks/paper_recipe.py --step eager          # the op-by-op step, for comparison
    python benchmarks/paper_recipe.py --device cpu --max-train-batches 4 --train-size 512 --val-size 256

The teacher is a resnet32x4 with untrained weights (written by a one-step `train` run of the same
trainer): speed does not depend on what the weights know.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sddcompress.data.datasets import in_memory_bundle
from sddcompress.engine.config import build_config, read_config_file
from sddcompress.engine.trainer import run

CONFIG = "cifar100_resnet32x4_resnet8x4"
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def cifar100_shaped(train_size: int, val_size: int, seed: int = 0):
    """Random CIFAR-100-shaped images and labels, as the in-memory dataset the trainer takes."""
    rng = np.random.default_rng(seed)

    def split(n: int):
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n)

    return in_memory_bundle("cifar100-shaped", split(train_size), split(val_size), [f"c{i}" for i in range(100)],
                            CIFAR100_MEAN, CIFAR100_STD)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed; the first holds the one-off costs")
    ap.add_argument("--step", default="auto", choices=("auto", "graph", "eager"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--train-size", type=int, default=50_000)
    ap.add_argument("--val-size", type=int, default=10_000)
    ap.add_argument("--max-train-batches", type=int, default=0, help="cap batches per epoch (0 = all)")
    ap.add_argument("--recipe-epochs", type=int, default=240, help="the schedule projected")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    data = cifar100_shaped(args.train_size, args.val_size)
    recipe = read_config_file(CONFIG)
    cpu = args.device == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(cpu=cpu, precision=args.precision, step=args.step, log_every=10**9, workers=0)
        teacher_cfg = build_config({**recipe, "model": recipe["teacher"], "method": "ce"},
                                   {**common, "epochs": 1, "max_train_batches": 1, "out": f"{tmp}/teacher"},
                                   set(common) | {"epochs", "max_train_batches", "out"})
        teacher = run(teacher_cfg, echo=lambda s: None, data=data)
        overrides = {**common, "epochs": args.epochs, "max_train_batches": args.max_train_batches,
                     "compile": args.compile, "teacher_ckpt": str(teacher.best), "out": f"{tmp}/student"}
        cfg = build_config(recipe, overrides, set(overrides))
        said: list[str] = []
        started = time.perf_counter()
        result = run(cfg, echo=said.append, data=data)
        wall = time.perf_counter() - started
    history = result.history
    steps = args.max_train_batches or len(data.train) // cfg.batch_size
    later = history[1:] or history
    train_s = float(np.median([r["train_seconds"] for r in later]))
    eval_s = float(np.median([r["eval_seconds"] for r in later]))
    projection_min = (train_s + eval_s) * args.recipe_epochs / 60
    where = torch.cuda.get_device_name() if not cpu else f"CPU, {torch.get_num_threads()} threads"
    mode = next((line for line in said if line.startswith("training step:")), None)
    print(f"{CONFIG} (SDD-DKD resnet32x4 -> resnet8x4, batch {cfg.batch_size}), CIFAR-100-shaped data, {where}, "
          f"torch {torch.__version__}, --step {args.step}, --precision {args.precision}"
          + (f"; {mode}" if mode else ""))
    print(f"{'epoch':>5}{'train s':>10}{'eval s':>9}{'ms/step':>10}")
    for r in history:
        print(f"{r['epoch']:>5}{r['train_seconds']:>10.2f}{r['eval_seconds']:>9.2f}"
              f"{1000 * r['train_seconds'] / steps:>10.2f}")
    print(f"after the first epoch: {1000 * train_s / steps:.2f} ms per step, {train_s:.1f} s train + {eval_s:.2f} s "
          f"eval per epoch of {steps} steps")
    print(f"projection for {args.recipe_epochs} epochs: {projection_min:.1f} min "
          f"(goal <= 15: {'met' if projection_min <= 15 else 'NOT met'}; stretch <= 5: "
          f"{'met' if projection_min <= 5 else 'NOT met'}); whole benchmark {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": where, "torch": torch.__version__, "step": args.step, "precision": args.precision,
            "steps_per_epoch": steps, "epochs": history, "ms_per_step": 1000 * train_s / steps,
            "train_seconds_per_epoch": train_s, "eval_seconds_per_epoch": eval_s,
            "projection_minutes": projection_min}, indent=2))


if __name__ == "__main__":
    main()
