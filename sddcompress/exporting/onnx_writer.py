"""Write a plain classifier to ONNX with torch's exporter, then check, slim and annotate it."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from sddcompress_export.atomic import atomic_write
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.metadata import ModelMetadata, load_onnx, onnx_opset, write_metadata

from ..errors import UserError

# The default opset is DEFAULTS.opset; opsets above what torch.onnx emits natively come from onnxscript's
# version converter.
SUPPORTED_OPSETS = range(18, 22)


def checkpoint_metadata(path: str | Path, ckpt: dict) -> ModelMetadata:
    """What an ONNX export of this checkpoint carries: classes, input size, normalisation, provenance."""
    from .. import __version__
    from ..engine.checkpoint import file_sha256

    from ..data.preprocessing import from_checkpoint

    record, norm = ckpt["model"], ckpt.get("normalization") or {}
    prep = from_checkpoint(ckpt)
    return ModelMetadata(class_names=[str(c) for c in (ckpt.get("class_names") or range(record["num_classes"]))],
                         input_size=record.get("input_size") or 32, mean=list(norm.get("mean", prep.mean)),
                         std=list(norm.get("std", prep.std)), source_checkpoint_sha256=file_sha256(path),
                         source_checkpoint=str(path), model_name=record["name"], sddcompress_version=__version__,
                         preprocessing=prep.to_dict())


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise UserError(f"--opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
                        f"(default {DEFAULTS.opset})")


def write_onnx(model: nn.Module, path: str | Path, meta: ModelMetadata, opset: int = DEFAULTS.opset,
               dynamic_batch: bool = True, slim: bool = True) -> dict:
    """Export `model` (eval mode, CPU) for (B, 3, S, S) inputs; returns facts about the written file."""
    import onnx

    check_opset(opset)
    path = Path(path)
    model = model.eval().cpu()
    example = torch.randn(2 if dynamic_batch else 1, 3, meta.input_size, meta.input_size)
    # positional form: one entry per forward() argument, whatever the model names it
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        chatter = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(raw), input_names=[meta.input_name],
                                  output_names=[meta.output_name], opset_version=opset, dynamo=True,
                                  dynamic_shapes=dynamic_shapes, external_data=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"torch.onnx.export failed for {meta.model_name}: {first}") from None
        proto = onnx.load(str(raw))
    slimmed = False
    if slim:
        try:
            import onnxslim

            with contextlib.redirect_stdout(io.StringIO()):
                proto = onnxslim.slim(proto)
            slimmed = True
        except ImportError:
            pass
    write_metadata(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda temp: onnx.save(proto, str(temp)))
    checked = load_onnx(path)
    return {"path": str(path), "opset": onnx_opset(checked), "dynamic_batch": dynamic_batch, "slimmed": slimmed,
            "bytes": path.stat().st_size, "nodes": len(checked.graph.node)}
