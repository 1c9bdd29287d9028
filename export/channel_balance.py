"""Two exact rewrites of the float graph before INT8 calibration, for channels that one INT8 grid serves badly.

An INT8 activation has one scale for all its channels, and a bias is rounded on the grid of its input's scale
times its weight's (per output channel). After BatchNorm is folded into the convolutions, both can fail on a
trained network (the CIFAR ShuffleNetV1 on the digits lost 89 of its 99 top-1 points with every layer INT8):

- **Weights that read a channel that never fires.** A ReLU channel that stays 0 (a dead unit) makes the next
  BatchNorm's variance almost 0, so the folded weights reading it become huge (1.8e5 in that model). They
  multiply zeros, but they set their output channel's weight scale, and the bias, rounded on that scale times
  the input's, becomes 0: an output channel that should be a constant (its bias) is lost. `zero_dead_weights`
  sets such weights to 0 (ONNX Runtime then gives the channel a weight scale of 1 and its bias the input's grid).
  Only weights whose column sets its output channel's largest weight are touched, and only for channels that
  were 0 on every calibration image, so the float model is unchanged on those images.
- **Channels of very different ranges.** The channels of one ReLU output can differ by orders of magnitude
  (500x between the largest and the median in that model), so on the grid the largest sets, most get a
  handful of steps. ReLU commutes with a positive scale per channel (relu(x / s) = relu(x) / s): for a
  convolution P whose output goes only through a ReLU, and perhaps a channel shuffle (Reshape/Transpose), into
  one convolution C, dividing P's output channel i (weights and bias) by s_i and multiplying the weights with
  which C reads that channel by s_i leaves the float model's output unchanged to float rounding. This is the
  cross-layer equalisation of Nagel et al. (Data-Free Quantization, ICCV 2019), with each channel's range
  measured on the calibration images instead of estimated from P's weights (a dead channel has huge weights
  and a range of 0). Where C is depthwise (each output reads one channel, with its own weight scale) every
  firing channel is brought to one range; otherwise s_i balances the channel's range against the largest weight
  reading it, both ending at sqrt(range x weight), the balance the paper derives for two quantised layers.

Both depend on the calibration images; `ChannelRewrite` records what was done, so that quantization-aware
training rebuilds the same float graph from the fp32 model (`ChannelRewrite.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration_chunks import activation_bytes_per_image, images_fitting

SHUFFLE_OPS = ("Reshape", "Transpose")
MAX_RATIO = 1e6  # bound on a scale, against float overflow from a channel that barely fires


@dataclass
class Pair:
    """A convolution whose output reaches another one only through a ReLU and a channel permutation."""

    producer: str  # node names
    consumer: str
    relu_output: str  # the tensor whose channels are evened out
    channels: int
    permutation: np.ndarray  # consumer input channel j reads ReLU output channel permutation[j]


def _initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def _readers(model) -> dict[str, list]:
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _attribute(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _permutation(chain: list, channels: int, inits: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """The channel permutation `chain` (Reshape/Transpose nodes with constant shapes) applies to a (1, C, H, W)
    tensor, or None if it does anything else."""
    from onnx import numpy_helper

    h, w = shape
    index = np.broadcast_to(np.arange(channels, dtype=np.int64)[None, :, None, None], (1, channels, h, w))
    try:
        for node in chain:
            if node.op_type == "Transpose":
                index = index.transpose(_attribute(node, "perm", None))
            else:
                if node.input[1] not in inits:
                    return None
                target = [int(v) for v in numpy_helper.to_array(inits[node.input[1]])]
                if not _attribute(node, "allowzero", 0):
                    target = [index.shape[k] if v == 0 else v for k, v in enumerate(target)]
                index = index.reshape(target)
    except (ValueError, TypeError, IndexError):
        return None
    if index.ndim != 4 or index.shape[:2] != (1, channels):
        return None
    per_channel = index[0, :, 0, 0]
    if not (index == per_channel[None, :, None, None]).all() or sorted(per_channel) != list(range(channels)):
        return None
    return np.array(per_channel)


def find_pairs(model, spatial: dict[str, tuple[int, int]]) -> list[Pair]:
    """Every Conv -> Relu [-> Reshape/Transpose ...] -> Conv path whose tensors each have one reader and whose
    weights belong to one node; `spatial` gives each ReLU output's (H, W) (for the shuffle's constant shapes)."""
    inits, readers = _initializers(model), _readers(model)

    def uses(name: str) -> int:
        return len(readers.get(name, []))

    graph_outputs = {o.name for o in model.graph.output}
    pairs = []
    for producer in model.graph.node:
        if producer.op_type != "Conv" or producer.input[1] not in inits or uses(producer.input[1]) != 1:
            continue
        if len(producer.input) > 2 and producer.input[2] and uses(producer.input[2]) != 1:
            continue
        follow = readers.get(producer.output[0], [])
        if len(follow) != 1 or follow[0].op_type != "Relu" or producer.output[0] in graph_outputs:
            continue
        relu = follow[0]
        chain, tensor = [], relu.output[0]

        def only_reader(name: str):
            found = readers.get(name, [])
            return found[0] if len(found) == 1 and name not in graph_outputs and found[0].input[0] == name else None

        while (consumer := only_reader(tensor)) is not None and consumer.op_type in SHUFFLE_OPS:
            chain.append(consumer)
            tensor = consumer.output[0]
        if consumer is None or consumer.op_type != "Conv":
            continue
        if consumer.input[1] not in inits or uses(consumer.input[1]) != 1 or relu.output[0] not in spatial:
            continue
        channels = inits[producer.input[1]].dims[0]
        permutation = _permutation(chain, channels, inits, spatial[relu.output[0]]) if chain \
            else np.arange(channels)
        if permutation is None:
            continue
        pairs.append(Pair(producer.name, consumer.name, relu.output[0], channels, permutation))
    return pairs


def channel_maxima(model, images: np.ndarray, batch: int = 64) -> tuple[dict[str, np.ndarray],
                                                                         dict[str, tuple[int, int]]]:
    """Per-channel maxima of |x| over `images` in the float model (ONNX Runtime, CPU) for every ReLU output and
    every convolution's input, and each one's (H, W); `batch` images at a time, fewer where their activations
    would pass the calibration's memory budget (`calibration_chunks`)."""
    import onnx
    import onnxruntime as ort

    batch = min(batch, images_fitting(activation_bytes_per_image(model)))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    feed = probe.graph.input[0].name
    names = sorted({n.output[0] for n in probe.graph.node if n.op_type == "Relu"}
                   | {n.input[0] for n in probe.graph.node if n.op_type == "Conv"} - {feed})
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names if name not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    spatial: dict[str, tuple[int, int]] = {}
    for start in range(0, len(images), batch):
        outs = session.run(names, {feed: np.ascontiguousarray(images[start:start + batch], np.float32)})
        for name, value in zip(names, outs):
            if value.ndim != 4:
                continue
            spatial[name] = tuple(int(d) for d in value.shape[2:])
            top = np.abs(value).max(axis=(0, 2, 3))
            maxima[name] = top if name not in maxima else np.maximum(maxima[name], top)
    return maxima, spatial


def dead_weights(model, maxima: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """{conv node: input channels} where the channel was 0 on every calibration image and the weights reading it
    hold their output channel's largest magnitude (so they set its weight scale and its bias's grid)."""
    from onnx import numpy_helper

    inits = _initializers(model)
    readers = _readers(model)
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in maxima or node.input[1] not in inits:
            continue
        if len(readers[node.input[1]]) != 1:  # weights another node also reads, on inputs of its own
            continue
        dead = np.flatnonzero(maxima[node.input[0]] == 0)
        if not len(dead):
            continue
        weight = np.abs(numpy_helper.to_array(inits[node.input[1]]))
        group = int(_attribute(node, "group", 1))
        per_column = weight.max(axis=tuple(range(2, weight.ndim)))  # (out, in per group)
        chosen = []
        for channel in dead:
            rows, column = _reading(weight.shape, group, int(channel))
            live = np.delete(per_column[rows], column, axis=1)
            biggest = live.max(axis=1) if live.shape[1] else np.zeros(len(live))
            if (per_column[rows, column] > biggest).any():
                chosen.append(int(channel))
        if chosen:
            found[node.name] = chosen
    return found


def zero_dead_weights(model, dead: dict[str, list[int]]) -> None:
    """Set the weights with which each named conv reads the listed input channels to 0 (in place)."""
    from onnx import numpy_helper

    nodes, inits = {n.name: n for n in model.graph.node}, _initializers(model)
    for name, channels in dead.items():
        node = nodes.get(name)
        if node is None or node.op_type != "Conv" or node.input[1] not in inits:
            raise ValueError(f"channel rewrite: no convolution named {name!r} with constant weights in this model")
        weight = numpy_helper.to_array(inits[node.input[1]]).copy()
        for channel in channels:
            weight[_reading(weight.shape, int(_attribute(node, "group", 1)), channel)] = 0
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))


def _reading(shape: tuple[int, ...], group: int, channel: int) -> tuple[slice, int]:
    """The weights (output rows, column) with which a conv of weight `shape` and `group` reads input `channel`."""
    rows_per_group, per_group = shape[0] // group, shape[1]
    first = (channel // per_group) * rows_per_group
    return slice(first, first + rows_per_group), channel % per_group


def _consumer_columns(weight: np.ndarray, group: int, permutation: np.ndarray) -> list[tuple[slice, int, int]]:
    """For each consumer input channel j: (its group's output rows, its column in the weight, the ReLU channel
    it reads)."""
    return [(*_reading(weight.shape, group, j), int(permutation[j])) for j in range(len(permutation))]


def choose_scales(model, pairs: list[Pair], maxima: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """{producer node: s per output channel} (see the module text); pairs whose channels are already even are
    left out."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in model.graph.node}
    inits = _initializers(model)
    scales = {}
    for pair in pairs:
        ranges = np.asarray(maxima[pair.relu_output], np.float64)
        consumer = nodes[pair.consumer]
        weight = numpy_helper.to_array(inits[consumer.input[1]]).astype(np.float64)
        group = int(_attribute(consumer, "group", 1))
        fires = ranges > 0
        if fires.sum() < 2:
            continue
        if weight.shape[1] == 1 and weight.shape[0] == group:  # depthwise: every firing channel to one range
            s = np.where(fires, ranges, 1.0)
            s = s / np.exp(np.log(s[fires]).mean())
        else:
            reads = np.zeros(pair.channels)
            for rows, column, channel in _consumer_columns(weight, group, pair.permutation):
                reads[channel] = max(reads[channel], np.abs(weight[rows, column]).max())
            fires &= reads > 0
            s = np.where(fires, np.sqrt(np.where(fires, ranges, 1.0) / np.where(fires, reads, 1.0)), 1.0)
            if fires.any():
                s = s / np.exp(np.log(s[fires]).mean())
        s = np.where(fires, np.clip(s, 1 / MAX_RATIO, MAX_RATIO), 1.0)
        scales[pair.producer] = [float(v) for v in s]
    return scales


def apply_scales(model, scales: dict[str, list[float]], spatial: dict[str, tuple[int, int]]) -> None:
    """Divide each named producer's output channels by its scales and multiply the consumer's matching weights
    (in place). A producer that is not such a pair in this model raises ValueError."""
    from onnx import numpy_helper

    if not scales:
        return
    nodes, inits = {n.name: n for n in model.graph.node}, _initializers(model)
    pairs = {p.producer: p for p in find_pairs(model, spatial)}
    for name, values in scales.items():
        pair = pairs.get(name)
        if pair is None or len(values) != pair.channels:
            raise ValueError(f"channel rewrite: {name!r} is not a Conv -> Relu -> Conv pair of this model")
        s = np.asarray(values, np.float64)
        producer, consumer = nodes[pair.producer], nodes[pair.consumer]
        w1 = numpy_helper.to_array(inits[producer.input[1]]).astype(np.float64)
        w1 = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
        inits[producer.input[1]].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), producer.input[1]))
        if len(producer.input) > 2 and producer.input[2]:
            b1 = numpy_helper.to_array(inits[producer.input[2]]).astype(np.float64) / s
            inits[producer.input[2]].CopyFrom(numpy_helper.from_array(b1.astype(np.float32), producer.input[2]))
        w2 = numpy_helper.to_array(inits[consumer.input[1]]).astype(np.float64)
        for rows, column, channel in _consumer_columns(w2, int(_attribute(consumer, "group", 1)), pair.permutation):
            w2[rows, column] *= s[channel]
        inits[consumer.input[1]].CopyFrom(numpy_helper.from_array(w2.astype(np.float32), consumer.input[1]))


@dataclass
class ChannelRewrite:
    """What `rewrite_for_int8` changed, to change a fresh copy of the same float graph the same way."""

    dead: dict[str, list[int]] = field(default_factory=dict)  # conv node -> input channels whose weights are 0
    scales: dict[str, list[float]] = field(default_factory=dict)  # producer conv -> s per output channel
    spatial: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (H, W), for the shuffles

    def apply(self, model) -> None:
        zero_dead_weights(model, self.dead)
        apply_scales(model, self.scales, self.spatial)

    def summary(self) -> dict:
        return {"dead_channels_zeroed": sum(len(c) for c in self.dead.values()),
                "layers_with_dead_channels": len(self.dead), "pairs_equalised": len(self.scales)}


def rewrite_for_int8(model, images: np.ndarray) -> ChannelRewrite:
    """Measure the channels on `images` (calibration images), then zero the dead weights and even out the ReLU
    outputs (in place); returns what was done."""
    maxima, spatial = channel_maxima(model, images)
    rewrite = ChannelRewrite(dead_weights(model, maxima), spatial=spatial)
    zero_dead_weights(model, rewrite.dead)
    pairs = find_pairs(model, spatial)
    rewrite.scales = choose_scales(model, pairs, maxima)
    apply_scales(model, rewrite.scales, spatial)
    rewrite.spatial = {p.relu_output: spatial[p.relu_output] for p in pairs if p.producer in rewrite.scales}
    return rewrite
