"""Preprocessing facts stored inside an ONNX file, so a deployment needs nothing else."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DeployError
from .file_checks import existing_file
from .preprocessing import Preprocessing, legacy_preprocessing

_PREFIX = "sddcompress."
# The INT8 model's precision plan for the CPU that exported it (`precision_plan.PrecisionPlan`, JSON): which
# layers stay float and why, and which model to ship there. Outside `_PREFIX`, which `ModelMetadata` owns.
INT8_PLAN_KEY = "sddcompress_int8_plan"


@dataclass
class ModelMetadata:
    """What a deployment needs to feed the model: class names, input size, preprocessing, provenance.

    `preprocessing` is the whole validation transform (`Preprocessing.to_dict()`); files written before it
    existed only have input_size/mean/std, and `preprocessing_spec()` reads those the way they were meant.
    """

    class_names: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    source_checkpoint_sha256: str = ""
    source_checkpoint: str = ""
    model_name: str = ""
    sddcompress_version: str = ""
    input_name: str = "input"
    output_name: str = "logits"
    extra: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)

    def preprocessing_spec(self) -> Preprocessing:
        """The validation preprocessing this model expects (from a file of any age)."""
        if self.preprocessing:
            return Preprocessing.from_dict(self.preprocessing)
        return legacy_preprocessing(self.input_size, self.mean, self.std)

    def to_props(self) -> dict[str, str]:
        """Flat string key/values for ONNX `metadata_props`."""
        return {_PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ModelMetadata":
        try:
            values = {k[len(_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(_PREFIX)}
        except ValueError:
            raise DeployError(f"{where} has damaged sddcompress metadata (not JSON); export it again with "
                              "`sddcompress export`") from None
        missing = [k for k in ("class_names", "input_size", "mean", "std") if k not in values]
        if missing:
            raise DeployError(f"{where} has no sddcompress metadata ({', '.join(missing)} missing); "
                              "export it with `sddcompress export`")
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def load_onnx(path: str | Path):
    """Load and check an ONNX file; a missing or non-ONNX file is a DeployError."""
    import onnx

    path = existing_file(path, "ONNX file", "pass the .onnx file written by `sddcompress export`")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise DeployError(f"'{path}' is not an ONNX model ({type(exc).__name__}); pass the .onnx file "
                          "written by `sddcompress export`") from None
    if not model.graph.node:
        raise DeployError(f"'{path}' is not an ONNX model (no graph); pass the .onnx file written by "
                          "`sddcompress export`")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise DeployError(f"'{path}' fails the ONNX checker: {first}") from None
    return model


#: Operators only a quantised ONNX model holds.
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger")


def require_float_model(model, path: str | Path) -> None:
    """A DeployError if the ONNX model is already quantised (quantising it again fails deep inside the
    quantiser)."""
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if ops:
        raise DeployError(f"'{path}' is already INT8 (it holds {', '.join(ops[:2])} nodes); quantize the fp32 "
                          "model.onnx it was made from, or use this file as it is")


def write_metadata(model, meta: ModelMetadata) -> None:
    """Replace this package's metadata entries of an in-memory ONNX ModelProto."""
    kept = [p for p in model.metadata_props if not p.key.startswith(_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata of an ONNX file (without loading its weights into a session)."""
    model = load_onnx(path)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, f"'{path}'")


def read_int8_plan(path: str | Path) -> dict | None:
    """The precision plan recorded in an INT8 model (None for a model without one)."""
    model = load_onnx(path)
    value = next((p.value for p in model.metadata_props if p.key == INT8_PLAN_KEY), None)
    if value is None:
        return None
    try:
        plan = json.loads(value)
    except ValueError:
        raise DeployError(f"'{path}' has a damaged INT8 plan in its metadata (not JSON); quantise it again "
                          "with `sddcompress-deploy quantize`") from None
    return plan if isinstance(plan, dict) else None


def onnx_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
