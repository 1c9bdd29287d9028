"""The CPU plan of the symmetric INT8 artefact: ReLUs folded into uint8 outputs, checked with real ONNX Runtime."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from sddcompress_export.cpu_int8_plan import fold_relu_into_uint8
from sddcompress_export.onnxruntime_runner import DISABLED_OPTIMIZERS, OrtClassifier
from sddcompress_export.ort_quantization import weighted_nodes
from sddcompress_export.tensor_file import load_tensor_file


def _optimized_op_counts(model, tmp_path) -> Counter:
    """The op types of the graph ONNX Runtime's CPU provider really runs, after all its fusions."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=DISABLED_OPTIMIZERS)
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_folding_lets_onnx_runtime_fuse_every_quantised_conv(exported, tmp_path):
    info = exported["artifacts"]["ort_int8"]
    artefact = onnx.load(info["path"])
    quantised_convs = len([n for n in weighted_nodes(artefact) if n not in info["float_nodes"]
                           and n in {m.name for m in artefact.graph.node if m.op_type == "Conv"}])
    before = _optimized_op_counts(artefact, tmp_path)
    folded = onnx.load(info["path"])
    count = fold_relu_into_uint8(folded)
    onnx.checker.check_model(folded)
    after = _optimized_op_counts(folded, tmp_path)
    assert count > 0 and not any(n.op_type == "Relu" and _feeds_quantize(folded, n) for n in folded.graph.node)
    assert before["QLinearConv"] < quantised_convs  # the artefact as is: ReLUs in float block the fusion
    assert after["QLinearConv"] == quantised_convs and after["Relu"] == 0
    # every zero point is still 0; the file on disk is untouched (TensorRT's form)
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    used = [inits[n.input[2]] for n in folded.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert not any(z.any() for z in used)  # int8/uint8 activations and weights, int32 biases
    assert {z.dtype for z in used} == {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)}
    on_disk = open(info["path"], "rb").read()
    assert OrtClassifier(info["path"], providers=["CPUExecutionProvider"]).relus_folded == count
    assert open(info["path"], "rb").read() == on_disk


def _feeds_quantize(model, relu) -> bool:
    return any(n.op_type == "QuantizeLinear" and relu.output[0] in n.input for n in model.graph.node)


def test_folded_model_is_at_least_as_close_to_fp32(exported):
    """One rounding at the ReLU output's scale instead of two: no further from fp32 than the artefact as is."""
    info = exported["artifacts"]
    images = load_tensor_file(exported["tensor_file"]["path"]).val_images[:128]
    fp32 = OrtClassifier(info["onnx"]["path"], providers=["CPUExecutionProvider"])(images)
    plain = OrtClassifier(info["ort_int8"]["path"], providers=["CPUExecutionProvider"], fold_relu=False)
    folded = OrtClassifier(info["ort_int8"]["path"], providers=["CPUExecutionProvider"])
    assert plain.relus_folded == 0 and folded.relus_folded > 0
    plain_logits, folded_logits = plain(images), folded(images)
    assert np.abs(folded_logits - fp32).mean() <= 1.25 * np.abs(plain_logits - fp32).mean() + 1e-4
    agreement = {name: (logits.argmax(1) == fp32.argmax(1)).mean() for name, logits in
                 (("plain", plain_logits), ("folded", folded_logits))}
    assert agreement["folded"] >= agreement["plain"] - 0.05


def test_fp32_models_are_left_alone(exported):
    assert OrtClassifier(exported["artifacts"]["onnx"]["path"], providers=["CPUExecutionProvider"]).relus_folded == 0


def _relu_between_qdq(extra_relu_consumer: bool = False):
    """x -> Q -> DQ -> Relu -> Q -> DQ -> y, all int8 with zero point 0 and one scale (0.05)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])]
    if extra_relu_consumer:  # the ReLU's float output is also read elsewhere: it must stay
        nodes.append(helper.make_node("Neg", ["r"], ["n"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [4, 8]))
    graph = helper.make_graph(nodes, "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              outputs, [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                                        numpy_helper.from_array(np.array(0, np.int8), "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_relu_folds_exactly_inside_the_calibrated_range():
    x = np.random.default_rng(0).uniform(-6.0, 6.0, (4, 8)).astype(np.float32)  # |x| < 127 * 0.05
    model = _relu_between_qdq()
    expected = _run(model, x)
    assert fold_relu_into_uint8(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    np.testing.assert_array_equal(_run(model, x), expected)
    assert (expected >= 0).all() and (expected > 0).any()


def test_a_relu_read_by_a_float_node_is_left_alone():
    model = _relu_between_qdq(extra_relu_consumer=True)
    assert fold_relu_into_uint8(model) == 0
    assert [n.op_type for n in model.graph.node].count("Relu") == 1


def test_a_layer_kept_in_float_runs_in_float(exported, tmp_path):
    """ONNX Runtime would give a float conv between Q/DQ nodes per-tensor int8 weights; the runner stops it."""
    from sddcompress_export.ort_quantization import quantize_int8

    info = exported["artifacts"]
    convs = [n.name for n in onnx.load(info["onnx"]["path"]).graph.node if n.op_type == "Conv"]
    middle = convs[len(convs) // 2]
    data = load_tensor_file(exported["tensor_file"]["path"])
    result = quantize_int8(info["onnx"]["path"], tmp_path / "q.onnx", data.calib_images[:32], method="minmax",
                           keep_float=middle)
    folded = onnx.load(str(result.path))
    fold_relu_into_uint8(folded)
    ran = _optimized_op_counts(folded, tmp_path)
    assert ran["QLinearConv"] == len(convs) - 1 and ran["Conv"] == 1
