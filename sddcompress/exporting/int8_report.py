"""The INT8 step of `sddcompress export`: quantise on training images, score on validation, report plainly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from sddcompress_export import chain
from sddcompress_export.classifier_metrics import logits_metrics, paired_drop, predict_all
from sddcompress_export.latency_ratio import BATCH, int8_latency_ratio
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.parity import compare_logits
from sddcompress_export.tensor_file import TensorFile


def verdict(drop: float, max_drop: float, float_nodes: list[str], standard_error: float | None = None,
            images: int = 0) -> str:
    """One line: goal met, or why not and what to do about it. With the drop's standard error over the `images`
    validation images (`classifier_metrics.paired_drop`), the line says how finely they resolve it."""
    if standard_error is None or images < 2:
        standard_error = None
    spread = "" if standard_error is None else f" (standard error {standard_error:.2f} on {images} validation images)"
    if drop <= max_drop:
        return f"met: top-1 drop {drop:+.2f} <= {max_drop} points{spread}"
    unresolved = "" if standard_error is None or drop - max_drop > standard_error else (
        "; that is within one standard error of the goal, so more validation images (--val-size) would tell "
        "whether it is missed; otherwise")
    floats = f"{len(float_nodes)} node{'' if len(float_nodes) == 1 else 's'} in float"
    return (f"NOT met: post-training quantisation loses {drop:.2f} top-1 points here{spread} ({floats})"
            f"{unresolved}; fix: keep more nodes float (--int8-keep-float with the "
            "'region' of a sensitive unit listed under 'sensitivity'), score the choices on more training "
            "images (--calib-size), or "
            "fine-tune the quantised student against its teacher (--qat-epochs 1)")


def int8_section(onnx_path: Path, fp32_model: OrtClassifier, int8_path: Path, tensors: TensorFile,
                 fp32_logits: np.ndarray, ref: np.ndarray, batch: int, o, echo: Callable[[str], None],
                 qat: Callable | None = None) -> dict:
    """Write model.int8.onnx and return its report entry (method, layers kept in float, drop, verdict).

    `fp32_logits` are the ONNX Runtime fp32 model's on the validation images, `ref` the PyTorch model's.

    Only `tensors.calib_images` (training images, the first `o.calib_size`) reach the quantiser; the
    validation images are used afterwards, to score the chosen model. `qat(result)`, when given, fine-tunes
    the post-training Q/DQ model and rewrites int8_path (returning its summary); both are scored.
    """
    fp32_metrics = logits_metrics(fp32_logits, tensors.val_labels)
    started = time.perf_counter()
    result = chain.int8_model(onnx_path, int8_path, tensors.calib_images, tensors.calib_labels, o.calib_size,
                              o.calib_method, o.int8_keep_float, o.int8_max_drop, echo)
    qat_summary = None
    if qat is not None:
        ptq = logits_metrics(predict_all(OrtClassifier(int8_path), tensors.val_images, batch), tensors.val_labels)
        echo(f"INT8 after post-training quantisation: top-1 {ptq['top1']:.2f} (drop "
             f"{fp32_metrics['top1'] - ptq['top1']:+.2f}); quantization-aware distillation next")
        qat_summary = {**qat(result), "ptq_metrics": ptq,
                       "ptq_top1_drop": fp32_metrics["top1"] - ptq["top1"]}
    seconds = time.perf_counter() - started
    int8_model = OrtClassifier(int8_path)
    logits = predict_all(int8_model, tensors.val_images, batch)
    metrics = logits_metrics(logits, tensors.val_labels)
    drop = fp32_metrics["top1"] - metrics["top1"]
    if qat_summary is not None:
        qat_summary["top1_drop"] = drop
        which = "quantization-aware distillation" if qat_summary["shipped"] == "quantization-aware" else \
            "quantization-aware distillation (post-training model kept)"
        echo(f"INT8 after {which}: top-1 {metrics['top1']:.2f} (drop {drop:+.2f}; post-training "
             f"{qat_summary['ptq_top1_drop']:+.2f})")
    change = paired_drop(fp32_logits, logits, tensors.val_labels)
    line = verdict(drop, o.int8_max_drop, result.float_nodes, change["standard_error"], len(logits))
    echo(f"INT8: {int8_path} ({int8_path.stat().st_size / 1e6:.2f} MB, {seconds:.1f}s), calibration "
         f"{result.method}{' (auto)' if o.calib_method == 'auto' else ''}, float nodes: "
         f"{', '.join(result.float_nodes) or 'none'}; top-1 {metrics['top1']:.2f} vs fp32 "
         f"{fp32_metrics['top1']:.2f}; goal {line}")
    written = as_written_section(int8_model, tensors.val_images, tensors.val_labels, fp32_metrics["top1"],
                                 metrics["top1"], batch, o.int8_max_drop, echo)
    latency = latency_section(fp32_model, int8_model, tensors.val_images)
    echo(f"INT8 latency ({latency['providers'][0]}): " + latency.get("goal", latency.get("skipped", "")))
    plan = result.plan
    recommendation = plan["recommendation"] if plan else f"ship {int8_path.name} (layers chosen by hand: no plan " \
                                                         "was measured for this CPU)"
    echo(f"INT8 recommendation: {recommendation}")
    return {"recommendation": recommendation, "ship": plan["ship"] if plan else "int8", "plan": plan,
            "path": str(int8_path), "bytes": int8_path.stat().st_size, "quantize_seconds": seconds,
            "metrics": metrics, "parity": compare_logits(ref, logits),
            "calibration_method": result.method, "calibration_requested": o.calib_method,
            "calibration_images": result.calibration_images, "held_out_images": result.held_out_images,
            "float_nodes": result.float_nodes, "float_reason": result.float_reason,
            "top1_drop": drop, "top1_drop_standard_error": change["standard_error"],
            "changed_predictions": change["changed"], "goal": line, "latency": latency,
            "quantization": result.to_report(),
            "qat": qat_summary, "as_written": written}


def as_written_section(int8_model: OrtClassifier, images: np.ndarray, labels: np.ndarray, fp32_top1: float,
                       plan_top1: float, batch: int, max_drop: float, echo: Callable[[str], None]) -> dict | None:
    """Top-1 of the INT8 file with its Q/DQ as written: ONNX Runtime without the CPU plan, which rounds and clips
    every activation at its calibrated range as TensorRT does. None where the CPU plan changed nothing.

    The plan's uint8 ReLU outputs reach twice the calibrated range, so where calibration clips activations the
    file scores lower on other runtimes than on this CPU; then one line says so."""
    model = int8_model.as_written()
    if model is None:
        return None
    top1 = logits_metrics(predict_all(model, images, batch), labels)["top1"]
    if plan_top1 - top1 > max_drop:
        echo(f"warning: INT8 with its Q/DQ as written (as TensorRT runs it) scores top-1 {top1:.2f} (drop "
             f"{fp32_top1 - top1:+.2f}), {plan_top1 - top1:.2f} points below ONNX Runtime on this CPU, whose plan "
             "lets ReLU outputs pass the calibrated range: calibration clips this model; for TensorRT build --trt "
             "fp16, or keep more layers float (--int8-keep-float)")
    return {"top1": top1, "top1_drop": fp32_top1 - top1}


def latency_section(fp32_model: OrtClassifier, int8_model: OrtClassifier, images: np.ndarray) -> dict:
    """INT8 / fp32 ONNX Runtime time at batch 32, side by side (skipped for a batch-1 export)."""
    if fp32_model.static_batch not in (None, BATCH):
        return {"skipped": f"the ONNX input has a fixed batch of {fp32_model.static_batch}; export with "
                           f"--batch dynamic to time batch {BATCH}", "providers": int8_model.providers}
    section = {**int8_latency_ratio(fp32_model, int8_model, images), "providers": int8_model.providers,
               "threads": "ONNX Runtime's default (one per physical core)",
               "cpu_plan": int8_model.cpu_plan}
    if int8_model.device == "cpu":  # a deployment serving one request per core runs single-threaded
        one = int8_latency_ratio(OrtClassifier(fp32_model.path, threads=1, providers=int8_model.providers),
                                 OrtClassifier(int8_model.path, threads=1, providers=int8_model.providers), images)
        section["one_thread"] = {k: one[k] for k in ("fp32_ms", "int8_ms", "ratio", "fastest_ratio")}
    return section
