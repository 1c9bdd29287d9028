"""`sddcompress export`: checkpoint -> ONNX (+ parity) -> ORT INT8 -> TensorRT engines, with a JSON report."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sddcompress_export.classifier_metrics import logits_metrics, predict_all
from sddcompress_export.errors import DeployError
from sddcompress_export.parity import check_parity, compare_logits, nonfinite_reason, write_report
from sddcompress_export.tensor_file import load_tensor_file

from ..engine.checkpoint import FOREIGN
from ..engine.evaluation_cli import dataset_for_checkpoint, model_from_checkpoint
from ..errors import UserError
from ..run_paths import ensure_writable_dir, export_dir_for, quickstart_checkpoints, require_out_given
from .onnx_writer import DEFAULT_OPSET, check_opset, checkpoint_metadata, write_onnx
from .tensor_data import write_tensor_file

@dataclass
class ExportOptions:
    ckpt: str | None = None
    out: str | None = None
    model: str | None = None  # for a state dict from elsewhere: its architecture, class count, input size
    num_classes: int | None = None
    input_size: int | None = None
    opset: int = DEFAULT_OPSET
    batch: str = "dynamic"
    ort_int8: bool = False
    trt: list[str] = field(default_factory=list)
    calib_size: int = 256
    val_size: int | None = None  # None: 2000 images up to 64 px, 500 above (a 224-px image is 0.6 MB)
    calib_file: str | None = None
    data: str | None = None
    data_dir: str | None = None
    atol: float = 1e-3
    min_agreement: float = 99.0
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    slim: bool = True
    calib_method: str = "auto"
    int8_keep_float: str = "auto"
    int8_max_drop: float = 0.5


def tensor_file_normalization(path: Path) -> dict:
    """The mean/std a tensor file's images were normalised with (empty if it does not say)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: [float(v) for v in z[k]] for k in ("mean", "std") if k in z.files}


def default_checkpoint() -> str:
    path = (quickstart_checkpoints() or {}).get("student")
    if path and Path(path).is_file():
        return path
    raise UserError("pass --ckpt PATH (a checkpoint from train/distill); there is no runs/quickstart student to "
                    "default to (run `sddcompress quickstart` first)")


def _validate(o: ExportOptions) -> None:
    require_out_given(o.out)
    check_opset(o.opset)
    if o.batch not in ("1", "dynamic"):
        raise UserError(f"--batch must be 1 or dynamic, got '{o.batch}'")
    if not (math.isfinite(o.atol) and o.atol >= 0):
        raise UserError(f"--atol must be a finite number >= 0, got {o.atol}")
    if not (0 <= o.min_agreement <= 100):  # also refuses nan
        raise UserError(f"--min-agreement must be a percentage in 0..100, got {o.min_agreement}")
    if o.calib_size < 0 or (o.val_size is not None and o.val_size <= 0):
        raise UserError("--calib-size must be >= 0 and --val-size > 0")
    for p in o.trt:
        if p not in ("fp32", "fp16", "int8"):
            raise UserError(f"--trt {p}: use fp32, fp16 or int8")
    if "int8" in o.trt and o.calib_size == 0 and not o.calib_file:
        raise UserError("--trt int8 needs calibration data: pass --calib-size N (> 0) or --calib-file data.npz")
    if o.int8_max_drop < 0:
        raise UserError(f"--int8-max-drop must be >= 0, got {o.int8_max_drop}")
    if o.ort_int8 and o.calib_size == 0 and not o.calib_file:
        raise UserError("--ort-int8 needs calibration data: pass --calib-size N (> 0) or --calib-file data.npz")


def _fail(report: dict, path: Path, reason: str) -> None:
    """Write the report as failed, with the reason, and stop the export."""
    report["status"], report["reason"] = "failed", reason
    write_report(path, report)
    raise UserError(f"{reason} (report: {path})")


def run_export(o: ExportOptions, echo: Callable[[str], None] = print) -> dict:
    """Run the export; returns the report (also written to OUT/export_report.json)."""
    _validate(o)
    ckpt_path = Path(o.ckpt or default_checkpoint())
    net, ckpt = model_from_checkpoint(str(ckpt_path), o.model, o.num_classes, o.input_size)
    record = ckpt["model"]
    foreign = ckpt.get("format") == FOREIGN
    default_out = ckpt_path.with_name(ckpt_path.stem + "-export") if foreign else export_dir_for(ckpt_path)
    out = ensure_writable_dir(o.out if o.out is not None else default_out)
    size = record.get("input_size") or 32
    report: dict = {"checkpoint": str(ckpt_path), "model": record["name"], "out": str(out), "artifacts": {}}

    # 1. The tensor file: calibration + validation images, preprocessed exactly as at evaluation.
    started = time.perf_counter()
    tensors_path = out / "data.npz"
    if o.calib_file:
        tensors = load_tensor_file(o.calib_file, size)
        tensors_path = Path(o.calib_file)
    else:
        data = o.data or ckpt.get("data")
        if not data:
            raise UserError("pass --data: the checkpoint does not say which dataset it was trained on")
        bundle = dataset_for_checkpoint(ckpt, data, o.data_dir, size)
        if bundle.num_classes != record["num_classes"]:
            raise UserError(f"'{ckpt_path}' has {record['num_classes']} classes but {data} has {bundle.num_classes}")
        val_size = o.val_size if o.val_size is not None else (2000 if size <= 64 else 500)
        write_tensor_file(bundle, tensors_path, o.calib_size, val_size)
        tensors = load_tensor_file(tensors_path)
    if foreign:  # the file does not say how its inputs look: the data's classes and normalisation
        ckpt.setdefault("class_names", tensors.class_names or None)
        ckpt.setdefault("normalization", tensor_file_normalization(tensors_path))
    meta = checkpoint_metadata(ckpt_path, ckpt)
    report["tensor_file"] = {"path": str(tensors_path), "calib_images": int(len(tensors.calib_images)),
                             "val_images": int(len(tensors.val_images))}
    echo(f"tensor file: {tensors_path} ({len(tensors.calib_images)} calibration, {len(tensors.val_images)} "
         f"validation images, {time.perf_counter() - started:.1f}s)")

    # 2. ONNX, checked, slimmed, annotated; then parity against PyTorch on the validation images.
    started = time.perf_counter()
    onnx_path = out / "model.onnx"
    facts = write_onnx(net, onnx_path, meta, o.opset, dynamic_batch=o.batch == "dynamic", slim=o.slim)
    facts["export_seconds"] = time.perf_counter() - started
    echo(f"ONNX: {onnx_path} (opset {facts['opset']}, {'dynamic' if facts['dynamic_batch'] else 'fixed'} batch, "
         f"{facts['bytes'] / 1e6:.2f} MB{', slimmed with onnxslim' if facts['slimmed'] else ''}, "
         f"{facts['export_seconds']:.1f}s)")
    from sddcompress_export.onnxruntime_runner import OrtClassifier

    def torch_predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).float().numpy()

    batch = 64 if o.batch == "dynamic" else 1
    labels = tensors.val_labels
    ref = predict_all(torch_predict, tensors.val_images, batch)
    fp32_model = OrtClassifier(onnx_path)
    fp32_logits = predict_all(fp32_model, tensors.val_images, batch)
    parity = compare_logits(ref, fp32_logits)
    torch_metrics = logits_metrics(ref, labels)
    fp32_metrics = logits_metrics(fp32_logits, labels)
    report["artifacts"]["onnx"] = {**facts, "parity": parity, "metrics": fp32_metrics}
    report["torch_metrics"] = torch_metrics
    echo(f"parity vs PyTorch on {parity['count']} images: max |logit diff| {parity['max_abs_diff']:.2e}, "
         f"top-1 agreement {parity['top1_agreement']:.2f}%  (torch top-1 {torch_metrics['top1']:.2f}, "
         f"ONNX Runtime top-1 {fp32_metrics['top1']:.2f})")
    report_path = out / "export_report.json"
    try:
        check_parity(parity, o.atol, o.min_agreement, f"{onnx_path}")
    except DeployError as exc:
        _fail(report, report_path, str(exc))

    # 3. INT8 (static, symmetric QDQ, per-channel): one model.int8.onnx for ONNX Runtime and TensorRT.
    if o.ort_int8:
        from .int8_report import int8_section

        report["artifacts"]["ort_int8"] = int8_section(onnx_path, fp32_model, out / "model.int8.onnx", tensors,
                                                       fp32_metrics, ref, batch, o, echo)
        int8_info = report["artifacts"]["ort_int8"]
        if nonfinite_reason(int8_info["parity"], int8_info["path"]):
            _fail(report, report_path, f"INT8 model: {nonfinite_reason(int8_info['parity'], int8_info['path'])}")

    # 4. TensorRT engines (GPU hosts), strongly typed: each precision is its own ONNX file.
    trt_error = None
    if o.trt:
        from sddcompress_export.tensorrt_engine import tensorrt_unavailable

        from .tensorrt_stage import build_engines

        reason = tensorrt_unavailable()
        if reason:
            trt_error = reason
            report["artifacts"]["tensorrt"] = {"skipped": reason, "requested": o.trt}
        else:
            int8_path = report["artifacts"].get("ort_int8", {}).get("path")
            report["artifacts"]["tensorrt"] = build_engines(
                onnx_path, out, o.trt, (o.min_batch, o.opt_batch, o.max_batch), meta, tensors.calib_images,
                tensors.val_images, labels, ref, int8_path, echo)
            for precision, engine in report["artifacts"]["tensorrt"].items():
                reason = nonfinite_reason(engine["parity"], precision) if "parity" in engine else None
                if reason:
                    _fail(report, report_path, f"TensorRT {precision}: {reason}")
    report["status"] = "ok" if trt_error is None else "tensorrt unavailable"
    write_report(report_path, report)
    echo(f"report: {report_path}")
    if trt_error:
        raise UserError(f"{trt_error} (the ONNX file {onnx_path} was written)")
    return report
