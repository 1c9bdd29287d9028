"""Bias correction of weight rounding before INT8 (export/bias_correction.py), on a constructed depthwise conv
whose weights all round the same way in each channel, so the INT8 output is shifted per channel."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sddcompress_export import ort_quantization
from sddcompress_export.bias_correction import corrected_model, measure_bias_shifts
from sddcompress_export.ort_quantization import _Quantizer

CHANNELS = 4


def _graph():
    """x (N, 4, 6, 6) -> depthwise 3x3 conv D (no padding) -> Relu -> 1x1 conv E. In each of D's channels one
    weight of 1.27 sets the grid (steps of 0.01) and the other eight sit at 0.3 steps plus a fraction that
    rounds the same way, so their rounding errors add up instead of cancelling."""
    fractions = np.array([0.45, -0.45, 0.4, -0.35], np.float32)  # in steps, per channel
    w = np.full((CHANNELS, 1, 3, 3), 0.3, np.float32) + (fractions * 0.01)[:, None, None, None]
    w[:, 0, 1, 1] = 1.27
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "wd", "bd"], ["d"], name="D", group=CHANNELS, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "we", "be"], ["y"], name="E")]
    inits = [numpy_helper.from_array(w, "wd"), numpy_helper.from_array(np.full(CHANNELS, 0.1, np.float32), "bd"),
             numpy_helper.from_array(rng.uniform(-1, 1, (CHANNELS, CHANNELS, 1, 1)).astype(np.float32), "we"),
             numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "be")]
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, CHANNELS, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, CHANNELS, 6, 6)).astype(np.float32)


def _as_written(model, x: np.ndarray, output: str) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if output not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_empty_tensor_value_info(output))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        [output], {"x": x})[0]


def _initializer(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _quantised(model, tmp_path, name: str) -> tuple[_Quantizer, str]:
    path, workdir = tmp_path / f"{name}.onnx", tmp_path / name
    workdir.mkdir()
    onnx.save(model, path)
    return _Quantizer(str(path), _images(64, 1), str(workdir), 32), str(path)


def test_the_measured_shift_is_the_weight_rounding_times_the_quantised_input(tmp_path):
    """D's shift equals sum over taps of (W_q - W) times the mean quantised input under that tap, computed here in
    numpy from the INT8 model's own weights and input grid."""
    model = _graph()
    quantizer, _ = _quantised(model, tmp_path, "plain")
    int8 = onnx.load(quantizer._quantize_file(quantizer.prepared, "minmax", (), None))
    calib = quantizer.fit_images
    shifts = measure_bias_shifts(model, int8, calib)
    assert sorted(shifts) == ["D", "E"]
    w = _initializer(model, "wd")
    w_q = _initializer(int8, "wd_quantized").astype(np.float32) * _initializer(int8, "wd_scale")[:, None, None, None]
    scale = float(_initializer(int8, "x_scale"))
    x_q = np.clip(np.round(calib / scale), -127, 127) * scale  # the input's Q/DQ (symmetric int8)
    window_means = np.stack([[x_q[:, :, i:i + 4, j:j + 4].mean(axis=(0, 2, 3)) for j in range(3)] for i in range(3)],
                            axis=-1)  # (3 rows, C, 3 cols) -> per channel and tap below
    expected = ((w_q - w)[:, 0] * window_means.transpose(1, 0, 2)).sum(axis=(1, 2))
    np.testing.assert_allclose(shifts["D"], expected, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(expected) > 0.005)  # the rounding errors did not cancel


def test_the_corrected_int8_model_loses_the_shift(tmp_path):
    """As written on fresh images, D's per-channel mean error against the float model falls by 10x or more."""
    model = _graph()
    fresh = _images(256, 2)
    reference = _as_written(model, fresh, "d")
    quantizer, _ = _quantised(model, tmp_path, "q")
    plain = onnx.load(quantizer._quantize_file(quantizer.prepared, "minmax", (), None))
    corrected = onnx.load(quantizer.quantize("minmax"))
    before = np.abs((_as_written(plain, fresh, "d") - reference).mean(axis=(0, 2, 3)))
    after = np.abs((_as_written(corrected, fresh, "d") - reference).mean(axis=(0, 2, 3)))
    assert before.min() > 0.005 and after.max() < before.min() / 10, (before, after)
    assert quantizer.bias_correction("minmax")["layers"] == 2


def test_layers_kept_float_and_shared_biases_keep_their_bias():
    model = _graph()
    shifts = {"D": np.full(CHANNELS, 0.5, np.float32), "E": np.full(CHANNELS, 0.25, np.float32)}
    only_d = corrected_model(model, shifts, {"D"})
    np.testing.assert_array_equal(_initializer(only_d, "bd"), _initializer(model, "bd") - 0.5)
    np.testing.assert_array_equal(_initializer(only_d, "be"), _initializer(model, "be"))
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    shared.graph.node[2].input[2] = "bd"  # E reads D's bias as well
    both = corrected_model(shared, shifts)
    np.testing.assert_array_equal(_initializer(both, "bd"), _initializer(model, "bd"))


def test_a_failed_measurement_leaves_the_biases_and_is_reported(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this node\nsecond line")

    monkeypatch.setattr(ort_quantization, "measure_bias_shifts", broken)
    model = _graph()
    onnx.save(model, tmp_path / "model.onnx")
    said: list[str] = []
    result = ort_quantization.quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", _images(64, 1),
                                            method="minmax", keep_float="none", echo=said.append)
    assert result.bias_correction["layers"] == 0 and result.bias_correction["error"] == "no kernel for this node"
    assert result.to_report()["bias_correction"]["error"] == "no kernel for this node"
    assert any("not applied: no kernel for this node" in line for line in said)
    assert (tmp_path / "model.int8.onnx").is_file()


def test_the_int8_stage_reports_the_correction(tmp_path):
    model = _graph()
    onnx.save(model, tmp_path / "model.onnx")
    said: list[str] = []
    result = ort_quantization.quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", _images(64, 1),
                                            method="minmax", keep_float="none", echo=said.append)
    report = result.to_report()["bias_correction"]
    assert report["layers"] == 2 and report["max_abs_shift"] > 0.005 and "error" not in report
    assert any(line.startswith("INT8 bias correction (minmax): 2 layers") for line in said)
