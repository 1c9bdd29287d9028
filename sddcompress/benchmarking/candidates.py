"""Find or make the artefacts for each (model, backend) and decide what is measured or skipped, and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sddcompress_export.artifacts import artifact_kind, artifact_metadata
from sddcompress_export.chain import INT8_FILE, ONNX_FILE, engine_file, int8_model, tensorrt_engine
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.metadata import ModelMetadata
from sddcompress_export.preprocessing import Preprocessing

from ..errors import UserError
from ..run_paths import export_dir_for
from .backends import BACKENDS, ArtifactRunner, Candidate, TorchRunner


@dataclass
class Calibration:
    """The training images (and their labels) INT8 is calibrated on; the chain uses the first `size`."""

    images: np.ndarray
    labels: np.ndarray | None = None
    size: int = DEFAULTS.calib_size


def is_int8_onnx(path: str | Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in model.graph.node)


def backend_of_artifact(path: str | Path) -> str:
    if artifact_kind(path) == "onnx":
        return "ort-int8" if is_int8_onnx(path) else "ort-fp32"
    precision = artifact_metadata(path).extra.get("precision", "fp32")
    return f"trt-{precision}"


def exported_next_to(ckpt: str, sha256: str) -> dict[str, str]:
    """Artefacts `sddcompress export` wrote for this very checkpoint (metadata hash must match)."""
    found: dict[str, str] = {}
    folder = export_dir_for(ckpt)
    for path in sorted(folder.glob("model*.onnx")) + sorted(folder.glob("model*.engine")):
        try:
            meta = artifact_metadata(path)
        except Exception:
            continue
        if meta.source_checkpoint_sha256 == sha256:
            found.setdefault(backend_of_artifact(path), str(path))
    return found


class ModelSource:
    """One role (teacher or student): its checkpoint and/or artefacts, and how to make missing ones."""

    def __init__(self, role: str, ckpt: str | None, artifacts: list[str], work_dir: Path,
                 say: Callable[[str], None]) -> None:
        self.role, self.ckpt, self.work_dir, self.say = role, ckpt, work_dir / role, say
        self.net = None
        self.ckpt_meta: ModelMetadata | None = None  # what an export of the checkpoint carries
        self.artifact_meta: ModelMetadata | None = None  # the first artefact's, when there is no checkpoint
        self.record: dict = {}
        self.artifacts: dict[str, str] = {}
        if ckpt:
            from ..engine.checkpoint_eval import model_from_checkpoint
            from ..exporting.onnx_writer import checkpoint_metadata

            self.net, full = model_from_checkpoint(ckpt)
            self.ckpt_meta = checkpoint_metadata(ckpt, full)
            self.record = {"checkpoint": ckpt, "name": full["model"]["name"],
                           "sha256": self.ckpt_meta.source_checkpoint_sha256,
                           "params": sum(p.numel() for p in self.net.parameters()), "data": full.get("data"),
                           "input_size": full["model"].get("input_size"),
                           "normalization": full.get("normalization") or {}}
            self.artifacts.update(exported_next_to(ckpt, self.record["sha256"]))
        for path in artifacts:
            if not Path(path).is_file():
                raise UserError(f"{role} artefact '{path}' does not exist")
            self.artifacts[backend_of_artifact(path)] = str(path)
        if not ckpt and not self.artifacts:
            raise UserError(f"no {role}: pass --{role} CKPT and/or --{role}-artifact FILE")
        if self.artifacts:
            first = next(iter(self.artifacts.values()))
            meta = self.artifact_meta = artifact_metadata(first)
            self.record.setdefault("name", meta.model_name or Path(first).stem)
            self.record.setdefault("input_size", meta.input_size)

    @property
    def preprocessing(self) -> Preprocessing | None:
        """The model's own preprocessing record (checkpoint, else artefact metadata); None if it says none."""
        meta = self.ckpt_meta or self.artifact_meta
        return meta.preprocessing_spec() if meta is not None and (meta.preprocessing or meta.mean) else None

    @property
    def input_size(self) -> int:
        return int(self.record.get("input_size") or 32)

    def ensure_onnx(self) -> str:
        if "ort-fp32" not in self.artifacts:
            from ..exporting.onnx_writer import write_onnx

            self.work_dir.mkdir(parents=True, exist_ok=True)
            path = self.work_dir / ONNX_FILE
            write_onnx(self.net, path, self.ckpt_meta)
            self.say(f"exported the {self.role} to {path}")
            self.artifacts["ort-fp32"] = str(path)
        return self.artifacts["ort-fp32"]

    def ensure_int8(self, calib: Calibration) -> str:
        if "ort-int8" not in self.artifacts:
            path = self.work_dir / INT8_FILE
            result = int8_model(self.ensure_onnx(), path, calib.images, calib.labels, calib.size)
            self.say(f"quantised the {self.role} to {path} "
                     f"({result.calibration_images + result.held_out_images} calibration images)")
            self.artifacts["ort-int8"] = str(path)
        return self.artifacts["ort-int8"]

    def ensure_engine(self, precision: str, calib: Calibration, max_batch: int) -> str:
        """The engine for `precision`, built by the chain with a profile reaching `max_batch`."""
        key = f"trt-{precision}"
        if key not in self.artifacts:
            model = self.ensure_int8(calib) if precision == "int8" else self.ensure_onnx()
            batches = (DEFAULTS.min_batch, min(DEFAULTS.opt_batch, max_batch), max_batch)
            path, _ = tensorrt_engine(model, precision, self.work_dir / engine_file(precision), batches)
            self.artifacts[key] = str(path)
        return self.artifacts[key]


def candidates_for(source: ModelSource, backends: list[str], calib: Calibration, max_batch: int,
                   device: str, threads: int) -> list[Candidate]:
    """Every requested backend for one model: a runner factory, or the reason it is skipped."""
    from sddcompress_export.tensorrt_engine import tensorrt_unavailable

    out: list[Candidate] = []
    trt_reason = tensorrt_unavailable() if any(b.startswith("trt-") for b in backends) else None
    for backend in backends:
        if backend not in BACKENDS:
            raise UserError(f"unknown backend '{backend}'; use {', '.join(BACKENDS)}")
        c = Candidate(source.role, backend)
        if backend.startswith("torch-"):
            if source.net is None:
                c.skipped = "no checkpoint given (artefacts only), so no PyTorch model"
            else:
                compiled = backend == "torch-compiled"
                c.make = lambda compiled=compiled: TorchRunner(source.net, compiled=compiled, device=device)
        elif backend.startswith("ort-"):
            if source.net is None and backend not in source.artifacts:
                c.skipped = f"no {backend} artefact given and no checkpoint to export one from"
            else:
                def make_ort(backend=backend):
                    from sddcompress_export.onnxruntime_runner import OrtClassifier

                    path = source.ensure_onnx() if backend == "ort-fp32" else source.ensure_int8(calib)
                    # ORT on the benchmark's device: its CUDA EP on a GPU (TensorRT has its own rows)
                    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" \
                        else ["CPUExecutionProvider"]
                    return ArtifactRunner(OrtClassifier(path, threads=threads, providers=providers))
                c.make = make_ort
        else:
            precision = backend.split("-", 1)[1]
            if trt_reason:
                c.skipped = trt_reason
            elif source.net is None and backend not in source.artifacts and "ort-fp32" not in source.artifacts:
                c.skipped = f"no {backend} engine or ONNX file to build one from"
            else:
                def make_trt(precision=precision):
                    from sddcompress_export.tensorrt_engine import TrtClassifier

                    return ArtifactRunner(TrtClassifier(source.ensure_engine(precision, calib, max_batch)))
                c.make = make_trt
        out.append(c)
    return out

