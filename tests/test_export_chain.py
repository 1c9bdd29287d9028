"""One export chain: `sddcompress export`, `sddcompress-deploy` and the benchmark's candidate builder build the
same artefacts from the same inputs, with defaults declared once in `sddcompress_export.defaults`.

What is exact: every artefact is compared byte for byte (the tensor file's calibration images and labels as
arrays). ONNX export, ONNX Runtime's quantiser (each method's ranges, then the choice scored on held-out
images in one process) and the fp16 converter are deterministic for the same input, so any difference means
one command fed a stage other inputs or options than another.
"""

from __future__ import annotations

import ast
import inspect
import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from sddcompress_export.defaults import DEFAULTS, ChainDefaults

ROOT = Path(__file__).resolve().parent.parent

# Where each command declares a default of the chain: (file, the option / field / parameter, DEFAULTS' field).
DECLARATIONS = [
    ("sddcompress/cli/deploy_commands.py", "--opset", "opset"),
    ("sddcompress/cli/deploy_commands.py", "--atol", "atol"),
    ("sddcompress/cli/deploy_commands.py", "--min-agreement", "min_agreement"),
    ("sddcompress/cli/deploy_commands.py", "--calib-size", "calib_size"),
    ("sddcompress/cli/deploy_commands.py", "--int8-calibration", "calib_method"),
    ("sddcompress/cli/deploy_commands.py", "--int8-keep-float", "keep_float"),
    ("sddcompress/cli/deploy_commands.py", "--int8-max-drop", "max_drop"),
    ("sddcompress/cli/deploy_commands.py", "--min-batch", "min_batch"),
    ("sddcompress/cli/deploy_commands.py", "--opt-batch", "opt_batch"),
    ("sddcompress/cli/deploy_commands.py", "--max-batch", "max_batch"),
    ("export/cli.py", "--calib-size", "calib_size"),
    ("export/cli.py", "--int8-calibration", "calib_method"),
    ("export/cli.py", "--int8-keep-float", "keep_float"),
    ("export/cli.py", "--int8-max-drop", "max_drop"),
    ("export/cli.py", "--precision", "precision"),
    ("export/cli.py", "--min-batch", "min_batch"),
    ("export/cli.py", "--opt-batch", "opt_batch"),
    ("export/cli.py", "--max-batch", "max_batch"),
    ("sddcompress/exporting/pipeline.py", "opset", "opset"),
    ("sddcompress/exporting/pipeline.py", "atol", "atol"),
    ("sddcompress/exporting/pipeline.py", "min_agreement", "min_agreement"),
    ("sddcompress/exporting/pipeline.py", "calib_size", "calib_size"),
    ("sddcompress/exporting/pipeline.py", "calib_method", "calib_method"),
    ("sddcompress/exporting/pipeline.py", "int8_keep_float", "keep_float"),
    ("sddcompress/exporting/pipeline.py", "int8_max_drop", "max_drop"),
    ("sddcompress/exporting/pipeline.py", "min_batch", "min_batch"),
    ("sddcompress/exporting/pipeline.py", "opt_batch", "opt_batch"),
    ("sddcompress/exporting/pipeline.py", "max_batch", "max_batch"),
    ("sddcompress/exporting/onnx_writer.py", "opset", "opset"),
    ("sddcompress/benchmarking/latency.py", "calib_size", "calib_size"),
    ("sddcompress/benchmarking/candidates.py", "size", "calib_size"),
    ("export/chain.py", "calib_size", "calib_size"),
    ("export/chain.py", "method", "calib_method"),
    ("export/chain.py", "keep_float", "keep_float"),
    ("export/chain.py", "max_drop", "max_drop"),
    ("export/ort_quantization.py", "method", "calib_method"),
    ("export/ort_quantization.py", "keep_float", "keep_float"),
    ("export/ort_quantization.py", "max_drop", "max_drop"),
    ("export/tensorrt_engine.py", "precision", "precision"),
    ("export/tensorrt_engine.py", "min_batch", "min_batch"),
    ("export/tensorrt_engine.py", "opt_batch", "opt_batch"),
    ("export/tensorrt_engine.py", "max_batch", "max_batch"),
]


def _defaults_in(path: Path) -> dict[str, list[str]]:
    """Every default a file declares, as source text, by name: click/argparse options by their first flag,
    dataclass fields and function parameters by their name."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).startswith("--"):
            for kw in node.keywords:
                if kw.arg == "default":
                    found.setdefault(node.args[0].value, []).append(ast.unparse(kw.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found.setdefault(node.target.id, []).append(ast.unparse(node.value))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            for arg, default in zip(args[len(args) - len(node.args.defaults):], node.args.defaults):
                found.setdefault(arg.arg, []).append(ast.unparse(default))
            for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults):
                if default is not None:
                    found.setdefault(arg.arg, []).append(ast.unparse(default))
    return found


def test_every_chain_default_is_read_from_one_declaration():
    for file, name, field in DECLARATIONS:
        declared = _defaults_in(ROOT / file).get(name)
        assert declared, f"{file} declares no default for {name}"
        assert set(declared) == {f"DEFAULTS.{field}"}, (file, name, declared)
    assert {field for _, _, field in DECLARATIONS} == {f.name for f in fields(ChainDefaults)}


def test_the_commands_see_the_same_default_values():
    from sddcompress.benchmarking.latency import BenchmarkOptions
    from sddcompress.cli.deploy_commands import export_cmd
    from sddcompress.exporting.pipeline import ExportOptions
    from sddcompress_export.chain import int8_model, tensorrt_engine
    from sddcompress_export.cli import parser
    from sddcompress_export.tensorrt_engine import EngineSpec

    click_defaults = {p.name: p.default for p in export_cmd.params}
    options = ExportOptions()
    for click_name, field in [("calib_size", "calib_size"), ("calib_method", "calib_method"),
                              ("int8_keep_float", "keep_float"), ("int8_max_drop", "max_drop"), ("atol", "atol"),
                              ("min_agreement", "min_agreement"), ("opset", "opset"), ("min_batch", "min_batch"),
                              ("opt_batch", "opt_batch"), ("max_batch", "max_batch")]:
        assert click_defaults[click_name] == getattr(options, click_name) == getattr(DEFAULTS, field), click_name
    commands = parser()._subparsers._group_actions[0].choices
    quantize, build_trt = commands["quantize"], commands["build-trt"]
    assert (quantize.get_default("calib_size"), quantize.get_default("int8_calibration"),
            quantize.get_default("int8_keep_float"), quantize.get_default("int8_max_drop")) == \
        (DEFAULTS.calib_size, DEFAULTS.calib_method, DEFAULTS.keep_float, DEFAULTS.max_drop)
    assert (build_trt.get_default("precision"), build_trt.get_default("min_batch"), build_trt.get_default("opt_batch"),
            build_trt.get_default("max_batch")) == (DEFAULTS.precision, DEFAULTS.min_batch, DEFAULTS.opt_batch,
                                                    DEFAULTS.max_batch)
    assert BenchmarkOptions().calib_size == DEFAULTS.calib_size
    assert EngineSpec() == EngineSpec(DEFAULTS.precision, DEFAULTS.min_batch, DEFAULTS.opt_batch, DEFAULTS.max_batch)
    assert inspect.signature(int8_model).parameters["calib_size"].default == DEFAULTS.calib_size
    assert inspect.signature(tensorrt_engine).parameters["batches"].default == \
        (DEFAULTS.min_batch, DEFAULTS.opt_batch, DEFAULTS.max_batch)


class _Builds:
    """STAND-IN for TensorRT's builder and runtime only (they need an NVIDIA GPU): `build_engine` records
    what it was asked to build and stores the source ONNX as the "engine"; the runner runs that ONNX in
    ONNX Runtime. Everything before the build (the fp16 conversion, the Q/DQ checks) is the real code."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def build_engine(self, onnx_path, engine_path, spec, meta, timing_cache=None) -> Path:
        self.calls.append({"engine": Path(engine_path), "source": Path(onnx_path), "spec": spec,
                           "meta": meta, "timing_cache": Path(timing_cache)})
        shutil.copyfile(onnx_path, engine_path)
        Path(str(engine_path) + ".json").write_text(json.dumps(
            {**meta.__dict__, "extra": {"precision": spec.precision,
                                        "profile": [spec.min_batch, spec.opt_batch, spec.max_batch]}}))
        return Path(engine_path)

    def by_folder(self, folder: Path) -> dict[str, dict]:
        return {c["spec"].precision: c for c in self.calls if c["engine"].parent == folder}


def _ort_runner(engine_path):
    from sddcompress_export.onnxruntime_runner import OrtClassifier

    runner = OrtClassifier(engine_path)
    runner.close = lambda: None
    return runner


@pytest.fixture
def quantiser_inputs(monkeypatch) -> list[dict]:
    """What each call of the quantiser was given (it then runs as it is)."""
    import sddcompress_export.ort_quantization as oq

    calls, real = [], oq.quantize_int8

    def recording(fp32_path, out_path, calib_images, calib_labels=None, **options):
        calls.append({"out": Path(out_path), "images": calib_images, "labels": calib_labels, **options})
        return real(fp32_path, out_path, calib_images, calib_labels, **options)

    monkeypatch.setattr(oq, "quantize_int8", recording)
    return calls


class _EvenSpeed:
    """The precision plan's timings as a stand-in: every INT8 candidate equally fast, so the plan (and the
    INT8 file) depends on the inputs only, as it must for the files to be compared byte for byte."""

    def layer_costs(self, fp32_path, int8_path, images, names):
        return {}, {}

    def times_ms(self, paths, images):
        return {name: [1.0 if name == "fp32" else 0.5] for name in paths}


@pytest.fixture
def even_speed(monkeypatch) -> None:
    import sddcompress_export.precision_plan as plan

    monkeypatch.setattr(plan, "MeasuredSpeed", _EvenSpeed)


@pytest.fixture
def stand_in_tensorrt(monkeypatch) -> _Builds:
    import sddcompress_export.tensorrt_engine as te

    builds = _Builds()
    monkeypatch.setattr(te, "tensorrt_unavailable", lambda: None)
    monkeypatch.setattr(te, "require_tensorrt", lambda: None)
    monkeypatch.setattr(te, "build_engine", builds.build_engine)
    monkeypatch.setattr(te, "TrtClassifier", _ort_runner)
    return builds


def test_export_deploy_and_benchmark_build_the_same_artefacts(teacher_ckpt, tmp_path, cli, deploy, quantiser_inputs,
                                                              stand_in_tensorrt, even_speed):
    pytest.importorskip("onnxconverter_common", reason="the fp16 converter is in the dev extra")
    from sddcompress.benchmarking.candidates import ModelSource
    from sddcompress.benchmarking.latency import BenchmarkOptions, _validation_tensors
    from sddcompress_export.tensor_file import load_tensor_file

    # a private copy of the run, so nothing another test exported next to the checkpoint is picked up
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(teacher_ckpt, ckpt)
    by_export, by_deploy, by_benchmark = tmp_path / "export", tmp_path / "deploy", tmp_path / "benchmark"
    by_deploy.mkdir()

    # 1. sddcompress export, every stage, default options
    code, _, err = cli("export", "--ckpt", str(ckpt), "--out", str(by_export), "--val-size", "50", "--ort-int8",
                       "--trt", "fp32", "--trt", "fp16", "--trt", "int8")
    assert code == 0, err

    # 2. sddcompress-deploy on that ONNX file and tensor file, default options
    onnx_path, tensor_file = by_export / "model.onnx", by_export / "data.npz"
    code, _, err = deploy("quantize", str(onnx_path), "--data", str(tensor_file),
                          "--out", str(by_deploy / "model.int8.onnx"))
    assert code == 0, err
    for precision in ("fp32", "fp16", "int8"):
        model = by_deploy / "model.int8.onnx" if precision == "int8" else onnx_path
        code, _, err = deploy("build-trt", str(model), "--precision", precision,
                              "--out", str(by_deploy / f"model.{precision}.engine"))
        assert code == 0, err

    # 3. the benchmark's candidate builder from the checkpoint, calibrating as the benchmark does
    source = ModelSource("student", str(ckpt), [], by_benchmark, lambda s: None)
    assert source.artifacts == {}
    _, inputs, _ = _validation_tensors(BenchmarkOptions(student=str(ckpt), data="digits", val_size=50),
                                       [source], source.input_size)
    calibration = inputs["student"][1]
    for precision in ("fp32", "fp16", "int8"):
        source.ensure_engine(precision, calibration, max_batch=DEFAULTS.max_batch)
    built = by_benchmark / "student"

    # the same calibration images and labels, and the same options, reach the quantiser
    tensors = load_tensor_file(tensor_file)
    assert len(tensors.calib_images) == DEFAULTS.calib_size
    assert [c["out"].parent for c in quantiser_inputs] == [by_export, by_deploy, built]
    for call in quantiser_inputs:
        np.testing.assert_array_equal(call["images"], tensors.calib_images)
        np.testing.assert_array_equal(call["labels"], tensors.calib_labels)
        assert (call["method"], call["keep_float"], call["max_drop"]) == \
            (DEFAULTS.calib_method, DEFAULTS.keep_float, DEFAULTS.max_drop)
    # the same files, byte for byte
    assert (built / "model.onnx").read_bytes() == onnx_path.read_bytes()
    int8 = (by_export / "model.int8.onnx").read_bytes()
    assert (by_deploy / "model.int8.onnx").read_bytes() == int8 and (built / "model.int8.onnx").read_bytes() == int8
    fp16 = (by_export / "model.fp16.onnx").read_bytes()
    assert (by_deploy / "model.fp16.onnx").read_bytes() == fp16 and (built / "model.fp16.onnx").read_bytes() == fp16
    # the same engine builds: each precision from the same bytes, with the same profile and metadata
    folders = {"export": by_export, "deploy": by_deploy, "benchmark": built}
    builds = {name: stand_in_tensorrt.by_folder(folder) for name, folder in folders.items()}
    for precision in ("fp32", "fp16", "int8"):
        calls = {name: b[precision] for name, b in builds.items()}
        assert {c["source"].read_bytes() for c in calls.values()} == \
            {(onnx_path if precision == "fp32" else by_export / f"model.{precision}.onnx").read_bytes()}
        assert {(c["spec"].min_batch, c["spec"].opt_batch, c["spec"].max_batch) for c in calls.values()} == \
            {(DEFAULTS.min_batch, DEFAULTS.opt_batch, DEFAULTS.max_batch)}
        assert len({json.dumps(c["meta"].__dict__, sort_keys=True) for c in calls.values()}) == 1
        assert all(c["timing_cache"] == c["engine"].parent / "timing.cache" for c in calls.values())
    report = json.loads((by_export / "export_report.json").read_text())
    assert set(report["artifacts"]["tensorrt"]) == {"fp32", "fp16", "int8"} and report["status"] == "ok"
