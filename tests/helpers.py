"""Helpers the test modules share: quiet runs, weight comparisons, the tiny SDD config, one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from conftest import TINY
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig

QUIET = dict(echo=lambda s: None)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]["state_dict"]


def assert_same_weights(a, b, atol=0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            diff = (wa[k].double() - wb[k].double()).abs().max().item()
            assert diff <= atol * (1 + wa[k].double().abs().max().item()), f"{k}: max abs difference {diff:.3g}"


def sdd_config(out, teacher_ckpt, **over) -> TrainConfig:
    values = {**TINY, "model": "resnet20", "teacher": "resnet20", "teacher_ckpt": teacher_ckpt,
              "method": "sdd-dkd", "warmup_epochs": 1.0, "out": str(out), **over}
    return TrainConfig(**values)


def assert_one_line_error(result, *fragments: str) -> None:
    code, _, err = result
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def random_initializers(scale: float, seed: int = 0):
    """`weight(name, *shape)`: a float32 ONNX initializer of normal draws times `scale` (one generator per call)."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    return weight


def save_constructed_classifier(path, nodes, initializers, channels: int, name: str) -> None:
    """A hand-built fp32 classifier graph, input (batch, channels, 8, 8) named `input`, output (batch, 4) named
    `logits`, opset 18, with the metadata export writes (classes a-d), checked and saved to `path`."""
    import onnx
    from onnx import TensorProto, helper

    from sddcompress_export.metadata import ModelMetadata, write_metadata

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["batch", channels, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    write_metadata(model, ModelMetadata(class_names=list("abcd"), input_size=8, mean=[0.0] * channels,
                                        std=[1.0] * channels, model_name=name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
