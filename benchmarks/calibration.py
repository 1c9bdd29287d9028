"""What the number of INT8 training images buys: post-training quantisation with each --calib-sizes value,
per checkpoint, scored on the same validation images.

`--calib-size N` hands the INT8 stage N training images: three quarters of them, at most 256, calibrate and
the rest are held out to score every choice (calibration method, float regions, the precision plan). Per
checkpoint and size this reports the split, the seconds the stage took, the layers it kept float, its plan and
what it recommends shipping, the held-out drop it decided on, and on the validation images: the top-1 drop as
this CPU runs the model and with its Q/DQ as written (TensorRT's rounding), the expected drop (every image's
fp32 margin paired with every image's change of margin) and the agreement with fp32. Then per size, the mean
of each drop over the checkpoints.

    python benchmarks/calibration.py runs/a/checkpoints/best.pt runs/b/checkpoints/best.pt --calib-sizes 256,1024

Each checkpoint is exported once (ONNX and a tensor file with the largest size's training images); every size
then quantises the same file, so the sizes differ only in how many of those images the stage gets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sddcompress.exporting.pipeline import ExportOptions, run_export
from sddcompress_export.atomic import atomic_write_text
from sddcompress_export.chain import int8_model
from sddcompress_export.classifier_metrics import predict_all
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.ort_quantization import predict_cpu, score_against
from sddcompress_export.tensor_file import load_tensor_file

DROPS = ("drop", "drop_as_written", "expected_drop")


def checkpoint_rows(checkpoint: Path, folder: Path, sizes: list[int], data: str | None) -> list[dict]:
    """Export `checkpoint` into `folder`, then quantise it with each size and score every INT8 model."""
    report = run_export(ExportOptions(ckpt=str(checkpoint), out=str(folder), calib_size=max(sizes), data=data),
                        echo=lambda s: None)
    onnx_path, tensors = report["artifacts"]["onnx"]["path"], load_tensor_file(report["tensor_file"]["path"])
    fp32 = predict_cpu(onnx_path, tensors.val_images)
    rows = []
    for size in sizes:
        started = time.perf_counter()
        result = int8_model(onnx_path, folder / f"model.int8-{size}.onnx", tensors.calib_images,
                            tensors.calib_labels, size)
        seconds = time.perf_counter() - started
        on_cpu = OrtClassifier(str(result.path))
        cpu = score_against(predict_all(on_cpu, tensors.val_images, 64), fp32, tensors.val_labels)
        written_runner = on_cpu.as_written()
        written = cpu if written_runner is None else \
            score_against(predict_all(written_runner, tensors.val_images, 64), fp32, tensors.val_labels)
        plan = result.plan or {}
        rows.append({"model": report["model"], "checkpoint": str(checkpoint), "calib_size": size,
                     "calibrated": result.calibration_images, "held_out": result.held_out_images,
                     "seconds": seconds,
                     "fp32_top1": cpu.fp32_top1, "drop": cpu.fp32_top1 - cpu.top1,
                     "drop_as_written": written.fp32_top1 - written.top1,
                     "expected_drop": cpu.fp32_top1 - cpu.expected_top1, "agreement": cpu.agreement,
                     "held_out_drop": result.held_out_drop(), "method": result.method,
                     "float_nodes": len(result.float_nodes), "plan": plan.get("chosen"), "ship": plan.get("ship"),
                     "int8_x_fp32": plan.get("ratio")})
    return rows


def signed(value: float | None, spec: str = "+.2f") -> str:
    """A figure, or '-' where the stage had none (no held-out images below 8 training images, no plan)."""
    return "-" if value is None else format(value, spec)


def table(rows: list[dict], sizes: list[int]) -> str:
    """Markdown: a row per checkpoint and size, then the mean of each drop per size."""
    lines = ["| model | calib size (calibrate + held out) | s | fp32 | drop | as written | expected | agreement | "
             "held-out drop | float nodes | plan, ship (INT8/fp32) |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['calib_size']} ({r['calibrated']} + {r['held_out']}) | {r['seconds']:.0f} | "
                     f"{r['fp32_top1']:.2f} | {r['drop']:+.2f} | {r['drop_as_written']:+.2f} | "
                     f"{r['expected_drop']:+.2f} | {r['agreement']:.2f} | {signed(r['held_out_drop'])} | "
                     f"{r['float_nodes']} | {r['plan']}, {r['ship']} ({signed(r['int8_x_fp32'], '.2f')}) |")
    lines += ["", "| calib size | models | mean drop | mean as written | mean expected | drop <= 0.5 (as written) |",
              "|---|---|---|---|---|---|"]
    for size in sizes:
        these = [r for r in rows if r["calib_size"] == size]
        means = [sum(r[k] for r in these) / len(these) for k in DROPS]
        met = sum(r["drop"] <= 0.5 for r in these), sum(r["drop_as_written"] <= 0.5 for r in these)
        lines.append(f"| {size} | {len(these)} | {means[0]:+.2f} | {means[1]:+.2f} | {means[2]:+.2f} | "
                     f"{met[0]} ({met[1]}) of {len(these)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="train/distill checkpoints (best.pt)")
    ap.add_argument("--calib-sizes", default="256,1024", help="comma-separated --calib-size values")
    ap.add_argument("--data", default=None, help="dataset, if not the one each checkpoint trained on")
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    args = ap.parse_args()
    try:
        sizes = sorted({int(s) for s in args.calib_sizes.split(",") if s})
    except ValueError:
        ap.error(f"--calib-sizes takes comma-separated whole numbers, got {args.calib_sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--calib-sizes needs at least one size, each >= 1")
    missing = [str(c) for c in args.checkpoints if not c.is_file()]
    if missing:
        ap.error(f"no checkpoint at {missing[0]}")
    rows = []
    for index, checkpoint in enumerate(args.checkpoints):
        rows += checkpoint_rows(checkpoint, args.out / f"{index:02d}-{'-'.join(checkpoint.parts[-4:-2])}", sizes,
                                args.data)
        print(f"{checkpoint}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows, sizes)
    atomic_write_text(args.out / "calibration.json", json.dumps(rows, indent=1))
    atomic_write_text(args.out / "calibration.md", text)
    print(text)


if __name__ == "__main__":
    main()
