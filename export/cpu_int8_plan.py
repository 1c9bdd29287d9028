"""Run the symmetric INT8 artefact fast on ONNX Runtime's CPU provider, without a second artefact.

`model.int8.onnx` quantises every activation as signed int8 with zero point 0, because TensorRT's explicit
quantisation requires it. A ReLU output quantised that way keeps its `Relu` node between Q/DQ pairs
(`... -> Q -> DQ -> Relu -> Q -> DQ`): ONNX Runtime has no integer ReLU, so on the CPU it runs the ReLU in
float, cannot fuse the convolution before it into `QLinearConv`, and moves every such tensor in and out of
its NHWC layout. On the quickstart models that makes INT8 about 2x *slower* than fp32.

ONNX Runtime's own fast pattern is an unsigned output with zero point 0: the quantisation clamp at 0 *is*
the ReLU, so `DQ -> Conv -> Q(uint8)` fuses into one `QLinearConv`. `fold_relu_into_uint8` rewrites the
loaded graph (in memory; the file on disk is untouched) into that pattern: for each `Relu` whose only
consumer is an int8, zero-point-0 `QuantizeLinear`, the `Relu` goes, that `QuantizeLinear` and its
`DequantizeLinear`s become uint8 with zero point 0 and the same scale, and a Q/DQ pair that fed only the
`Relu` is bypassed (the value is rounded once, at the ReLU output's scale, as TensorRT's fused Conv+ReLU
does). Values inside the calibrated range are represented exactly as in the artefact; the unsigned code
only adds head-room (up to 255 steps instead of 127) above it.

ReLU6 (`Clip` from 0 to 6, torchvision's MobileNetV2) folds the same way when the uint8 code's top,
255 x scale, does not pass the clip's upper bound: the clamp at 255 then keeps the bound. Where it would
pass it, and the CPU sums int8 products in 32 bits (below), the clip's `QuantizeLinear` takes the scale
bound / 255 instead, finer than the artefact's, so that code 255 *is* the bound: the value is rounded once,
on a grid at most as coarse as the artefact's, and clipped exactly where the float model clips it. On other
CPUs such a `Clip` stays in float.

A second step concerns layers whose input stays signed (the image into the first conv; in MobileNetV2 the
block inputs). ONNX Runtime shifts signed activations to uint8 (zero point 128) for its x86 kernels, and
without VNNI those multiply uint8 by int8 pairwise into 16-bit sums, which overflow once both operands are
large (255 x 127 x 2 > 32767). On the quickstart student that alone cost 4.4 top-1 points at the first
conv. `seven_bit_weights_for_signed_inputs` gives such layers 7-bit weights (each int8 weight halved,
its scale doubled; the int32 bias likewise), which cannot overflow; ONNX Runtime's own quantiser offers
the same remedy (`reduce_range`). Layers fed by a folded ReLU read uint8 values of at most 127 at the
calibrated range and keep their 8-bit weights. CPUs with VNNI (`avx512_vnni`, `avx_vnni`) and ARM sum the
products in 32 bits, which cannot overflow, so there every layer keeps its 8-bit weights
(`int8_sums_are_32_bit`).

A third step concerns the first conv's three input channels. ONNX Runtime's fast x86 INT8 convolution (MLAS's
symmetric indirect conv) takes only input channel counts that are a multiple of 4; any other count falls
back to im2col and a general GEMM, which made the quickstart student's 3-channel first conv slower in INT8
than in fp32 and slower than any of its 16-channel convs. `pad_input_channels_to_multiple_of_4` appends
zero channels to that conv's float input, the image (before its `QuantizeLinear`), and zero weights to match: the
added products are exactly 0, so the output is unchanged.

Then the global pooling. PyTorch's `x.mean((2, 3))` exports as `ReduceMean`, which ONNX Runtime runs in
float, after moving the tensor back from its NHWC layout. `quantized_spatial_mean_as_global_pool` renames a
`ReduceMean` over all spatial axes (keeping them) whose input is dequantized to `GlobalAveragePool`, the
same average, which ONNX Runtime fuses into an NHWC `QLinearGlobalAveragePool`.

Last, the signed activations that remain: the outputs of layers without a ReLU (MobileNetV2's linear
bottlenecks, the residual sums) and the image. ONNX Runtime's x86 build fuses only uint8 activations into
`QLinearConv` and `QLinearAdd`; its own int8-to-uint8 conversion takes a `QuantizeLinear` with exactly one
`DequantizeLinear` reader, so a signed tensor read by two layers (a block's output feeding the next block
and its residual sum) stayed float, and so did every conv and sum around it. `signed_activations_as_uint8`
re-encodes each activation `QuantizeLinear` with an int8 zero point z, and its `DequantizeLinear`s, as uint8
with zero point z + 128: every quantised value moves by exactly 128 and dequantises to the same number, so
the model computes what it computed before, and every quantised layer fuses. It runs after the 7-bit step,
which must still see which inputs are signed.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers with weights to quantise
# what `cpu_plan` counts, in order
PLAN_STEPS = ("relus_folded", "layers_7bit", "convs_padded", "means_pooled", "activations_uint8")
INPUT_CHANNEL_ALIGNMENT = 4  # MLAS's symmetric INT8 conv on x86 needs input channels in multiples of this


def _scalar_zero_point(initializers: dict, node) -> np.ndarray | None:
    """The node's zero point as an array, if it is a scalar initializer."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[2] not in initializers:
        return None
    zero_point = numpy_helper.to_array(initializers[node.input[2]])
    return zero_point if zero_point.size == 1 else None


def int8_sums_are_32_bit() -> bool:
    """Whether this CPU's INT8 kernels in ONNX Runtime add uint8 x int8 products in 32 bits (x86 with VNNI,
    ARM), so that 8-bit weights cannot overflow; False where that cannot be told (the safe answer)."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_plan(model, sums_32_bit: bool | None = None) -> dict[str, int]:
    """The five rewrites, in place, in order; returns how many nodes each changed (keys: PLAN_STEPS).
    `sums_32_bit` says whether this CPU adds int8 products in 32 bits (default: `int8_sums_are_32_bit()`)."""
    if sums_32_bit is None:
        sums_32_bit = int8_sums_are_32_bit()
    return {"relus_folded": fold_relu_into_uint8(model, rescale_clips=sums_32_bit),
            "layers_7bit": 0 if sums_32_bit else seven_bit_weights_for_signed_inputs(model),
            "convs_padded": pad_input_channels_to_multiple_of_4(model),
            "means_pooled": quantized_spatial_mean_as_global_pool(model),
            "activations_uint8": signed_activations_as_uint8(model)}


def signed_activations_as_uint8(model) -> int:
    """Re-encode each activation `QuantizeLinear` with a scalar int8 zero point, and the `DequantizeLinear`s
    that read it, as uint8 with the zero point moved by 128 (see the module docstring); in place. Returns
    how many quantised tensors were re-encoded."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    graph_outputs = {o.name for o in graph.output}

    def same_zero_point(dequantize, zero_point: np.ndarray) -> bool:
        theirs = _scalar_zero_point(initializers, dequantize)
        return theirs is not None and theirs.dtype == zero_point.dtype and theirs.item() == zero_point.item()

    retyped, replaced = set(), set()
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        zero_point = _scalar_zero_point(initializers, quantize)
        dequantizers = readers[quantize.output[0]]
        if (zero_point is None or zero_point.dtype != np.int8 or quantize.output[0] in graph_outputs
                or any(a.name == "output_dtype" for a in quantize.attribute)
                or not dequantizers or any(d.op_type != "DequantizeLinear" or not same_zero_point(d, zero_point)
                                           for d in dequantizers)):
            continue
        unsigned_zero = f"{quantize.output[0]}_zero_point_uint8"
        shifted = (zero_point.astype(np.int16) + 128).astype(np.uint8)
        graph.initializer.append(numpy_helper.from_array(shifted, unsigned_zero))
        replaced |= {quantize.input[2], *(d.input[2] for d in dequantizers)}
        for node in (quantize, *dequantizers):
            node.input[2] = unsigned_zero
        retyped.add(quantize.output[0])
    _delete_where(graph.value_info, lambda k: graph.value_info[k].name in retyped)
    _delete_unread_initializers(graph, replaced)
    return len(retyped)


def quantized_spatial_mean_as_global_pool(model) -> int:
    """Turn each `ReduceMean` over all spatial axes (keepdims) of a dequantized tensor into
    `GlobalAveragePool`; in place. Returns how many were turned."""
    from onnx import helper, numpy_helper, shape_inference

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}

    def reduced_axes(node) -> list[int] | None:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("keepdims", 1) != 1:
            return None
        if "axes" in attributes:  # opset < 18
            return list(attributes["axes"])
        if len(node.input) > 1 and node.input[1] in initializers:
            return numpy_helper.to_array(initializers[node.input[1]]).tolist()
        return None

    means = [n for n in graph.node if n.op_type == "ReduceMean" and reduced_axes(n)
             and getattr(producer.get(n.input[0]), "op_type", None) == "DequantizeLinear"]
    if not means:
        return 0
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:
        return 0
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*inferred.value_info, *inferred.input, *inferred.output] if v.type.tensor_type.HasField("shape")}
    pooled, dropped = 0, set()
    for mean in means:
        rank = ranks.get(mean.input[0])
        if rank is None or rank < 3 or sorted(a % rank for a in reduced_axes(mean)) != list(range(2, rank)):
            continue
        mean.op_type = "GlobalAveragePool"
        dropped |= set(mean.input[1:])
        del mean.input[1:]
        del mean.attribute[:]
        pooled += 1
    _delete_unread_initializers(graph, dropped)
    return pooled


def pad_input_channels_to_multiple_of_4(model) -> int:
    """Zero-pad the input channels of each quantised, ungrouped conv that ONNX Runtime's fast INT8 kernel
    would refuse (see the module docstring); in place. Only a conv that reads a graph input (the image) through
    its own `QuantizeLinear -> DequantizeLinear` chain is padded, since the zeros go into the float tensor: a
    `Pad` after an inner layer would keep that layer from fusing with its `QuantizeLinear`."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            readers[name] += 1
    for output in graph.output:
        readers[output.name] += 1

    def sole_reader(tensor: str) -> bool:
        return readers[tensor] == 1

    graph_inputs = {i.name for i in graph.input}
    padded = 0
    new_nodes = []
    for conv in [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1]:
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        dequantize, weight_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        quantize = producer.get(dequantize.input[0]) if dequantize is not None else None
        if (group != 1 or dequantize is None or dequantize.op_type != "DequantizeLinear"
                or quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[0] not in graph_inputs
                or weight_dq is None or weight_dq.op_type != "DequantizeLinear"
                or weight_dq.input[0] not in initializers or not sole_reader(weight_dq.input[0])
                or not sole_reader(conv.input[0]) or not sole_reader(dequantize.input[0])):
            continue
        weights = numpy_helper.to_array(initializers[weight_dq.input[0]])
        missing = -weights.shape[1] % INPUT_CHANNEL_ALIGNMENT
        if weights.ndim < 3 or missing == 0 or not _scales_per_output_channel_or_tensor(weight_dq, initializers):
            continue
        widths = [(0, 0)] * weights.ndim
        widths[1] = (0, missing)
        initializers[weight_dq.input[0]].CopyFrom(numpy_helper.from_array(np.pad(weights, widths),
                                                                          weight_dq.input[0]))
        pads = np.zeros(2 * weights.ndim, np.int64)
        pads[weights.ndim + 1] = missing  # (begin..., end...): zeros after the last channel
        pads_name, padded_name = f"{conv.name}_input_channel_pads", f"{conv.name}_input_channels_padded"
        graph.initializer.append(numpy_helper.from_array(pads, pads_name))
        new_nodes.append((quantize, helper.make_node("Pad", [quantize.input[0], pads_name], [padded_name],
                                                     name=f"{conv.name}_pad_input_channels")))
        quantize.input[0] = padded_name
        stale = {quantize.output[0], dequantize.output[0]}  # their recorded shapes lose validity
        _delete_where(graph.value_info, lambda k: graph.value_info[k].name in stale)
        padded += 1
    for quantize, pad in new_nodes:  # keep the node list in topological order: each Pad before its Q
        index = list(graph.node).index(quantize)
        graph.node.insert(index, pad)
    return padded


def _scales_per_output_channel_or_tensor(dequantize, initializers: dict) -> bool:
    """Whether a weight DequantizeLinear's scale is one number or one per output channel (axis 0), so that
    padding the input-channel axis leaves it valid."""
    from onnx import helper, numpy_helper

    if dequantize.input[1] not in initializers:
        return False
    if numpy_helper.to_array(initializers[dequantize.input[1]]).size == 1:
        return True
    axis = next((helper.get_attribute_value(a) for a in dequantize.attribute if a.name == "axis"), 1)
    return axis == 0


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


def _clip_upper_bound(initializers: dict, clip) -> float | None:
    """The upper bound of a `Clip` from exactly 0 (a ReLU6), or None for any other `Clip`."""
    from onnx import numpy_helper

    bounds = []
    for index in (1, 2):
        if len(clip.input) <= index or clip.input[index] not in initializers:
            return None
        bounds.append(numpy_helper.to_array(initializers[clip.input[index]]))
    low, high = bounds
    if low.size != 1 or high.size != 1 or low.item() != 0 or not 0 < high.item() < float("inf"):
        return None
    return float(high.item())


def fold_relu_into_uint8(model, rescale_clips: bool = False) -> int:
    """Rewrite `model` (an onnx ModelProto, in place) as described above; return how many ReLUs (and ReLU6
    clips) were folded. `rescale_clips` lets a clip whose bound lies inside the uint8 range take the scale
    bound / 255 (only where later layers sum int8 products in 32 bits: their inputs then reach code 255)."""
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
    for relu in [n for n in nodes if n.op_type in ("Relu", "Clip")]:
        quantize = only_consumer(relu.output[0], "QuantizeLinear")
        zero_point = None if quantize is None else _scalar_zero_point(initializers, quantize)
        if zero_point is None or zero_point.dtype != np.int8 or zero_point.any():
            continue
        dequantizers = consumers[quantize.output[0]]
        if (quantize.output[0] in graph_outputs or not dequantizers
                or any(d.op_type != "DequantizeLinear" or len(d.input) < 3 for d in dequantizers)):
            continue
        clip_scale = None  # the scale a ReLU6 must take so that code 255 is its bound; None: keep the scale
        clip_ratio = 1.0  # clip_scale over the scale it replaces
        if relu.op_type == "Clip":
            bound = _clip_upper_bound(initializers, relu)
            if bound is None or quantize.input[1] not in initializers:
                continue
            scale = numpy_helper.to_array(initializers[quantize.input[1]])
            if scale.size != 1:
                continue
            if 255 * float(scale.item()) > bound:
                if not rescale_clips or any(d.input[1] != quantize.input[1] for d in dequantizers):
                    continue
                clip_scale = np.array(bound / 255, scale.dtype).reshape(scale.shape)
                clip_ratio = float(clip_scale.item()) / float(scale.item())
        source = relu.input[0]
        feeding_dq = producer.get(source)
        if feeding_dq is not None and feeding_dq.op_type == "DequantizeLinear" and only_consumer(source, relu.op_type):
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
        if clip_scale is not None:
            bound_scale = f"{quantize.output[0]}_scale_clip_bound"
            graph.initializer.append(numpy_helper.from_array(clip_scale, bound_scale))
            replaced.add(quantize.input[1])
            for node in (quantize, *dequantizers):
                node.input[1] = bound_scale
            for dequantize in dequantizers:
                for layer in consumers[dequantize.output[0]]:
                    replaced |= _rescale_bias(graph, initializers, producer, layer, clip_ratio)
        removed.add(id(relu))
        folded += 1
        retyped |= {quantize.output[0], relu.output[0]}
    replaced |= {name for n in nodes if id(n) in removed for name in n.input}
    _delete_where(graph.node, lambda n: id(nodes[n]) in removed)
    _delete_where(graph.value_info, lambda k: graph.value_info[k].name in retyped)
    _delete_unread_initializers(graph, replaced)
    return folded


def _rescale_bias(graph, initializers: dict, producer: dict, layer, ratio: float) -> set[str]:
    """A quantised layer whose input scale was multiplied by `ratio` gets an int32 bias on the new step
    (input scale x weight scale, as ONNX Runtime requires to fuse it), in new initializers; returns the
    names of the old ones."""
    from onnx import numpy_helper

    if layer.op_type not in WEIGHTED_OPS or len(layer.input) < 3:
        return set()
    bias = producer.get(layer.input[2])
    if (bias is None or bias.op_type != "DequantizeLinear"
            or not {bias.input[0], bias.input[1]} <= set(initializers)):
        return set()
    values, scale = (numpy_helper.to_array(initializers[name]) for name in bias.input[:2])
    if values.dtype != np.int32:
        return set()
    rescaled = np.clip(np.round(values.astype(np.float64) / ratio), -2**31, 2**31 - 1).astype(np.int32)
    old = set(bias.input[:2])
    for index, array in ((0, rescaled), (1, (scale.astype(np.float64) * ratio).astype(scale.dtype))):
        name = f"{bias.input[index]}_on_{layer.name or layer.output[0]}_input_scale"
        graph.initializer.append(numpy_helper.from_array(array, name))
        bias.input[index] = name
    return old


def _delete_unread_initializers(graph, candidates: set[str]) -> None:
    """Delete the initializers named in `candidates` that no node and no graph output reads any more."""
    still_read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    _delete_where(graph.initializer, lambda k: graph.initializer[k].name in candidates - still_read)


def _delete_where(repeated, doomed) -> None:
    """Delete, in place, the entries of a protobuf repeated field whose index `doomed` accepts."""
    for index in [k for k in range(len(repeated)) if doomed(k)][::-1]:
        del repeated[index]
