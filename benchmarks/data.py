"""Input pipelines against the training step they feed, as ratios measured in the same run:

  (p1) PIL loader, no workers         (p2) PIL loader, the default worker count
  (p3) device-resident pipeline (uint8 images held once on the device, batched crop/flip there)
  (s0) the SDD-DKD step on pre-made tensors (no input pipeline)
  (s1) the SDD-DKD step fed by (p3)   (s2) the SDD-DKD step fed by (p2)

Same student, teacher, batch and images for all; images/s of each. Goals: (p3) >= 20 x the
step's images/s (s0), and the real-data step (s1) <= 1.05 x the step on pre-made tensors (s0).
Each case is measured in interleaved rounds and reports its median, so slow drift of a shared
machine hits all alike. The ratios are printed last.

    python benchmarks/data.py [--data imagefolder:../shared/data/cifar10-subset --batch 64 --size 32]

The default data is the CIFAR-10 subset beside the checkout (../shared/data/cifar10-subset) when
present, else digits.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sddcompress.data import EpochShuffleSampler, SeededTransform, load_dataset
from sddcompress.data.device_pipeline import DeviceImages, passthrough_batch
from sddcompress.engine.config import resolve_workers
from sddcompress.engine.method_nets import distillation_terms, method_networks
from sddcompress.losses import Objective, make_method
from sddcompress.models import build_model

SHARED_SUBSET = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-subset")


def batches_forever(loader: DataLoader, sampler: EpochShuffleSampler, dataset):
    """The loader's batches, epoch after epoch (each epoch re-seeded as the trainer does)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        yield from loader


def images_per_second(batches, n_batches: int, batch: int, work=None) -> float:
    """Pull `n_batches` batches (running `work` on each, if given); images per second."""
    start = time.perf_counter()
    for _ in range(n_batches):
        images, labels = next(batches)
        if work is not None:
            work(images, labels)
    return n_batches * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = f"imagefolder:{SHARED_SUBSET}" if Path(SHARED_SUBSET).is_dir() else "digits"
    ap.add_argument("--data", default=default_data)
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-batches", type=int, default=6, help="batches per round for the step cases")
    ap.add_argument("--pipeline-batches", type=int, default=40, help="batches per round for the pipelines")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_dataset(args.data, input_size=args.size)
    n = len(bundle.train)
    workers = resolve_workers(None)

    pil = SeededTransform(bundle.train, bundle.train_transform, seed=0)
    pil_samplers = [EpochShuffleSampler(n, 0) for _ in range(2)]
    pil0 = batches_forever(DataLoader(pil, batch_size=args.batch, sampler=pil_samplers[0], drop_last=True),
                           pil_samplers[0], pil)
    pil_w = batches_forever(DataLoader(pil, batch_size=args.batch, sampler=pil_samplers[1], drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=device.type == "cuda"), pil_samplers[1], pil)
    started = time.perf_counter()
    resident = DeviceImages(bundle.train, bundle.train_transform, seed=0, device=device)
    build_s = time.perf_counter() - started
    dev_sampler = EpochShuffleSampler(n, 0)
    dev = batches_forever(DataLoader(resident, batch_size=args.batch, sampler=dev_sampler, drop_last=True,
                                     collate_fn=passthrough_batch), dev_sampler, resident)

    classes, method = bundle.num_classes, make_method("sdd-dkd")
    teacher = build_model(args.teacher, classes, args.size)
    student = build_model(args.student, classes, args.size)
    student_net, teacher_net = method_networks(student, teacher, args.size, method, args.student, args.teacher)
    student_net.to(device).train()
    teacher_net.to(device).eval().requires_grad_(False)
    objective = Objective(method)
    opt = torch.optim.SGD(student_net.parameters(), lr=1e-4, momentum=0.9)  # tiny lr: weights barely move
    premade = next(dev)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        terms, _ = distillation_terms(objective, student_net, teacher_net, images, labels, 100.0)  # as the trainer
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def repeat(batch):
        while True:
            yield batch

    cases = {
        "(p1) PIL loader, 0 workers": lambda: images_per_second(pil0, args.pipeline_batches, args.batch),
        f"(p2) PIL loader, {workers} workers": lambda: images_per_second(pil_w, args.pipeline_batches, args.batch),
        "(p3) device-resident": lambda: images_per_second(dev, args.pipeline_batches, args.batch),
        "(s0) SDD-DKD step, pre-made": lambda: images_per_second(repeat(premade), args.step_batches, args.batch, step),
        "(s1) SDD-DKD step <- (p3)": lambda: images_per_second(dev, args.step_batches, args.batch, step),
        "(s2) SDD-DKD step <- (p2)": lambda: images_per_second(pil_w, args.step_batches, args.batch, step),
    }
    for fn in cases.values():  # warm-up: workers started, first epoch begun, kernels chosen
        fn()
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            per_round[name].append(fn())
    rate = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"{args.data}: {n} training images at {args.size}px, batch {args.batch}, {device.type}, "
          f"{torch.get_num_threads()} threads; {args.student} <- {args.teacher} (SDD-DKD); median of {args.rounds} "
          f"rounds; device pipeline built in {build_s:.1f}s ({resident.pixels.numel() / 2**20:.0f} MiB uint8)")
    print(f"{'case':<32}{'images/s':>10}")
    for name, value in rate.items():
        print(f"{name:<32}{value:>10.0f}")
    step_rate = rate["(s0) SDD-DKD step, pre-made"]
    ratios = {
        "device pipeline / step (goal >= 20)": rate["(p3) device-resident"] / step_rate,
        "PIL loader (defaults) / step": rate[f"(p2) PIL loader, {workers} workers"] / step_rate,
        "step time, device-fed / pre-made (goal <= 1.05)": step_rate / rate["(s1) SDD-DKD step <- (p3)"],
        "step time, PIL-fed / pre-made": step_rate / rate["(s2) SDD-DKD step <- (p2)"],
    }
    print("ratios:")
    for name, value in ratios.items():
        print(f"  {name:<50}{value:>8.2f}")


if __name__ == "__main__":
    main()
