"""`sddcompress export`: checkpoint -> tensor file -> ONNX (+ parity) -> INT8 -> TensorRT, with a JSON report.

The tensor file and the ONNX file are made here (they need torch); every later stage is a function of
`sddcompress_export.chain`, the same ones `sddcompress-deploy` and the benchmark call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sddcompress_export.chain import INT8_FILE, ONNX_FILE, REPORT_FILE, TENSOR_FILE, int8_model
from sddcompress_export.classifier_metrics import logits_metrics, predict_all
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.errors import DeployError
from sddcompress_export.metadata import ModelMetadata
from sddcompress_export.parity import check_parity, compare_logits, nonfinite_reason, write_report
from sddcompress_export.tensor_file import TensorFile, load_for_model, load_tensor_file

from ..engine.checkpoint import FOREIGN
from ..engine.checkpoint_eval import dataset_for_checkpoint, model_from_checkpoint
from ..errors import UserError
from ..run_paths import ensure_writable_dir, export_dir_for, quickstart_checkpoints, require_out_given
from .onnx_writer import check_opset, checkpoint_metadata, write_onnx
from .qat_options import QatOptions
from .tensor_data import write_tensor_file


@dataclass
class ExportOptions:
    ckpt: str | None = None
    out: str | None = None
    model: str | None = None  # for a state dict from elsewhere: its architecture, class count, input size
    num_classes: int | None = None
    input_size: int | None = None
    opset: int = DEFAULTS.opset
    batch: str = "dynamic"
    ort_int8: bool = False
    trt: list[str] = field(default_factory=list)
    calib_size: int = DEFAULTS.calib_size
    val_size: int | None = None  # None: 2000 images up to 64 px, 500 above (a 224-px image is 0.6 MB)
    calib_file: str | None = None
    data: str | None = None
    data_dir: str | None = None
    atol: float = DEFAULTS.atol
    min_agreement: float = DEFAULTS.min_agreement
    min_batch: int = DEFAULTS.min_batch
    opt_batch: int = DEFAULTS.opt_batch
    max_batch: int = DEFAULTS.max_batch
    slim: bool = True
    calib_method: str = DEFAULTS.calib_method
    int8_keep_float: str = DEFAULTS.keep_float
    int8_max_drop: float = DEFAULTS.max_drop
    qat: QatOptions = field(default_factory=QatOptions)  # quantization-aware distillation (qat.epochs > 0)

    @property
    def batches(self) -> tuple[int, int, int]:
        """The TensorRT optimisation profile: (min, opt, max) batch."""
        return self.min_batch, self.opt_batch, self.max_batch


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
    if "int8" in o.trt and o.calib_size == 0:
        raise UserError("--trt int8 needs calibration data: pass --calib-size N (> 0)")
    if o.int8_max_drop < 0:
        raise UserError(f"--int8-max-drop must be >= 0, got {o.int8_max_drop}")
    if o.ort_int8 and o.calib_size == 0:
        raise UserError("--ort-int8 needs calibration data: pass --calib-size N (> 0)")
    o.qat.validate()
    if o.qat.epochs and not o.ort_int8:
        raise UserError("--qat-epochs fine-tunes the INT8 model: add --ort-int8")


@dataclass
class _Export:
    """What the steps of one export share: the options, the output folder and the report being filled."""

    o: ExportOptions
    out: Path
    report: dict
    echo: Callable[[str], None]

    @property
    def report_path(self) -> Path:
        return self.out / REPORT_FILE

    def fail(self, reason: str) -> None:
        """Write the report as failed, with the reason, and stop the export."""
        self.report["status"], self.report["reason"] = "failed", reason
        write_report(self.report_path, self.report)
        raise UserError(f"{reason} (report: {self.report_path})")


def run_export(o: ExportOptions, echo: Callable[[str], None] = print) -> dict:
    """Run the export; returns the report (also written to OUT/export_report.json)."""
    _validate(o)
    ckpt_path = Path(o.ckpt or default_checkpoint())
    net, ckpt = model_from_checkpoint(str(ckpt_path), o.model, o.num_classes, o.input_size)
    foreign = ckpt.get("format") == FOREIGN
    default_out = ckpt_path.with_name(ckpt_path.stem + "-export") if foreign else export_dir_for(ckpt_path)
    out = ensure_writable_dir(o.out if o.out is not None else default_out)
    run = _Export(o, out, {"checkpoint": str(ckpt_path), "model": ckpt["model"]["name"], "out": str(out),
                           "artifacts": {}}, echo)
    tensors, meta = _tensor_file_step(run, ckpt_path, ckpt)
    onnx_path, fp32_model, ref, fp32_logits = _onnx_step(run, net, meta, tensors)
    if o.ort_int8:
        _int8_step(run, onnx_path, fp32_model, tensors, fp32_logits, ref, _qat_step(run, ckpt) if o.qat.epochs
                   else None)
    trt_error = _tensorrt_step(run, onnx_path, tensors, ref) if o.trt else None
    run.report["status"] = "ok" if trt_error is None else "tensorrt unavailable"
    write_report(run.report_path, run.report)
    echo(f"report: {run.report_path}")
    if trt_error:
        raise UserError(f"{trt_error} (the ONNX file {onnx_path} was written)")
    return run.report


def _tensor_file_step(run: _Export, ckpt_path: Path, ckpt: dict) -> tuple[TensorFile, ModelMetadata]:
    """The tensor file: calibration + validation images, preprocessed exactly as at evaluation; and the
    metadata the ONNX file will carry."""
    o, record = run.o, ckpt["model"]
    size = record.get("input_size") or 32
    started = time.perf_counter()
    tensors_path = run.out / TENSOR_FILE
    if o.calib_file:
        tensors = load_tensor_file(o.calib_file, size)
        tensors_path = Path(o.calib_file)
    else:
        data = o.data or ckpt.get("data")
        if not data:
            raise UserError("pass --data: the checkpoint does not say which dataset it was trained on")
        bundle = dataset_for_checkpoint(ckpt, data, o.data_dir, size)
        if bundle.skipped_images:
            run.echo(f"skipped {bundle.skipped_images} unreadable images, as the run did (it was trained with "
                     "--skip-bad-images)")
        if bundle.num_classes != record["num_classes"]:
            raise UserError(f"'{ckpt_path}' has {record['num_classes']} classes but {data} has {bundle.num_classes}")
        val_size = o.val_size if o.val_size is not None else (2000 if size <= 64 else 500)
        write_tensor_file(bundle, tensors_path, o.calib_size, val_size)
        tensors = load_tensor_file(tensors_path)
    foreign = ckpt.get("format") == FOREIGN
    if foreign:  # the file does not say how its inputs look: the data's classes and normalisation
        ckpt.setdefault("class_names", tensors.class_names or None)
        ckpt.setdefault("normalization", tensor_file_normalization(tensors_path))
    meta = checkpoint_metadata(ckpt_path, ckpt)
    if o.calib_file:  # a file from elsewhere must fit the model (its values too, unless they define the model's)
        need = ("val", "calib") if o.ort_int8 or "int8" in o.trt else ("val",)
        tensors = load_for_model(o.calib_file, meta, need, check_values=not foreign)
    run.report["tensor_file"] = {"path": str(tensors_path), "calib_images": int(len(tensors.calib_images)),
                                 "val_images": int(len(tensors.val_images))}
    run.echo(f"tensor file: {tensors_path} ({len(tensors.calib_images)} calibration, {len(tensors.val_images)} "
             f"validation images, {time.perf_counter() - started:.1f}s)")
    return tensors, meta


def _onnx_step(run: _Export, net: torch.nn.Module, meta: ModelMetadata, tensors: TensorFile):
    """ONNX, checked, slimmed, annotated; then parity against PyTorch on the validation images.

    Returns (ONNX path, its ONNX Runtime classifier, the PyTorch logits, the ONNX file's logits)."""
    from sddcompress_export.onnxruntime_runner import OrtClassifier

    o = run.o
    started = time.perf_counter()
    onnx_path = run.out / ONNX_FILE
    facts = write_onnx(net, onnx_path, meta, o.opset, dynamic_batch=o.batch == "dynamic", slim=o.slim)
    facts["export_seconds"] = time.perf_counter() - started
    run.echo(f"ONNX: {onnx_path} (opset {facts['opset']}, {'dynamic' if facts['dynamic_batch'] else 'fixed'} "
             f"batch, {facts['bytes'] / 1e6:.2f} MB{', slimmed with onnxslim' if facts['slimmed'] else ''}, "
             f"{facts['export_seconds']:.1f}s)")

    def torch_predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).float().numpy()

    batch = _score_batch(o)
    ref = predict_all(torch_predict, tensors.val_images, batch)
    fp32_model = OrtClassifier(onnx_path)
    fp32_logits = predict_all(fp32_model, tensors.val_images, batch)
    parity = compare_logits(ref, fp32_logits)
    torch_metrics = logits_metrics(ref, tensors.val_labels)
    fp32_metrics = logits_metrics(fp32_logits, tensors.val_labels)
    run.report["artifacts"]["onnx"] = {**facts, "parity": parity, "metrics": fp32_metrics}
    run.report["torch_metrics"] = torch_metrics
    run.echo(f"parity vs PyTorch on {parity['count']} images: max |logit diff| {parity['max_abs_diff']:.2e}, "
             f"top-1 agreement {parity['top1_agreement']:.2f}%  (torch top-1 {torch_metrics['top1']:.2f}, "
             f"ONNX Runtime top-1 {fp32_metrics['top1']:.2f})")
    try:
        check_parity(parity, o.atol, o.min_agreement, f"{onnx_path}")
    except DeployError as exc:
        run.fail(str(exc))
    return onnx_path, fp32_model, ref, fp32_logits


def _score_batch(o: ExportOptions) -> int:
    """The batch the artefacts are scored with: 64, or 1 for an ONNX file with a fixed batch of 1."""
    return 64 if o.batch == "dynamic" else 1


def _qat_step(run: _Export, ckpt: dict):
    """The quantization-aware distillation the INT8 step runs after post-training quantisation: on the run's
    training images (its dataset, or --data), against its teacher (or --teacher-ckpt)."""
    from .qat import qat_int8, teacher_path

    o = run.o
    teacher_path(ckpt, o.qat.teacher_ckpt)  # a missing teacher is refused before anything is written
    data = o.data or ckpt.get("data")
    if not data:
        raise UserError("--qat-epochs trains on the student's training images: pass --data")
    bundle = dataset_for_checkpoint(ckpt, data, o.data_dir, ckpt["model"].get("input_size") or 32)
    onnx_path, int8_path = run.out / ONNX_FILE, run.out / INT8_FILE

    def qat(result) -> dict:
        return qat_int8(ckpt, bundle, onnx_path, int8_path, result, o.qat, run.echo, o.int8_max_drop)

    return qat


def _int8_step(run: _Export, onnx_path: Path, fp32_model, tensors: TensorFile, fp32_logits: np.ndarray,
               ref: np.ndarray, qat=None) -> None:
    """INT8 (static, symmetric QDQ, per-channel): one model.int8.onnx for ONNX Runtime and TensorRT;
    `qat` (from `_qat_step`) fine-tunes it as quantised against the teacher."""
    from .int8_report import int8_section

    info = int8_section(onnx_path, fp32_model, run.out / INT8_FILE, tensors, fp32_logits, ref,
                        _score_batch(run.o), run.o, run.echo, qat)
    run.report["artifacts"]["ort_int8"] = info
    reason = nonfinite_reason(info["parity"], info["path"])
    if reason:
        run.fail(f"INT8 model: {reason}")


def _tensorrt_step(run: _Export, onnx_path: Path, tensors: TensorFile, ref: np.ndarray) -> str | None:
    """TensorRT engines (GPU hosts), strongly typed: each precision is its own ONNX file. Returns why
    TensorRT is unavailable here, or None once the engines are built."""
    from sddcompress_export.tensorrt_engine import tensorrt_unavailable

    from .tensorrt_stage import build_engines

    o = run.o
    reason = tensorrt_unavailable()
    if reason:
        run.report["artifacts"]["tensorrt"] = {"skipped": reason, "requested": o.trt}
        return reason

    def int8_source() -> Path:
        """The Q/DQ model of this export: the one --ort-int8 wrote, else made here with the same options."""
        if "ort_int8" in run.report["artifacts"]:
            return Path(run.report["artifacts"]["ort_int8"]["path"])
        return int8_model(onnx_path, run.out / INT8_FILE, tensors.calib_images, tensors.calib_labels,
                          o.calib_size, o.calib_method, o.int8_keep_float, o.int8_max_drop, run.echo).path

    engines = build_engines(onnx_path, int8_source, run.out, o.trt, o.batches, tensors, ref, run.echo)
    run.report["artifacts"]["tensorrt"] = engines
    for precision, engine in engines.items():
        reason = nonfinite_reason(engine["parity"], precision) if "parity" in engine else None
        if reason:
            run.fail(f"TensorRT {precision}: {reason}")
    return None
