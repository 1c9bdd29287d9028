"""The CPU plan of the symmetric INT8 artefact (ReLUs folded into uint8 outputs, 7-bit weights for signed inputs,
padded first-conv channels, the mean as a global pool, signed activations re-encoded as uint8), checked with
real ONNX Runtime."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from sddcompress_export.cpu_int8_plan import (
    PLAN_STEPS,
    cpu_plan,
    fold_relu_into_uint8,
    pad_input_channels_to_multiple_of_4,
    quantized_spatial_mean_as_global_pool,
    seven_bit_weights_for_signed_inputs,
    signed_activations_as_uint8,
)
from sddcompress_export.onnxruntime_runner import DISABLED_OPTIMIZERS, OrtClassifier
from sddcompress_export.ort_quantization import weighted_nodes
from sddcompress_export.tensor_file import load_tensor_file
from helpers import random_initializers, save_constructed_classifier


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
    assert fp32.cpu_plan == dict.fromkeys(PLAN_STEPS, 0)


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
    counts = {"relus_folded": fold_relu_into_uint8(model), "layers_7bit": seven_bit_weights_for_signed_inputs(model)}
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


def _qdq_convs(in_channels: int = 3):
    """x -> Q -> DQ -> conv A (in_channels -> 16, 3x3, per-channel int8) -> Q -> DQ -> conv B (16 -> 16)
    -> Q -> DQ -> ReduceMean over H, W (keepdims) -> Q -> DQ -> y: every scale and zero point as the export
    writes them (activations int8 zero point 0); the weights 7-bit, as the plan leaves layers that read signed
    int8 (8-bit ones would saturate AVX2's 16-bit pair sums, and differently in each kernel)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0, np.int8), "z"), numpy_helper.from_array(np.zeros(16, np.int8), "wz"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw")]
    nodes = []

    def quantize(tensor: str, scale: float) -> str:
        inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_s"))
        nodes.extend([helper.make_node("QuantizeLinear", [tensor, f"{tensor}_s", "z"], [f"{tensor}_q"]),
                      helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_s", "z"], [f"{tensor}_d"])])
        return f"{tensor}_d"

    def conv(x: str, name: str, cin: int) -> str:
        weights = rng.integers(-63, 64, (16, cin, 3, 3)).astype(np.int8)
        inits.extend([numpy_helper.from_array(weights, f"{name}_w"),
                      numpy_helper.from_array(rng.uniform(0.002, 0.004, 16).astype(np.float32), f"{name}_ws")])
        nodes.extend([helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", "wz"], [f"{name}_wd"], axis=0),
                      helper.make_node("Conv", [x, f"{name}_wd"], [name], pads=[1, 1, 1, 1], name=name)])
        return name

    a = quantize(conv(quantize("x", 0.03), "conv_a", in_channels), 0.05)
    pooled = quantize(conv(a, "conv_b", 16), 0.05)
    nodes.append(helper.make_node("ReduceMean", [pooled, "hw"], ["mean"], keepdims=1))
    nodes.extend([helper.make_node("QuantizeLinear", ["mean", "mean_s", "z"], ["mean_q"]),
                  helper.make_node("DequantizeLinear", ["mean_q", "mean_s", "z"], ["y"])])
    inits.append(numpy_helper.from_array(np.array(0.02, np.float32), "mean_s"))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, in_channels, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _images(channels: int = 3) -> np.ndarray:
    return np.random.default_rng(1).uniform(-3.5, 3.5, (2, channels, 8, 8)).astype(np.float32)


def test_a_three_channel_conv_is_padded_to_four_without_changing_its_output(tmp_path):
    """ONNX Runtime's fast INT8 conv needs input channels in fours: the zero channel adds exact zeros."""
    from onnx import numpy_helper

    model = _qdq_convs()
    expected = _run(model, _images())
    assert pad_input_channels_to_multiple_of_4(model) == 1  # conv A only: conv B already reads 16 channels
    onnx.checker.check_model(model, full_check=True)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights["conv_a_w"].shape == (16, 4, 3, 3) and not weights["conv_a_w"][:, 3].any()
    assert weights["conv_b_w"].shape == (16, 16, 3, 3)
    assert [n.op_type for n in model.graph.node][:2] == ["Pad", "QuantizeLinear"]
    np.testing.assert_array_equal(_run(model, _images()), expected)
    assert _optimized_op_counts(model, tmp_path)["QLinearConv"] == 2


def test_channel_padding_leaves_aligned_and_shared_inputs_alone():
    assert pad_input_channels_to_multiple_of_4(_qdq_convs(in_channels=4)) == 0
    model = _qdq_convs()  # the quantised image also read by a second node: padding it would change that one
    from onnx import helper

    model.graph.node.append(helper.make_node("Identity", ["x_q"], ["x_q_copy"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("x_q_copy", onnx.TensorProto.INT8, None))
    assert pad_input_channels_to_multiple_of_4(model) == 0


def test_two_convs_reading_the_image_through_their_own_qdq_are_both_padded():
    """x -> Q -> DQ -> conv A, and x -> Q' -> DQ' -> conv B: two Pads with names of their own, same outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.03, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.zeros(16, np.int8), "wz")]
    nodes = []
    for branch in ("a", "b"):
        inits += [numpy_helper.from_array(rng.integers(-63, 64, (16, 3, 3, 3)).astype(np.int8), f"{branch}_w"),
                  numpy_helper.from_array(np.full(16, 0.003, np.float32), f"{branch}_ws")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "z"], [f"{branch}_xq"]),
                  helper.make_node("DequantizeLinear", [f"{branch}_xq", "xs", "z"], [f"{branch}_xd"]),
                  helper.make_node("DequantizeLinear", [f"{branch}_w", f"{branch}_ws", "wz"], [f"{branch}_wd"], axis=0),
                  helper.make_node("Conv", [f"{branch}_xd", f"{branch}_wd"], [branch], pads=[1] * 4, name=f"conv_{branch}")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info(b, TensorProto.FLOAT, [2, 16, 8, 8]) for b in "ab"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": _images()})

    expected = run(model)
    assert pad_input_channels_to_multiple_of_4(model) == 2
    onnx.checker.check_model(model, full_check=True)
    for got, want in zip(run(model), expected):
        np.testing.assert_array_equal(got, want)


def test_a_weight_scale_along_the_input_channels_is_not_padded():
    """Per-input-channel weight scales (axis 1) would no longer match a padded weight: left alone."""
    from onnx import numpy_helper

    model = _qdq_convs()
    weights_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "conv_a_w")
    weights_dq.attribute[0].i = 1
    scale = next(i for i in model.graph.initializer if i.name == "conv_a_ws")
    scale.CopyFrom(numpy_helper.from_array(np.full(3, 0.003, np.float32), "conv_a_ws"))
    assert pad_input_channels_to_multiple_of_4(model) == 0


def test_the_spatial_mean_becomes_a_quantised_global_pool(tmp_path):
    model = _qdq_convs(in_channels=4)
    expected = _run(model, _images(4))
    assert quantized_spatial_mean_as_global_pool(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert "hw" not in {i.name for i in model.graph.initializer}  # the axes it no longer reads are gone
    ran = _optimized_op_counts(model, tmp_path)
    assert ran["QLinearGlobalAveragePool"] == 1 and ran["ReduceMean"] == 0
    # the same average, requantised once: at most one step (0.02) of the pooled output apart
    assert np.abs(_run(model, _images(4)) - expected).max() <= 0.02 * 1.0001


def test_means_that_are_not_a_global_pool_stay_reduce_means():
    from onnx import numpy_helper

    for change in ("axes", "keepdims", "float_input"):
        model = _qdq_convs(in_channels=4)
        mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
        if change == "axes":  # over W alone
            axes = next(i for i in model.graph.initializer if i.name == "hw")
            axes.CopyFrom(numpy_helper.from_array(np.array([3], np.int64), "hw"))
        elif change == "keepdims":
            mean.attribute[0].i = 0
            model.graph.output[0].type.tensor_type.shape.ClearField("dim")
        else:  # a float tensor, not a dequantised one: the fp32 model's mean stays as exported
            producer = {o: n for n in model.graph.node for o in n.output}
            mean.input[0] = producer[mean.input[0]].input[0].replace("_q", "")
        assert quantized_spatial_mean_as_global_pool(model) == 0, change
        assert any(n.op_type == "ReduceMean" for n in model.graph.node)


def test_the_exported_resnet_runs_as_integer_kernels_end_to_end(exported, tmp_path):
    """On the exported ResNet with every layer INT8 (the export's own plan may keep layers float where they
    are faster so on this machine): the 3-channel first conv is padded, the mean pooled, every conv fused,
    the whole plan within a step of the plan without those two rewrites."""
    from sddcompress_export.chain import int8_model

    tensors = load_tensor_file(exported["tensor_file"]["path"])
    path = tmp_path / "model.int8.onnx"
    int8_model(exported["artifacts"]["onnx"]["path"], path, tensors.calib_images, tensors.calib_labels,
               keep_float="none")
    info = {"ort_int8": {"path": str(path)}}
    model = onnx.load(info["ort_int8"]["path"])
    counts = cpu_plan(model, sums_32_bit=False)  # with 7-bit weights, as on a CPU without VNNI
    assert counts["convs_padded"] == 1 and counts["means_pooled"] == 1
    ran = _optimized_op_counts(model, tmp_path)
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    assert ran["QLinearConv"] == convs and ran["QLinearGlobalAveragePool"] == 1 and ran["ReduceMean"] == 0
    images = load_tensor_file(exported["tensor_file"]["path"]).val_images[:64]
    partial = onnx.load(info["ort_int8"]["path"])
    fold_relu_into_uint8(partial)
    seven_bit_weights_for_signed_inputs(partial)

    def logits(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=DISABLED_OPTIMIZERS)
        return session.run(None, {session.get_inputs()[0].name: images})[0]

    full_logits, partial_logits = logits(model), logits(partial)
    assert (full_logits.argmax(1) == partial_logits.argmax(1)).mean() >= 0.98
    assert np.abs(full_logits - partial_logits).mean() <= 0.05 * np.abs(partial_logits).mean() + 1e-6


def _linear_bottleneck(path) -> None:
    """stem conv -> ReLU -> project (1x1, no ReLU: a signed output read by two layers) -> expand (1x1) -> ReLU
    -> project again -> residual Add -> global pool -> Gemm: the pattern of MobileNetV2's blocks, as fp32."""
    from onnx import helper

    weight = random_initializers(0.4)

    nodes = [helper.make_node("Conv", ["input", "stem.w", "stem.b"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "project.w", "project.b"], ["block_in"], name="project"),
             helper.make_node("Conv", ["block_in", "expand.w", "expand.b"], ["c3"], name="expand"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "project2.w", "project2.b"], ["c4"], name="project2"),
             helper.make_node("Add", ["block_in", "c4"], ["block_out"], name="residual"),
             helper.make_node("GlobalAveragePool", ["block_out"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    inits = [weight("stem.w", 8, 4, 3, 3), weight("stem.b", 8), weight("project.w", 8, 8, 1, 1),
             weight("project.b", 8), weight("expand.w", 16, 8, 1, 1), weight("expand.b", 16),
             weight("project2.w", 8, 16, 1, 1), weight("project2.b", 8), weight("fc.w", 4, 8), weight("fc.b", 4)]
    save_constructed_classifier(path, nodes, inits, 4, "bottleneck")


def _quantised_bottleneck(tmp_path):
    from sddcompress_export.ort_quantization import quantize_int8

    _linear_bottleneck(tmp_path / "fp32.onnx")
    images = np.random.default_rng(1).standard_normal((64, 4, 8, 8)).astype(np.float32)
    path = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images, method="minmax",
                         keep_float="none").path
    return onnx.load(str(path)), images


def _before_last_step(model) -> None:
    fold_relu_into_uint8(model)
    seven_bit_weights_for_signed_inputs(model)
    pad_input_channels_to_multiple_of_4(model)
    quantized_spatial_mean_as_global_pool(model)


def test_signed_activations_read_twice_fuse_only_once_re_encoded_as_uint8(tmp_path):
    """A signed tensor with two readers (the next layer and the residual sum) kept the convs and the sum
    around it in float; as uint8 with zero point 128 every conv and the sum run as integer kernels."""
    model, _ = _quantised_bottleneck(tmp_path)
    _before_last_step(model)
    ran_before = _optimized_op_counts(model, tmp_path)
    assert ran_before["Conv"] >= 2 and ran_before["QLinearAdd"] == 0  # project and expand stayed float
    assert signed_activations_as_uint8(model) >= 2  # the block input and the residual sum, at least
    onnx.checker.check_model(model, full_check=True)
    ran = _optimized_op_counts(model, tmp_path)
    assert ran["QLinearConv"] == 4 and ran["Conv"] == 0 and ran["QLinearAdd"] == 1
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    activation_zero_points = {inits[n.input[2]].dtype.name + ":" + str(inits[n.input[2]].item())
                              for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_zero_points <= {"uint8:0", "uint8:128"} and "uint8:128" in activation_zero_points


def test_re_encoding_signed_activations_computes_exactly_the_same(tmp_path):
    """Each quantised value moves by 128 and dequantises to the same number: with ONNX Runtime's reference
    kernels (no fusions) the logits are bit for bit those before the re-encoding."""
    model, images = _quantised_bottleneck(tmp_path)
    _before_last_step(model)

    def reference_logits(m):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": images})[0]

    expected = reference_logits(model)
    assert signed_activations_as_uint8(model) > 0
    np.testing.assert_array_equal(reference_logits(model), expected)
    assert np.abs(expected).max() > 0


def test_quantisers_that_are_not_plain_int8_are_left_alone():
    model = _relu_between_qdq()
    fold_relu_into_uint8(model)  # x -> Q(uint8, zero point 0) -> DQ -> y: nothing signed is left
    assert signed_activations_as_uint8(model) == 0
    model = _relu_between_qdq()
    model.graph.output.append(onnx.helper.make_tensor_value_info("xq", onnx.TensorProto.INT8, None))
    count = signed_activations_as_uint8(model)  # the quantised input is a graph output: its type must stay
    assert count == 1 and {n.input[2] for n in model.graph.node if "xq" in n.output or "xq" in n.input} == {"z"}


def _relu6_graph(scale: float, with_conv: bool = False):
    """x -> Clip(0, 6) -> Q(int8, `scale`) -> DQ -> y, or with `with_conv` x -> Q -> DQ -> Clip -> Q -> DQ ->
    conv (per-channel int8 weights, int32 bias on input scale x weight scale) -> Q -> DQ -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight_scale = np.full(8, 0.01, np.float32)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(0.0, np.float32), "low"), numpy_helper.from_array(np.array(6.0, np.float32), "high"),
             numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
             numpy_helper.from_array(rng.integers(-127, 128, (8, 4, 1, 1)).astype(np.int8), "w"),
             numpy_helper.from_array(weight_scale, "ws"), numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
             numpy_helper.from_array(rng.integers(-2000, 2000, 8).astype(np.int32), "b"),
             numpy_helper.from_array(weight_scale * np.float32(scale), "bs"),
             numpy_helper.from_array(np.zeros(8, np.int32), "bz")]
    if with_conv:
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["xd"]),
                 helper.make_node("Clip", ["xd", "low", "high"], ["r"]),
                 helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
                 helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
                 helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                 helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
                 helper.make_node("Conv", ["rd", "wd", "bd"], ["c"], name="conv"),
                 helper.make_node("QuantizeLinear", ["c", "ys", "z"], ["cq"]),
                 helper.make_node("DequantizeLinear", ["cq", "ys", "z"], ["y"])]
        shape = [2, 8, 4, 4]
    else:
        nodes = [helper.make_node("Clip", ["x", "low", "high"], ["r"]),
                 helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
                 helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"])]
        shape = [2, 4, 4, 4]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _relu6_input() -> np.ndarray:
    return np.random.default_rng(2).uniform(-3.0, 12.0, (2, 4, 4, 4)).astype(np.float32)


def test_a_relu6_whose_uint8_top_stays_below_its_bound_folds_like_a_relu():
    model = _relu6_graph(0.02)  # 255 x 0.02 = 5.1 <= 6: the uint8 clamp keeps the bound on every CPU
    assert fold_relu_into_uint8(model, rescale_clips=False) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    x = _relu6_input()
    np.testing.assert_array_equal(_run(model, x), np.clip(np.round(x / np.float32(0.02)), 0, 255) * np.float32(0.02))


def test_a_relu6_whose_bound_lies_inside_the_uint8_range_is_clipped_exactly_at_it():
    """255 x 0.04 = 10.2 > 6: without 32-bit sums the Clip stays; with them code 255 becomes 6 (scale 6 / 255),
    a grid finer than the artefact's, and the output is the float ReLU6 to half a step."""
    model = _relu6_graph(0.04)
    assert fold_relu_into_uint8(model, rescale_clips=False) == 0
    assert fold_relu_into_uint8(model, rescale_clips=True) == 1
    onnx.checker.check_model(model, full_check=True)
    x = _relu6_input()
    artefact, folded, relu6 = _run(_relu6_graph(0.04), x), _run(model, x), np.clip(x, 0, 6)
    step = np.float32(6.0) / np.float32(255)
    np.testing.assert_array_equal(folded, np.clip(np.round(x / step), 0, 255) * step)
    assert abs(folded.max() - 6.0) < 1e-5 and np.abs(folded - relu6).max() <= step / 2 * 1.0001
    assert np.abs(folded - relu6).max() < np.abs(artefact - relu6).max()  # the artefact clamps at 127 x 0.04


def test_a_rescaled_relu6_moves_the_next_layers_bias_onto_its_new_step_and_still_fuses(tmp_path):
    from onnx import numpy_helper

    model = _relu6_graph(0.04, with_conv=True)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert fold_relu_into_uint8(model, rescale_clips=True) == 1
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    bias = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "bd")
    new_step = inits[bias.input[1]]
    np.testing.assert_allclose(new_step, before["ws"] * np.float32(6 / 255), rtol=1e-6)
    assert np.abs(inits[bias.input[0]] * new_step - before["b"] * before["bs"]).max() <= new_step.max() / 2 * 1.0001
    ran = _optimized_op_counts(model, tmp_path)
    assert ran["QLinearConv"] == 1 and ran["Conv"] == 0 and ran["Clip"] == 0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = _relu6_input()
    fused = _run(model, x)  # ONNX Runtime's fused integer kernel, against its reference kernels
    assert np.abs(fused - reference.run(["y"], {"x": x})[0]).max() <= 0.1 * 1.0001


def test_seven_bit_weights_only_where_int8_sums_can_overflow(tmp_path):
    from sddcompress_export.cpu_int8_plan import int8_sums_are_32_bit

    _quantised_bottleneck(tmp_path)
    narrow, wide = onnx.load(str(tmp_path / "int8.onnx")), onnx.load(str(tmp_path / "int8.onnx"))
    assert cpu_plan(narrow, sums_32_bit=False)["layers_7bit"] >= 1  # the image into the stem, at least
    assert cpu_plan(wide, sums_32_bit=True)["layers_7bit"] == 0
    runner = OrtClassifier(tmp_path / "int8.onnx", providers=["CPUExecutionProvider"])
    assert (runner.cpu_plan["layers_7bit"] == 0) == int8_sums_are_32_bit()


def test_clipping_that_the_cpu_plan_hides_is_reported_as_written(tmp_path):
    """ReLU outputs above the calibrated range (127 x 0.05) clip in the file as written (TensorRT's rounding) but
    not with the CPU plan's uint8 outputs: the report scores both and warns in one line when they part."""
    from sddcompress.exporting.int8_report import as_written_section

    path = tmp_path / "relu.onnx"
    onnx.save(_relu_between_qdq(), path)
    rows = np.zeros((4, 8), np.float32)
    rows[:, 2], rows[:, 5] = 7.0, 9.0  # both above 6.35: as written they tie at the clip and class 2 wins
    labels = np.full(4, 5)
    plan = OrtClassifier(path, providers=["CPUExecutionProvider"])
    assert plan.cpu_plan["relus_folded"] == 1 and (plan(rows).argmax(1) == labels).all()
    said: list[str] = []
    section = as_written_section(plan, rows, labels, 100.0, 100.0, 4, 0.5, said.append)
    assert section == {"top1": 0.0, "top1_drop": 100.0}
    assert len(said) == 1 and "as TensorRT runs it" in said[0] and "--trt fp16" in said[0]
    inside = rows * 0.5  # within the calibrated range both agree: no line
    said.clear()
    assert as_written_section(plan, inside, labels, 100.0, 100.0, 4, 0.5, said.append)["top1"] == 100.0
    assert not said
    plain = OrtClassifier(path, providers=["CPUExecutionProvider"], use_cpu_plan=False)
    assert as_written_section(plain, rows, labels, 100.0, 0.0, 4, 0.5, said.append) is None


def test_int8_choices_are_scored_by_the_lower_of_the_cpu_plan_and_the_file_as_written(tmp_path):
    """Held-out images above the calibrated range: the CPU plan still ranks class 5 first, the Q/DQ as written
    clips both classes to a tie and class 2 wins, so the held-out score is the file's as written."""
    from sddcompress_export.ort_quantization import held_out_score

    path = tmp_path / "relu.onnx"
    onnx.save(_relu_between_qdq(), path)
    rows = np.zeros((4, 8), np.float32)
    rows[:, 2], rows[:, 5] = 7.0, 9.0
    labels, ref = np.full(4, 5), rows.copy()
    clipped = held_out_score(str(path), rows, ref, labels)
    assert clipped.as_written and clipped.top1 == 0.0 and clipped.agreement == 0.0
    inside = held_out_score(str(path), rows * 0.5, ref * 0.5, labels)  # both runtimes agree: the plan's score
    assert not inside.as_written and inside.top1 == 100.0 and inside.agreement == 100.0
