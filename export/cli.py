"""`sddcompress-deploy`: the torch-free deployment commands (argparse, so only numpy/onnx/onnxruntime needed).

  sddcompress-deploy eval MODEL.onnx|MODEL.engine --data data.npz
  sddcompress-deploy quantize MODEL.onnx --data data.npz --out MODEL.int8.onnx
  sddcompress-deploy build-trt MODEL.onnx --precision fp16 --out MODEL.fp16.engine
  sddcompress-deploy build-trt MODEL.int8.onnx --precision int8   (the Q/DQ model from `quantize`)
  sddcompress-deploy info MODEL.onnx
  sddcompress-deploy check
  sddcompress-deploy classify MODEL.onnx IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .closed_pipe import exit_on_closed_pipe
from .defaults import DEFAULTS
from .errors import DeployError, error_line
from .file_checks import describe_os_error, writable_file_path
from .ort_quantization import CALIBRATION_CHOICES
from .tensorrt_engine import PRECISIONS


def _eval(args) -> dict:
    from .artifacts import open_artifact
    from .classifier_metrics import score
    from .tensor_file import load_for_model

    model, meta = open_artifact(args.model, threads=args.threads)
    data = load_for_model(args.data, meta, need=("val",))
    metrics = score(model, data.val_images, data.val_labels, args.batch_size)
    if not math.isfinite(metrics["loss"]):
        raise DeployError(f"'{args.model}' produced non-finite logits on '{args.data}'; the artefact is broken: "
                          "export it again from a checkpoint with finite weights")
    return {"model": str(args.model), **metrics, **_pixels_note(data, meta)}


def _pixels_note(data, meta) -> dict:
    """What the output says when the tensor file held raw pixels the model's normalisation was applied to."""
    if not data.raw_pixels:
        return {}
    spec = meta.preprocessing_spec()
    return {"input": f"integer pixels, normalised on reading with the model's mean "
                     f"{[round(m, 4) for m in spec.mean]} and std {[round(s, 4) for s in spec.std]}"}


def _quantize(args) -> dict:
    from .chain import int8_model
    from .metadata import ModelMetadata, load_onnx, require_float_model
    from .tensor_file import load_for_model

    writable_file_path(args.out, "--out")
    source = load_onnx(args.model)
    require_float_model(source, args.model)
    meta = ModelMetadata.from_props({p.key: p.value for p in source.metadata_props}, f"'{args.model}'")
    data = load_for_model(args.data, meta, need=("calib",))
    result = int8_model(args.model, args.out, data.calib_images, data.calib_labels, args.calib_size,
                        args.int8_calibration, args.int8_keep_float, args.int8_max_drop)
    return {"int8_model": str(result.path), **result.to_report(), **_pixels_note(data, meta)}


def _build_trt(args) -> dict:
    from .chain import tensorrt_engine

    out = args.out if args.out is not None else str(Path(args.model).with_suffix(f".{args.precision}.engine"))
    writable_file_path(out, "--out")
    path, source = tensorrt_engine(args.model, args.precision, out, (args.min_batch, args.opt_batch, args.max_batch),
                                   args.timing_cache)
    return {"engine": str(path), "onnx": str(source)}


def _classify(args) -> dict:
    import numpy as np

    from .artifacts import open_artifact

    model, meta = open_artifact(args.model, threads=args.threads)
    prep = meta.preprocessing_spec()
    logits = model(np.stack([prep.load(path) for path in args.images]))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return {"model": str(args.model), "preprocessing": prep.to_dict(),
            "predictions": [{"image": path, "class": meta.class_names[int(p.argmax())],
                             "probability": float(p.max())} for path, p in zip(args.images, probs)]}


def _info(args) -> dict:
    """The metadata; for an ONNX model also the recommendation of the INT8 precision plan, from the INT8
    model itself or, for the fp32 model, from the `model.int8.onnx` beside it."""
    from .artifacts import artifact_kind, artifact_metadata
    from .chain import INT8_FILE
    from .metadata import read_int8_plan

    info = dict(artifact_metadata(args.model).__dict__)
    if artifact_kind(args.model) == "onnx":
        source = Path(args.model)
        plan = read_int8_plan(source)
        if plan is None and source.name != INT8_FILE and (source.parent / INT8_FILE).is_file():
            source = source.parent / INT8_FILE
            plan = read_int8_plan(source)
        if plan is not None:
            info["recommendation"] = plan.get("recommendation")
            info["int8_plan"] = {"from": str(source), **{k: plan.get(k) for k in (
                "ship", "chosen", "ratio", "batch", "float_nodes", "why", "machine")}}
    return info


def _check(args) -> dict:
    from .onnxruntime_runner import runtime_report

    return runtime_report()


def _count(minimum: int):
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`error: ...`) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="sddcompress-deploy", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="top-1/top-5 of an artefact on a tensor file's validation images")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="data.npz written by `sddcompress export`")
    e.add_argument("--batch-size", type=_count(1), default=64)
    e.add_argument("--threads", type=_count(1), default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    e.set_defaults(run=_eval)
    q = sub.add_parser("quantize", help="static INT8 (symmetric QDQ, per-channel) for ONNX Runtime and TensorRT")
    q.add_argument("model")
    q.add_argument("--data", required=True,
                   help="tensor file whose calib_images (training images) calibrate and score the INT8 choices")
    q.add_argument("--out", required=True)
    q.add_argument("--calib-size", type=_count(1), default=DEFAULTS.calib_size,
                   help="the first N calibration images of the tensor file: 3/4 of them, at most 256, calibrate, the "
                        "rest score each INT8 choice (default: %(default)s)")
    q.add_argument("--int8-calibration", "--method", default=DEFAULTS.calib_method, choices=list(CALIBRATION_CHOICES),
                   help="auto tries each method and keeps the best on held-out calibration images")
    q.add_argument("--int8-keep-float", default=DEFAULTS.keep_float,
                   help="auto (only if needed), none, ends (first conv + classifier) or comma-separated node names")
    q.add_argument("--int8-max-drop", type=float, default=DEFAULTS.max_drop,
                   help="top-1 points INT8 may lose on the held-out calibration images before layers stay float")
    q.set_defaults(run=_quantize)
    t = sub.add_parser("build-trt", help="build a strongly typed TensorRT engine (needs an NVIDIA GPU)")
    t.add_argument("model", help="fp32 ONNX for fp32/fp16 (fp16 is converted first); the Q/DQ ONNX for int8")
    t.add_argument("--precision", default=DEFAULTS.precision, choices=list(PRECISIONS))
    t.add_argument("--out", default=None)
    t.add_argument("--min-batch", type=_count(1), default=DEFAULTS.min_batch)
    t.add_argument("--opt-batch", type=_count(1), default=DEFAULTS.opt_batch)
    t.add_argument("--max-batch", type=_count(1), default=DEFAULTS.max_batch)
    t.add_argument("--timing-cache", default=None, help="reused across builds (default: next to the engine)")
    t.set_defaults(run=_build_trt)
    i = sub.add_parser("info", help="print an artefact's preprocessing metadata")
    i.add_argument("model")
    i.set_defaults(run=_info)
    c = sub.add_parser("check", help="ONNX Runtime's install and execution providers, TensorRT's availability")
    c.set_defaults(run=_check)
    k = sub.add_parser("classify", help="classify image files, preprocessed as the model's metadata says")
    k.add_argument("model")
    k.add_argument("images", nargs="+")
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(run=_classify)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (exit 2 for bad input, 1 for a system fault)."""
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
        print(json.dumps(result, indent=2), flush=True)
    except BrokenPipeError:
        exit_on_closed_pipe()
    except DeployError as exc:
        print(f"error: {error_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {error_line(describe_os_error(exc))}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print("error: out of memory; use a smaller --batch-size or --calib-size", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("SDDCOMPRESS_DEBUG"):
            raise
        first = error_line(str(exc), 200)
        print(f"error: internal error {type(exc).__name__}: {first} "
              "(a bug: re-run with SDDCOMPRESS_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        sys.exit(70)


if __name__ == "__main__":
    main()
