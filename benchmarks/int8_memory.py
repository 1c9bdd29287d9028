"""Peak memory of INT8 calibration, with the images in chunks (the INT8 stage's way) and in one pass.

ONNX Runtime's histogram calibrators keep every activation of every image until they build their histograms;
the INT8 stage hands them the images a chunk at a time (`sddcompress_export.calibration_chunks`). For one
student at one input size, untrained (memory does not depend on the weights), this calibrates with each method
twice, each time in a fresh process: once as the stage does (its chunk budget, which also caps the batch),
once with every image in one pass, in batches of 32.
It reports each process's peak resident memory above what it held before calibrating (Linux), the seconds, the
ratio of the two peaks, and how far the chunked ranges are from the one-pass ones (median and largest
over the tensors; min-max: equal).

    python benchmarks/int8_memory.py                                  # mobilenetv2 at 224 px, 256 images
    python benchmarks/int8_memory.py --model resnet20 --input-size 32 --images 256

The one-pass run at 224 px needs about 16 GB for percentile and entropy with 256 images of MobileNetV2;
`--images` lowers that.

With `--stage` it runs the whole INT8 stage instead (`quantize_int8` with its defaults, the export's 1024 images
unless `--images` says otherwise), once, in a fresh process, and reports each step's seconds and peak memory.
The weights are untrained, so on random images every INT8 variant disagrees with fp32 and the stage runs every
step, the sensitivity pass included: its worst case.

    python benchmarks/int8_memory.py --stage --images 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sddcompress_export.ort_quantization import METHODS


def _reset_peak() -> None:
    """Start the peak resident memory (VmHWM) afresh from what the process holds now (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def calibrate(prepared: str, images_path: str, method: str, budget: int | None) -> dict:
    """Calibrate `method` on the saved images under `budget` (None: the stage's), in this process."""
    import sddcompress_export.calibration_chunks as calibration_chunks
    from sddcompress_export.ort_quantization import _Quantizer

    if budget is not None:
        calibration_chunks.CHUNK_BYTES = budget
    images = np.load(images_path)
    with tempfile.TemporaryDirectory() as workdir:
        quantizer = _Quantizer(prepared, images, workdir, 32)
        _reset_peak()
        before, started = _status_mb("VmRSS"), time.perf_counter()
        quantizer.quantize(method)
        return {"seconds": time.perf_counter() - started, "peak_mb": _status_mb("VmHWM") - before,
                "chunks": quantizer.chunks, "ranges": json.loads(quantizer.cache(method))["data"]}


def stage(fp32: str, images_path: str) -> dict:
    """The whole INT8 stage on the saved images, in this process: for each step the stage reports, the seconds
    from the start to its end and the peak resident memory during it above the start (the peak is reset after
    every step)."""
    from sddcompress_export.ort_quantization import quantize_int8

    images = np.load(images_path)
    steps, before, started = [], _status_mb("VmRSS"), time.perf_counter()
    _reset_peak()

    def step(line: str) -> None:
        steps.append({"seconds": time.perf_counter() - started, "peak_mb": _status_mb("VmHWM") - before,
                      "step": line})
        _reset_peak()

    with tempfile.TemporaryDirectory() as workdir:
        quantize_int8(fp32, Path(workdir) / "model.int8.onnx", images, echo=step)
    step("written")
    return {"seconds": steps[-1]["seconds"], "peak_mb": max(s["peak_mb"] for s in steps), "steps": steps}


CHILDREN = {"calibrate": calibrate, "stage": stage}


def run_child(function: str, *args) -> dict:
    """`calibrate` or `stage` in a fresh Python process (this script with --child), so that its peak is its
    own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps([function, *args])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"exit code {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _value(end):
    """A range end as ONNX Runtime's calibration cache writes it: a number, or an array as a dict."""
    return end["data"] if isinstance(end, dict) else end


def range_gaps(chunked: dict, one_pass: dict) -> tuple[float, float]:
    """Median and largest relative difference between the two calibrations' ranges over the tensors (a tensor's
    difference: the larger of its two ends')."""
    gaps = []
    for name in one_pass:
        a, b = ([np.asarray(_value(r[name][end]), np.float64) for end in ("lowest", "highest")]
                for r in (chunked, one_pass))
        gaps.append(max(float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))) for x, y in zip(a, b)))
    return float(np.median(gaps)), max(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=None,
                    help="images [default: 256, the most the stage calibrates on; with --stage 1024, the export's]")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/int8-memory")
    ap.add_argument("--stage", action="store_true", help="run the whole INT8 stage instead, step by step")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # JSON [function in CHILDREN, its arguments], run here
    args = ap.parse_args()
    if args.images is None:
        args.images = 1024 if args.stage else 256
    if args.child:
        function, *arguments = json.loads(args.child)
        print(json.dumps(CHILDREN[function](*arguments)))
        return

    import onnx

    from sddcompress.exporting.onnx_writer import write_onnx
    from sddcompress.models.registry import build_model
    from sddcompress_export.calibration_chunks import CHUNK_BYTES, activation_bytes_per_image
    from sddcompress_export.metadata import ModelMetadata
    from sddcompress_export.ort_quantization import prepared_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp32, prepared, images_path = out / "model.onnx", out / "prepared.onnx", out / "images.npy"
    meta = ModelMetadata([f"class{i}" for i in range(1000)], args.input_size, [0.0] * 3, [1.0] * 3,
                         model_name=args.model)
    import torch

    torch.manual_seed(0)  # the same untrained weights every run
    write_onnx(build_model(args.model, 1000, args.input_size), fp32, meta)
    prepared_model(fp32, prepared)
    per_image = activation_bytes_per_image(onnx.load(str(prepared)))
    rng = np.random.default_rng(0)
    np.save(images_path, rng.standard_normal((args.images, 3, args.input_size, args.input_size)).astype(np.float32))
    if args.stage:
        stage_main(args, out, str(fp32), str(images_path))
        return

    rows = []
    for method in args.methods.split(","):
        chunked = run_child("calibrate", str(prepared), str(images_path), method, None)
        one_pass = run_child("calibrate", str(prepared), str(images_path), method, 1 << 62)
        row = {"method": method, "chunked": {k: v for k, v in chunked.items() if k != "ranges"},
               "one_pass": {k: v for k, v in one_pass.items() if k != "ranges"}}
        if "ranges" in chunked and "ranges" in one_pass:
            row["peak_ratio"] = chunked["peak_mb"] / max(one_pass["peak_mb"], 1.0)
            row["range_gap_median"], row["range_gap_max"] = range_gaps(chunked["ranges"], one_pass["ranges"])
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [f"{args.model} at {args.input_size} px, {args.images} images; the graph's float tensors "
             f"{per_image / 1e6:.1f} MB an image; chunk budget {CHUNK_BYTES / 2**30:.1f} GiB; os.cpu_count() "
             f"{os.cpu_count()}", "",
             "| method | chunks | peak MB chunked | peak MB one pass | chunked / one pass | s chunked | s one pass "
             "| range difference: median, largest |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, o = r["chunked"], r["one_pass"]
        if "peak_ratio" not in r:
            lines.append(f"| {r['method']} | {c.get('error', '')} | | | | | | {o.get('error', '')} |")
            continue
        lines.append(f"| {r['method']} | {c['chunks']} | {c['peak_mb']:.0f} | {o['peak_mb']:.0f} | "
                     f"{r['peak_ratio']:.2f} | {c['seconds']:.1f} | {o['seconds']:.1f} | "
                     f"{r['range_gap_median']:.2%}, {r['range_gap_max']:.2%} |")
    (out / "int8_memory.json").write_text(json.dumps(rows, indent=1))
    (out / "int8_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stage_main(args, out: Path, fp32: str, images_path: str) -> None:
    result = run_child("stage", fp32, images_path)
    if "error" in result:
        raise SystemExit(f"the INT8 stage failed: {result['error']}")
    lines = [f"the whole INT8 stage: {args.model} at {args.input_size} px, {args.images} images, untrained; "
             f"os.cpu_count() {os.cpu_count()}", "", "| after (s) | peak MB in the step | step |", "|---|---|---|"]
    lines += [f"| {s['seconds']:.1f} | {s['peak_mb']:.0f} | {s['step']} |" for s in result["steps"]]
    lines += ["", f"{result['seconds']:.1f} s in all, peak {result['peak_mb']:.0f} MB above the start"]
    (out / "int8_stage.json").write_text(json.dumps(result, indent=1))
    (out / "int8_stage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
