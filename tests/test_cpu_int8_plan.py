"""The CPU plan of the symmetric INT8 artefact: ReLUs folded into uint8 outputs, checked with real ONNX Runtime."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from sddcompress_export.cpu_int8_plan import cpu_plan, fold_relu_into_uint8, seven_bit_weights_for_signed_inputs
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
    assert OrtClassifier(info["path"], providers=["CPUExecutionProvider"]).cpu_plan["relus_folded"] == count
    assert open(info["path"], "rb").read() == on_disk


def _feeds_quantize(model, relu) -> bool:
    return any(n.op_type == "QuantizeLinear" and relu.output[0] in n.input for n in model.graph.node)


def test_cpu_plan_is_at_least_as_close_to_fp32(exported):
    """One rounding at the ReLU output's scale instead of two: no further from fp32 than the artefact as is."""
    info = exported["artifacts"]
    images = load_tensor_file(exported["tensor_file"]["path"]).val_images[:128]
    fp32 = OrtClassifier(info["onnx"]["path"], providers=["CPUExecutionProvider"])(images)
    plain = OrtClassifier(info["ort_int8"]["path"], providers=["CPUExecutionProvider"], use_cpu_plan=False)
    folded = OrtClassifier(info["ort_int8"]["path"], providers=["CPUExecutionProvider"])
    assert not any(plain.cpu_plan.values()) and folded.cpu_plan["relus_folded"] > 0
    plain_logits, folded_logits = plain(images), folded(images)
    assert np.abs(folded_logits - fp32).mean() <= 1.25 * np.abs(plain_logits - fp32).mean() + 1e-4
    agreement = {name: (logits.argmax(1) == fp32.argmax(1)).mean() for name, logits in
                 (("plain", plain_logits), ("folded", folded_logits))}
    assert agreement["folded"] >= agreement["plain"] - 0.05


def test_fp32_models_are_left_alone(exported):
    fp32 = OrtClassifier(exported["artifacts"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    assert fp32.cpu_plan == {"relus_folded": 0, "layers_7bit": 0}


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


def test_layers_reading_signed_inputs_get_7_bit_weights_and_still_fuse(exported, tmp_path):
    """The first conv reads the signed image: its weights are halved (scale doubled), nothing else changes."""
    from onnx import numpy_helper

    from sddcompress_export.ort_quantization import quantize_int8

    info = exported["artifacts"]
    data = load_tensor_file(exported["tensor_file"]["path"])
    path = quantize_int8(info["onnx"]["path"], tmp_path / "q.onnx", data.calib_images[:32], method="minmax",
                         keep_float="none").path
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    model = onnx.load(str(path))
    counts = cpu_plan(model)
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weights, bias = producer[first.input[1]], producer[first.input[2]]
    assert counts["relus_folded"] > 0 and counts["layers_7bit"] >= 1
    assert np.abs(before[weights.input[0]]).max() > 63 and np.abs(after[weights.input[0]].astype(int)).max() <= 64
    # the dequantised weights and bias move by at most one step of the 8-bit artefact
    for dq in (weights, bias):
        old = before[dq.input[0]] * np.expand_dims(before[dq.input[1]], tuple(range(1, before[dq.input[0]].ndim)))
        new = after[dq.input[0]] * np.expand_dims(after[dq.input[1]], tuple(range(1, after[dq.input[0]].ndim)))
        step = np.expand_dims(before[dq.input[1]], tuple(range(1, before[dq.input[0]].ndim)))
        assert (np.abs(new - old) <= step * 1.0001).all()
    # only layers whose input is still signed after the fold were touched: the others keep 8-bit weights
    signed = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[0] in producer
              and producer[n.input[0]].op_type == "DequantizeLinear"
              and after[producer[n.input[0]].input[2]].dtype == np.int8]
    allowed = {name for n in signed for i in n.input[1:] if i in producer for name in producer[i].input[:2]}
    changed = {n for n in before if n in after and not np.array_equal(before[n], after[n])}
    assert first in signed and changed <= allowed and counts["layers_7bit"] <= len(signed)
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    assert _optimized_op_counts(model, tmp_path)["QLinearConv"] == convs


def test_seven_bit_leaves_layers_fed_by_a_folded_relu_alone():
    model = _relu_between_qdq()
    fold_relu_into_uint8(model)
    assert seven_bit_weights_for_signed_inputs(model) == 0
