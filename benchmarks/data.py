"""Input pipelines against the training step they feed, as ratios measured in the same run:

  (p1) PIL loader, no workers         (p2) PIL loader, the default worker count
  (p3) device-resident pipeline (uint8 images held once on the device, batched crop/flip there)
  (p4) JPEG pipeline (each batch's files decoded on the device, cropped and flipped there)
  (s0) the SDD-DKD step on pre-made tensors (no input pipeline)
  (s1) the SDD-DKD step fed by (p3)   (s2) the SDD-DKD step fed by (p2)   (s3) fed by (p4)

Same student, teacher, batch and images for all; images/s of each. (p3) and (s1) run for small
images (the device pipeline's), (p4) and (s3) for a JPEG folder above 64 px. Goals: (p3) >= 20 x the
step's images/s (s0) and the real-data step (s1) <= 1.05 x the step on pre-made tensors (s0); at 224 px,
(p4) >= the step's images/s (s0). Each case is measured in interleaved rounds and reports its median,
so slow drift of a shared machine hits all alike. The ratios are printed last.

    python benchmarks/data.py [--data imagefolder:../shared/data/cifar10-subset --batch 64 --size 32]
    python benchmarks/data.py --jpeg-folder 100 --size 224 --teacher resnet50 --student mobilenetv2

The default data is the CIFAR-10 subset beside the checkout (../shared/data/cifar10-subset) when
present, else digits. `--jpeg-folder N` writes N JPEGs per class of 10 classes (ImageNet-like sizes,
300-500 x 240-400 px) to a temporary folder and reads that instead.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sddcompress.data import EpochShuffleSampler, SeededTransform, load_dataset
from sddcompress.data.device_pipeline import DeviceImages, device_pipeline_fits, passthrough_batch
from sddcompress.data.jpeg_pipeline import DeviceJpegImages, jpeg_pipeline_fits
from sddcompress.engine.config import resolve_workers
from sddcompress.engine.method_nets import distillation_terms, method_networks
from sddcompress.losses import Objective, make_method
from sddcompress.models import build_model

DEVICE_CASES = ("(p3) device-resident", "(s1) SDD-DKD step <- (p3)")
JPEG_CASES = ("(p4) JPEG, decoded on the device", "(s3) SDD-DKD step <- (p4)")
SHARED_SUBSET = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-subset")


def write_jpeg_folder(root: Path, per_class: int, classes: int = 10, seed: int = 0) -> Path:
    """`per_class` JPEGs (quality 90) of each of `classes` classes in root/train, two per class in root/val:
    smooth random colour fields with fine noise, 300-500 x 240-400 px, so files and decoding cost about
    what photographs of that size do."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = int(rng.integers(300, 501)), int(rng.integers(240, 401))
                coarse = Image.fromarray(rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8))
                field = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
                noisy = field + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def repeat(batch):
    while True:
        yield batch


def batches_forever(loader: DataLoader, sampler: EpochShuffleSampler, dataset):
    """The loader's batches, epoch after epoch (each epoch re-seeded as the trainer does)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        yield from loader


def images_per_second(batches, n_batches: int, batch: int, work=None, sync=None) -> float:
    """Pull `n_batches` batches (running `work` on each, if given; then `sync`, if given, so that work a
    device queued is counted); images per second."""
    start = time.perf_counter()
    for _ in range(n_batches):
        images, labels = next(batches)
        if work is not None:
            work(images, labels)
    if sync is not None:
        sync()
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
    ap.add_argument("--jpeg-folder", type=int, default=0, metavar="N",
                    help="write N JPEGs per class (10 classes, 300-500 px) to a temporary folder and read it")
    args = ap.parse_args()
    if args.jpeg_folder:
        with tempfile.TemporaryDirectory() as tmp:
            args.data = f"imagefolder:{write_jpeg_folder(Path(tmp), args.jpeg_folder)}"
            measure(args)
    else:
        measure(args)


def measure(args) -> None:
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
    # the device pipelines this data can use: (pipeline case, step case fed by it) -> dataset
    on_device = {}
    built = ""
    if device_pipeline_fits(bundle.train, bundle.train_transform, args.size):
        started = time.perf_counter()
        resident = DeviceImages(bundle.train, bundle.train_transform, seed=0, device=device)
        built = (f"; device pipeline built in {time.perf_counter() - started:.1f}s "
                 f"({resident.pixels.numel() / 2**20:.0f} MiB uint8)")
        on_device[DEVICE_CASES] = resident
    if jpeg_pipeline_fits(bundle.train, bundle.train_transform, args.size) is None:
        on_device[JPEG_CASES] = DeviceJpegImages(bundle.train, bundle.train_transform, 0, device)
    streams = {}
    for cases, dataset in on_device.items():
        sampler = EpochShuffleSampler(n, 0)
        streams[cases] = batches_forever(DataLoader(dataset, batch_size=args.batch, sampler=sampler, drop_last=True,
                                                    collate_fn=passthrough_batch), sampler, dataset)

    classes, method = bundle.num_classes, make_method("sdd-dkd")
    teacher = build_model(args.teacher, classes, args.size)
    student = build_model(args.student, classes, args.size)
    student_net, teacher_net = method_networks(student, teacher, args.size, method, args.student, args.teacher)
    student_net.to(device).train()
    teacher_net.to(device).eval().requires_grad_(False)
    objective = Objective(method)
    opt = torch.optim.SGD(student_net.parameters(), lr=1e-4, momentum=0.9)  # tiny lr: weights barely move
    premade = next(next(iter(streams.values()), pil0))

    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        terms, _ = distillation_terms(objective, student_net, teacher_net, images, labels, 100.0)  # as the trainer
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    pipelines = {"(p1) PIL loader, 0 workers": pil0, f"(p2) PIL loader, {workers} workers": pil_w,
                 **{pipeline_case: batches for (pipeline_case, _), batches in streams.items()}}
    fed = {"(s0) SDD-DKD step, pre-made": repeat(premade),
           **{step_case: batches for (_, step_case), batches in streams.items()}, "(s2) SDD-DKD step <- (p2)": pil_w}
    cases = {**{name: (lambda b=b: images_per_second(b, args.pipeline_batches, args.batch, sync=sync))
                for name, b in pipelines.items()},
             **{name: (lambda b=b: images_per_second(b, args.step_batches, args.batch, step))
                for name, b in fed.items()}}
    for fn in cases.values():  # warm-up: workers started, first epoch begun, kernels chosen
        fn()
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            per_round[name].append(fn())
    rate = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"{args.data}: {n} training images at {args.size}px, batch {args.batch}, {device.type}, "
          f"{torch.get_num_threads()} threads; {args.student} <- {args.teacher} (SDD-DKD); median of {args.rounds} "
          f"rounds{built}")
    print(f"{'case':<32}{'images/s':>10}")
    for name, value in rate.items():
        print(f"{name:<32}{value:>10.0f}")
    step_rate = rate["(s0) SDD-DKD step, pre-made"]
    ratios = {"PIL loader (defaults) / step": rate[f"(p2) PIL loader, {workers} workers"] / step_rate,
              "step time, PIL-fed / pre-made": step_rate / rate["(s2) SDD-DKD step <- (p2)"]}
    if DEVICE_CASES in streams:
        ratios["device pipeline / step (goal >= 20)"] = rate[DEVICE_CASES[0]] / step_rate
        ratios["step time, device-fed / pre-made (goal <= 1.05)"] = step_rate / rate[DEVICE_CASES[1]]
    if JPEG_CASES in streams:
        ratios["JPEG pipeline / step (goal >= 1 at 224 px)"] = rate[JPEG_CASES[0]] / step_rate
        ratios["step time, JPEG-fed / pre-made"] = step_rate / rate[JPEG_CASES[1]]
    print("ratios:")
    for name, value in ratios.items():
        print(f"  {name:<50}{value:>8.2f}")


if __name__ == "__main__":
    main()
