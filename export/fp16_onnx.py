"""An fp16 copy of an fp32 ONNX classifier with fp32 inputs and outputs (what strongly typed TensorRT builds as fp16).

ModelOpt AutoCast (NVIDIA's recommended converter for TensorRT 11) is used when it is installed;
otherwise onnxconverter-common's `float16` converter. Both keep the graph's inputs and outputs
in fp32, so the engine is fed and read exactly like the fp32 one. Metadata is carried over.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_write
from .errors import DeployError
from .metadata import load_onnx

CONVERTER_HINT = "pip install 'sddcompress[trt]' (onnxconverter-common) or nvidia-modelopt"


def fp16_converter() -> str | None:
    """'modelopt-autocast', 'onnxconverter-common', or None when neither is installed."""
    try:
        import modelopt.onnx.autocast  # noqa: F401

        return "modelopt-autocast"
    except Exception:
        pass
    try:
        from onnxconverter_common import float16  # noqa: F401

        return "onnxconverter-common"
    except ImportError:
        return None


def convert_to_fp16(fp32_path: str | Path, out_path: str | Path, converter: str | None = None) -> Path:
    """Write the fp16 model (fp32 I/O) of `fp32_path` to `out_path`; returns out_path."""
    import onnx

    source = load_onnx(fp32_path)
    converter = converter or fp16_converter()
    if converter is None:
        raise DeployError(f"an fp16 model needs an ONNX fp16 converter; fix: {CONVERTER_HINT}")
    try:
        if converter == "modelopt-autocast":
            from modelopt.onnx.autocast import convert_to_mixed_precision

            model = convert_to_mixed_precision(onnx_path=str(fp32_path), low_precision_type="fp16",
                                               keep_io_types=True)
        else:
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(source, keep_io_types=True)
    except Exception as exc:
        raise DeployError(f"{converter} could not convert '{fp32_path}' to fp16: "
                          f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}") \
            from None
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    return atomic_write(out_path, lambda temp: onnx.save(model, str(temp)))


def is_fp16_onnx(model) -> bool:
    """True when the graph computes in fp16 (it holds fp16 initializers)."""
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
