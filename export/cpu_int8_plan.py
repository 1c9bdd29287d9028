"""Run the symmetric INT8 artefact fast on ONNX Runtime's CPU provider, without a second artefact.

`model.int8.onnx` quantises every activation as signed int8 with zero point 0, because TensorRT's explicit
quantisation requires it. A ReLU output quantised that way keeps its `Relu` node between Q/DQ pairs
(`... -> Q -> DQ -> Relu -> Q -> DQ`): ONNX Runtime has no integer ReLU, so on the CPU it runs the ReLU in
float, cannot fuse the convolution before it into `QLinearConv`, and moves every such tensor in and out of
its NHWC layout. On this project's quickstart models that makes INT8 about 2x *slower* than fp32.

ONNX Runtime's own fast pattern is an unsigned output with zero point 0: the quantisation clamp at 0 *is*
the ReLU, so `DQ -> Conv -> Q(uint8)` fuses into one `QLinearConv`. `fold_relu_into_uint8` rewrites the
loaded graph (in memory; the file on disk is untouched) into that pattern: for each `Relu` whose only
consumer is an int8, zero-point-0 `QuantizeLinear`, the `Relu` goes, that `QuantizeLinear` and its
`DequantizeLinear`s become uint8 with zero point 0 and the same scale, and a Q/DQ pair that fed only the
`Relu` is bypassed (the value is rounded once, at the ReLU output's scale, as TensorRT's fused Conv+ReLU
does). Values inside the calibrated range are represented exactly as in the artefact; the unsigned code
only adds head-room (up to 255 steps instead of 127) above it.

A second step concerns layers whose input stays signed (the image into the first conv; in MobileNetV2 the
block inputs). ONNX Runtime shifts signed activations to uint8 (zero point 128) for its x86 kernels, and
without VNNI those multiply uint8 by int8 pairwise into 16-bit sums, which overflow once both operands are
large (255 x 127 x 2 > 32767). On the quickstart student that alone cost 4.4 top-1 points at the first
conv. `seven_bit_weights_for_signed_inputs` gives such layers 7-bit weights (each int8 weight halved,
its scale doubled; the int32 bias likewise), which cannot overflow; ONNX Runtime's own quantiser offers
the same remedy (`reduce_range`). Layers fed by a folded ReLU read uint8 values of at most 127 at the
calibrated range and keep their 8-bit weights.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers with weights to quantise


def _scalar_zero_point(initializers: dict, node) -> np.ndarray | None:
    """The node's zero point as an array, if it is a scalar initializer."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[2] not in initializers:
        return None
    zero_point = numpy_helper.to_array(initializers[node.input[2]])
    return zero_point if zero_point.size == 1 else None


def cpu_plan(model) -> dict[str, int]:
    """Both rewrites, in place, in order; returns how many ReLUs were folded and layers given 7-bit weights."""
    return {"relus_folded": fold_relu_into_uint8(model),
            "layers_7bit": seven_bit_weights_for_signed_inputs(model)}


def seven_bit_weights_for_signed_inputs(model) -> int:
    """Halve the int8 weights (and int32 bias) of each quantised layer whose input is signed int8; in place."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def dequantized_initializer(tensor: str):
        node = producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            return None
        return node if node.input[1] in initializers else None

    def halve(dequantize, dtype) -> None:
        values, scale = (numpy_helper.to_array(initializers[name]) for name in dequantize.input[:2])
        halved = np.round(values.astype(np.float64) / 2).astype(dtype)
        initializers[dequantize.input[0]].CopyFrom(numpy_helper.from_array(halved, dequantize.input[0]))
        initializers[dequantize.input[1]].CopyFrom(numpy_helper.from_array((scale * 2).astype(scale.dtype),
                                                                           dequantize.input[1]))

    changed = 0
    for layer in [n for n in graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1]:
        activation, weights = producer.get(layer.input[0]), dequantized_initializer(layer.input[1])
        if activation is None or activation.op_type != "DequantizeLinear" or weights is None:
            continue
        zero_point = _scalar_zero_point(initializers, activation)
        int8_weights = numpy_helper.to_array(initializers[weights.input[0]])
        if zero_point is None or zero_point.dtype != np.int8 or int8_weights.dtype != np.int8:
            continue
        if np.abs(int8_weights.astype(np.int16)).max() <= 63:
            continue  # already within 7 bits
        halve(weights, np.int8)
        bias = dequantized_initializer(layer.input[2]) if len(layer.input) > 2 else None
        if bias is not None:  # the bias scale is input scale x weight scale: keep it so
            halve(bias, np.int32)
        changed += 1
    return changed


def fold_relu_into_uint8(model) -> int:
    """Rewrite `model` (an onnx ModelProto, in place) as described above; return how many ReLUs were folded."""
    from onnx import numpy_helper

    graph = model.graph
    nodes = list(graph.node)  # held, so that id() names each node for the whole pass
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}

    def only_consumer(tensor: str, op_type: str):
        users = consumers[tensor]
        if tensor in graph_outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    removed: set[int] = set()
    retyped: set[str] = set()
    replaced: set[str] = set()  # initializers the rewritten nodes no longer read
    folded = 0
    for relu in [n for n in nodes if n.op_type == "Relu"]:
        quantize = only_consumer(relu.output[0], "QuantizeLinear")
        zero_point = None if quantize is None else _scalar_zero_point(initializers, quantize)
        if zero_point is None or zero_point.dtype != np.int8 or zero_point.any():
            continue
        dequantizers = consumers[quantize.output[0]]
        if (quantize.output[0] in graph_outputs or not dequantizers
                or any(d.op_type != "DequantizeLinear" or len(d.input) < 3 for d in dequantizers)):
            continue
        source = relu.input[0]
        feeding_dq = producer.get(source)
        if feeding_dq is not None and feeding_dq.op_type == "DequantizeLinear" and only_consumer(source, "Relu"):
            feeding_q = producer.get(feeding_dq.input[0])
            if (feeding_q is not None and feeding_q.op_type == "QuantizeLinear"
                    and only_consumer(feeding_dq.input[0], "DequantizeLinear")):
                source = feeding_q.input[0]
                removed |= {id(feeding_dq), id(feeding_q)}
                retyped |= {feeding_dq.output[0], feeding_q.output[0]}
        unsigned_zero = f"{quantize.output[0]}_zero_point_uint8"
        graph.initializer.append(numpy_helper.from_array(np.zeros(zero_point.shape, np.uint8), unsigned_zero))
        replaced |= {quantize.input[2], *(d.input[2] for d in dequantizers)}
        quantize.input[0] = source
        quantize.input[2] = unsigned_zero
        for dequantize in dequantizers:
            dequantize.input[2] = unsigned_zero
        removed.add(id(relu))
        folded += 1
        retyped |= {quantize.output[0], relu.output[0]}
    replaced |= {name for n in nodes if id(n) in removed for name in n.input}
    _delete_where(graph.node, lambda n: id(nodes[n]) in removed)
    _delete_where(graph.value_info, lambda k: graph.value_info[k].name in retyped)
    still_read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    _delete_where(graph.initializer, lambda k: graph.initializer[k].name in replaced - still_read)
    return folded


def _delete_where(repeated, doomed) -> None:
    """Delete, in place, the entries of a protobuf repeated field whose index `doomed` accepts."""
    for index in [k for k in range(len(repeated)) if doomed(k)][::-1]:
        del repeated[index]
