"""Bias correction: the mean output shift that rounding a layer's weights to INT8 causes, taken out of its bias.

Rounding the weights W of a convolution or Gemm to W_q changes its output by (W_q - W) x. Over many inputs
that change does not average to 0 per output channel: with few weights per channel (a depthwise
convolution reads 9 numbers) the rounding errors of one channel's weights do not cancel, and their sum times
the channel's mean input is a shift that every later layer sees. Subtracting the mean shift E[(W_q - W) x]
from the float bias before quantising removes it (the empirical bias correction of Nagel et al., Data-Free
Quantization, ICCV 2019, and of Finkelstein et al., 2019).

The shift is measured on the calibration images in the INT8 model as written (the Q/DQ graph that TensorRT
and other runtimes compute, run by ONNX Runtime without graph optimisations): next to each quantised layer
a twin reads the same quantised input with the float weights, and the mean difference of the two outputs
per output channel is the layer's own weight-rounding shift, with the quantised inputs the INT8 model gives
it. Layers kept in float have no weight rounding, so their biases are left as they are.
"""

from __future__ import annotations

import numpy as np

WEIGHTED = ("Conv", "Gemm")
TWIN_SUFFIX = "__float_weights"


def _quantised_weighted_nodes(int8_model) -> list:
    """The Conv/Gemm nodes of a Q/DQ model whose weight comes through a DequantizeLinear and that have a bias."""
    dequantized = {n.output[0] for n in int8_model.graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in int8_model.graph.node
            if n.op_type in WEIGHTED and len(n.input) > 2 and n.input[2] and n.input[1] in dequantized]


def measure_bias_shifts(float_model, int8_model, images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """{node name: mean output shift per output channel} of every quantised Conv/Gemm of `int8_model`, made by
    ONNX Runtime's Q/DQ quantiser from `float_model` (the same node names), over `images`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    float_nodes = {n.name: n for n in float_model.graph.node}
    float_weights = {init.name: init for init in float_model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(int8_model)
    del probe.graph.output[:]
    outputs: dict[str, str] = {}
    for node in _quantised_weighted_nodes(int8_model):
        source = float_nodes.get(node.name)
        if source is None or source.input[1] not in float_weights:
            continue
        weight = numpy_helper.to_array(float_weights[source.input[1]])
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name = node.name + TWIN_SUFFIX
        twin.input[1] = source.input[1] + TWIN_SUFFIX
        twin.output[0] = node.output[0] + TWIN_SUFFIX
        probe.graph.initializer.append(numpy_helper.from_array(weight, twin.input[1]))
        shift = node.output[0] + "__shift"
        mean = shift + "__mean"
        probe.graph.node.extend([twin, helper.make_node("Sub", [node.output[0], twin.output[0]], [shift])])
        if node.op_type == "Conv":  # (N, C, H, W) -> (N, C, 1, 1): no axes argument, whatever the opset
            probe.graph.node.append(helper.make_node("GlobalAveragePool", [shift], [mean]))
        else:
            mean = shift
        outputs[node.name] = mean
        probe.graph.output.append(helper.make_empty_tensor_value_info(mean))
    if not outputs:
        return {}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ graph as written
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    names = list(outputs.values())
    sums = {name: 0.0 for name in names}
    for start in range(0, len(images), batch):
        values = session.run(names, {feed: np.ascontiguousarray(images[start:start + batch], np.float32)})
        for name, value in zip(names, values):
            sums[name] = sums[name] + value.reshape(value.shape[0], value.shape[1]).astype(np.float64).sum(axis=0)
    return {node: (sums[name] / len(images)).astype(np.float32) for node, name in outputs.items()}


def corrected_model(float_model, shifts: dict[str, np.ndarray], int8_nodes: set[str] | None = None):
    """A copy of `float_model` whose biases of the nodes in `int8_nodes` (default: every node in `shifts`) have
    their weight-rounding shift subtracted."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    inits = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in model.graph.node:
        if node.name not in shifts or (int8_nodes is not None and node.name not in int8_nodes):
            continue
        bias = inits.get(node.input[2])
        if bias is None or readers[node.input[2]] != 1:  # a bias another node also reads stays as it is
            continue
        value = numpy_helper.to_array(bias).astype(np.float32) - shifts[node.name]
        bias.CopyFrom(numpy_helper.from_array(value.astype(np.float32), bias.name))
    return model


def summary(shifts: dict[str, np.ndarray]) -> dict:
    """{"layers", "mean_abs_shift", "max_abs_shift"} of the measured shifts, for the report."""
    if not shifts:
        return {"layers": 0, "mean_abs_shift": 0.0, "max_abs_shift": 0.0}
    values = np.concatenate([np.abs(v).ravel() for v in shifts.values()])
    return {"layers": len(shifts), "mean_abs_shift": float(values.mean()), "max_abs_shift": float(values.max())}
