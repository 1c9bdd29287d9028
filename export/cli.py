"""`sddcompress-deploy`: the torch-free deployment commands (argparse, so only numpy/onnx/onnxruntime needed).

  sddcompress-deploy eval MODEL.onnx|MODEL.engine --data data.npz
  sddcompress-deploy quantize MODEL.onnx --data data.npz --out MODEL.int8.onnx
  sddcompress-deploy build-trt MODEL.onnx --precision fp16 [--data data.npz] --out MODEL.fp16.engine
  sddcompress-deploy info MODEL.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DeployError


def _eval(args) -> dict:
    from .artifacts import open_artifact
    from .classifier_metrics import score
    from .tensor_file import load_tensor_file

    model, meta = open_artifact(args.model, threads=args.threads)
    data = load_tensor_file(args.data, meta.input_size)
    return {"model": str(args.model), **score(model, data.val_images, data.val_labels, args.batch_size)}


def _quantize(args) -> dict:
    from .ort_quantization import quantize_int8
    from .tensor_file import load_tensor_file

    data = load_tensor_file(args.data)
    out = quantize_int8(args.model, args.out, data.calib_images[: args.calib_size], method=args.method)
    return {"int8_model": str(out)}


def _build_trt(args) -> dict:
    from .metadata import read_metadata
    from .tensor_file import load_tensor_file
    from .tensorrt_engine import EngineSpec, build_engine

    spec = EngineSpec(args.precision, args.min_batch, args.opt_batch, args.max_batch)
    spec.validate()
    calib = load_tensor_file(args.data).calib_images if args.data else None
    meta = read_metadata(args.model)
    out = args.out or str(Path(args.model).with_suffix(f".{args.precision}.engine"))
    timing = args.timing_cache or str(Path(out).parent / "timing.cache")
    path = build_engine(args.model, out, spec, meta, calib, timing_cache=timing,
                        calib_cache=str(Path(out).with_suffix(".calib")))
    return {"engine": str(path)}


def _info(args) -> dict:
    from .artifacts import artifact_metadata

    return artifact_metadata(args.model).__dict__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sddcompress-deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="top-1/top-5 of an artefact on a tensor file's validation images")
    e.add_argument("model")
    e.add_argument("--data", required=True, help="data.npz written by `sddcompress export`")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    e.set_defaults(run=_eval)
    q = sub.add_parser("quantize", help="static INT8 (QDQ, per-channel) with ONNX Runtime")
    q.add_argument("model")
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--calib-size", type=int, default=512)
    q.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    q.set_defaults(run=_quantize)
    t = sub.add_parser("build-trt", help="build a TensorRT engine (needs an NVIDIA GPU)")
    t.add_argument("model")
    t.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
    t.add_argument("--data", default=None, help="tensor file with calib_images (required for int8)")
    t.add_argument("--out", default=None)
    t.add_argument("--min-batch", type=int, default=1)
    t.add_argument("--opt-batch", type=int, default=8)
    t.add_argument("--max-batch", type=int, default=32)
    t.add_argument("--timing-cache", default=None, help="reused across builds (default: next to the engine)")
    t.set_defaults(run=_build_trt)
    i = sub.add_parser("info", help="print an artefact's preprocessing metadata")
    i.add_argument("model")
    i.set_defaults(run=_info)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
