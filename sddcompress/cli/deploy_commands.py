"""`sddcompress export` and `sddcompress eval-artifact`."""

from __future__ import annotations

import json

import click
from sddcompress_export.closed_pipe import pipe_safe
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.ort_quantization import CALIBRATION_CHOICES
from sddcompress_export.tensorrt_engine import PRECISIONS

from ..exporting.qat_options import QatOptions


@click.command("export")
@click.option("--ckpt", default=None, type=click.Path(),
              help="Checkpoint from train/distill, or any state dict (.pt/.pth/.safetensors, CIFAR teacher zoo) with "
                   "--model. [default: the quickstart's SDD student]")
@click.option("--model", default=None, help="Architecture of a state dict from elsewhere (see `sddcompress models`).")
@click.option("--num-classes", type=int, default=None,
              help="Class count of a state dict from elsewhere. [default: read from its classifier]")
@click.option("--input-size", type=int, default=None,
              help="Input size of a state dict from elsewhere. [default: 32 for the CIFAR models]")
@click.option("--out", default=None, help="Output folder. [default: RUN_DIR/export next to the checkpoint's run]")
@click.option("--onnx", "onnx_only", is_flag=True, help="Write the ONNX file (always done; the flag is for clarity).")
@click.option("--trt", multiple=True, type=click.Choice(PRECISIONS),
              help="Also build a strongly typed TensorRT engine (repeatable; needs an NVIDIA GPU): fp32 from the "
                   "ONNX, fp16 from an fp16 copy of it, int8 from the Q/DQ model.")
@click.option("--ort-int8", is_flag=True,
              help="Also write model.int8.onnx: static INT8, symmetric QDQ, per-channel (ORT and TensorRT).")
@click.option("--opset", type=int, default=DEFAULTS.opset, show_default=True, help="ONNX opset (18..21).")
@click.option("--batch", default="dynamic", show_default=True, type=click.Choice(["1", "dynamic"]),
              help="Batch axis of the ONNX input.")
@click.option("--calib-size", type=int, default=DEFAULTS.calib_size, show_default=True,
              help="Training images for INT8 (the Q/DQ model ORT and TensorRT both run): the first 3/4, at most "
                   "256, calibrate; the rest score each INT8 choice. With --calib-file, the first N of the file's.")
@click.option("--int8-calibration", "--calib-method", "calib_method", default=DEFAULTS.calib_method,
              show_default=True, type=click.Choice(CALIBRATION_CHOICES),
              help="INT8 calibration method; auto tries each and keeps the best on held-out calibration images.")
@click.option("--int8-keep-float", default=DEFAULTS.keep_float, show_default=True,
              help="Layers left in float in model.int8.onnx: auto (only if needed to meet --int8-max-drop on "
                   "held-out calibration images), none, ends (first conv and classifier) or node names, comma-separated.")
@click.option("--int8-max-drop", type=float, default=DEFAULTS.max_drop, show_default=True,
              help="Largest top-1 drop (points, on held-out calibration images) INT8 may cost before layers stay float.")
@click.option("--calib-file", default=None, type=click.Path(),
              help="Use this tensor file (.npz from a previous export) instead of reading the dataset.")
@click.option("--val-size", type=int, default=None,
              help="Validation images stored in data.npz and used for parity and accuracy. "
                   "[default: 2000 up to 64 px, 500 above]")
@click.option("--data", default=None, help="Dataset for calibration/validation. [default: the checkpoint's]")
@click.option("--data-dir", default=None, help="Where the dataset's files are.")
@click.option("--atol", type=float, default=DEFAULTS.atol, show_default=True,
              help="Largest allowed |ONNX - PyTorch| logit difference; above it the export fails.")
@click.option("--min-agreement", type=float, default=DEFAULTS.min_agreement, show_default=True,
              help="Smallest allowed top-1 agreement (percent) between ONNX Runtime and PyTorch.")
@click.option("--min-batch", type=int, default=DEFAULTS.min_batch, show_default=True,
              help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=int, default=DEFAULTS.opt_batch, show_default=True,
              help="TensorRT profile: batch tuned for.")
@click.option("--max-batch", type=int, default=DEFAULTS.max_batch, show_default=True,
              help="TensorRT profile: largest batch.")
@click.option("--no-slim", is_flag=True, help="Skip onnxslim graph simplification.")
@click.option("--qat-epochs", type=float, default=QatOptions.epochs, show_default=True,
              help="Quantization-aware distillation: fine-tune the student as the INT8 model (its fake-quantised "
                   "twin) against its teacher with SDD-DKD for this many passes over the training images, then "
                   "write model.int8.onnx from it (needs --ort-int8; 0 = post-training quantisation only).")
@click.option("--qat-lr", type=float, default=QatOptions.lr, show_default=True,
              help="Learning rate of the quantization-aware fine-tuning (SGD, cosine to 0).")
@click.option("--qat-batch-size", type=int, default=QatOptions.batch_size, show_default=True,
              help="Batch of the quantization-aware fine-tuning.")
@click.option("--teacher-ckpt", default=None, type=click.Path(),
              help="Teacher for --qat-epochs. [default: the one the run was distilled from]")
def export_cmd(ckpt, model, num_classes, input_size, out, onnx_only, trt, ort_int8, opset, batch, calib_size,
               calib_method, int8_keep_float, int8_max_drop, calib_file, val_size, data, data_dir, atol, min_agreement,
               min_batch, opt_batch, max_batch, no_slim, qat_epochs, qat_lr, qat_batch_size, teacher_ckpt) -> None:
    """Export a checkpoint's plain model to ONNX (checked against PyTorch), and optionally to an ONNX Runtime
    INT8 model and TensorRT engines. Writes model.onnx, data.npz and export_report.json."""
    from ..exporting.pipeline import ExportOptions, run_export

    run_export(ExportOptions(ckpt=ckpt, model=model, num_classes=num_classes, input_size=input_size, out=out,
                             opset=opset, batch=batch, ort_int8=ort_int8, trt=list(trt),
                             calib_size=calib_size, val_size=val_size, calib_file=calib_file, data=data,
                             data_dir=data_dir, atol=atol, min_agreement=min_agreement, min_batch=min_batch,
                             opt_batch=opt_batch, max_batch=max_batch, slim=not no_slim,
                             calib_method=calib_method, int8_keep_float=int8_keep_float,
                             int8_max_drop=int8_max_drop,
                             qat=QatOptions(qat_epochs, qat_lr, qat_batch_size, teacher_ckpt)),
               echo=pipe_safe(click.echo))


@click.command("eval-artifact")
@click.option("--model", "artifact", required=True, type=click.Path(), help="An exported .onnx or .engine file.")
@click.option("--data", default=None,
              help="A dataset name (as for eval) or a data.npz tensor file. [default: data.npz next to the model]")
@click.option("--data-dir", default=None, help="Where the dataset's files are.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Evaluation batch size.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads. [default: all cores]")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_artifact_cmd(artifact, data, data_dir, batch_size, threads, as_json) -> None:
    """Top-1 / top-5 accuracy and loss of an exported artefact on a validation split."""
    from ..exporting.artifact_eval import evaluate_artifact

    metrics = evaluate_artifact(artifact, data, data_dir, batch_size, threads)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{artifact} on {metrics['data']} ({metrics['count']} images): top-1 {metrics['top1']:.2f}  "
                   f"top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}"
                   + (f"  ({metrics['input']})" if "input" in metrics else ""))


def register(cli: click.Group) -> None:
    cli.add_command(export_cmd)
    cli.add_command(eval_artifact_cmd)
