"""Export cost and what it buys, for one student checkpoint, measured in one run:

  export time and ONNX size; PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8 latency (p50) at
  batch 1 and 32, as ratios, with the top-1 of each on the same validation images.

Goals on a CPU: ORT fp32 <= 0.5 x eager at batch 1; INT8 <= 0.7 x fp32 with <= 0.5 point top-1 drop.

    python benchmarks/export.py                 # the quickstart's SDD student
    python benchmarks/export.py --ckpt runs/X/checkpoints/best.pt --out /tmp/export-bench
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sddcompress.benchmarking.backends import ArtifactRunner, TorchRunner
from sddcompress.benchmarking.timer import measure
from sddcompress.engine.evaluation_cli import model_from_checkpoint
from sddcompress.exporting.pipeline import ExportOptions, default_checkpoint, run_export
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.tensor_file import load_tensor_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    ckpt = args.ckpt or default_checkpoint()
    out = args.out or tempfile.mkdtemp(prefix="sddcompress-export-bench-")
    started = time.perf_counter()
    report = run_export(ExportOptions(ckpt=ckpt, out=out, ort_int8=True), echo=lambda s: None)
    total = time.perf_counter() - started
    onnx_info, int8_info = report["artifacts"]["onnx"], report["artifacts"]["ort_int8"]
    data = load_tensor_file(report["tensor_file"]["path"])
    net, _ = model_from_checkpoint(ckpt)
    runners = {"torch eager": TorchRunner(net), "ORT fp32": ArtifactRunner(OrtClassifier(onnx_info["path"])),
               "ORT int8": ArtifactRunner(OrtClassifier(int8_info["path"]))}
    top1 = {"torch eager": report["torch_metrics"]["top1"], "ORT fp32": onnx_info["metrics"]["top1"],
            "ORT int8": int8_info["metrics"]["top1"]}
    p50: dict[tuple[str, int], float] = {}
    for batch in (1, 32):
        x = data.val_images[[i % len(data.val_images) for i in range(batch)]]
        handles = {name: r.prepare(x) for name, r in runners.items()}
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):  # interleaved, so drift hits all three alike
            for name, r in runners.items():
                time.sleep(0.2)  # let the previous runtime's spinning worker threads go idle first
                rounds[name].append(measure(lambda: r.run(handles[name]), warmup=3, min_iters=args.iters).p50)
        for name in runners:
            p50[(name, batch)] = statistics.median(rounds[name])

    print(f"student {report['model']} from {ckpt}; {torch.get_num_threads()} threads; "
          f"{len(data.val_images)} validation images")
    print(f"export (tensor file + ONNX + parity + INT8): {total:.1f}s; ONNX write {onnx_info['export_seconds']:.1f}s; "
          f"INT8 quantisation {int8_info['quantize_seconds']:.1f}s")
    print(f"ONNX size {onnx_info['bytes'] / 1e6:.2f} MB (opset {onnx_info['opset']}), "
          f"INT8 size {int8_info['bytes'] / 1e6:.2f} MB ({int8_info['bytes'] / onnx_info['bytes']:.2f}x)")
    print(f"{'backend':<13}{'top-1':>8}{'p50 b=1 ms':>12}{'x eager':>9}{'p50 b=32 ms':>13}{'x eager':>9}")
    for name in runners:
        e1, e32 = p50[("torch eager", 1)], p50[("torch eager", 32)]
        print(f"{name:<13}{top1[name]:>8.2f}{p50[(name, 1)]:>12.3f}{p50[(name, 1)] / e1:>9.2f}"
              f"{p50[(name, 32)]:>13.3f}{p50[(name, 32)] / e32:>9.2f}")
    fp32_vs_eager = p50[("ORT fp32", 1)] / p50[("torch eager", 1)]
    int8_vs_fp32 = {b: p50[("ORT int8", b)] / p50[("ORT fp32", b)] for b in (1, 32)}
    drop = top1["ORT fp32"] - top1["ORT int8"]
    print(f"goal ORT fp32 <= 0.5 x eager at b=1: {fp32_vs_eager:.2f} -> {'met' if fp32_vs_eager <= 0.5 else 'NOT met'}")
    for b, r in int8_vs_fp32.items():
        print(f"goal INT8 <= 0.7 x fp32 at b={b}: {r:.2f} -> {'met' if r <= 0.7 else 'NOT met'}")
    print(f"goal INT8 top-1 drop <= 0.5 points: {drop:+.2f} -> {'met' if drop <= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
