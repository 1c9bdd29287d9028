"""The float-graph rewrite before INT8 calibration (export/channel_balance.py), on a constructed graph:
Conv P -> Relu -> channel shuffle (Reshape/Transpose/Reshape) -> depthwise Conv C, whose ReLU channels span
four orders of magnitude and one of which never fires while C reads it with huge weights and a bias of 3."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sddcompress_export.channel_balance import ChannelRewrite, find_pairs, rewrite_for_int8
from sddcompress_export.ort_quantization import _Quantizer

CHANNELS, DEAD = 6, 5  # ReLU output channels; the one that never fires
SHUFFLE = np.array([0, 3, 1, 4, 2, 5])  # C's input j reads ReLU channel SHUFFLE[j] (2 groups of 3, transposed)


def _graph(shuffle: bool = True):
    rng = np.random.default_rng(0)
    w1 = rng.uniform(0.5, 1.0, (CHANNELS, 4, 1, 1)).astype(np.float32)
    spread = np.array([100.0, 0.01, 1.0, 10.0, 0.1, 1.0], np.float32)
    w1 *= spread[:, None, None, None]
    w1[DEAD] = -1.0  # inputs are >= 0: this channel's pre-activation is always negative
    b1 = np.array([0.1, 0.0, -0.2, 0.3, 0.0, -10.0], np.float32)
    w2 = rng.uniform(-1.0, 1.0, (CHANNELS, 1, 3, 3)).astype(np.float32)
    w2 /= spread[SHUFFLE if shuffle else slice(None)][:, None, None, None]  # C's outputs of one size again
    reads_dead = int(np.flatnonzero(SHUFFLE == DEAD)[0]) if shuffle else DEAD
    w2[reads_dead] = 1e5  # a BatchNorm folded over a channel that never fired
    b2 = np.zeros(CHANNELS, np.float32)
    b2[reads_dead] = 3.0
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["p"], name="P"),
             helper.make_node("Relu", ["p"], ["r"], name="relu")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    tensor = "r"
    if shuffle:
        nodes += [helper.make_node("Reshape", ["r", "s5"], ["v"], name="view"),
                  helper.make_node("Transpose", ["v"], ["t"], perm=[0, 2, 1, 3, 4], name="transpose"),
                  helper.make_node("Reshape", ["t", "s4"], ["u"], name="unview")]
        inits += [numpy_helper.from_array(np.array([-1, 2, 3, 6, 6], np.int64), "s5"),
                  numpy_helper.from_array(np.array([-1, CHANNELS, 6, 6], np.int64), "s4")]
        tensor = "u"
    nodes.append(helper.make_node("Conv", [tensor, "w2", "b2"], ["y"], name="C", group=CHANNELS, pads=[1, 1, 1, 1],
                                  kernel_shape=[3, 3]))
    graph = helper.make_graph(nodes, "shuffled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, CHANNELS, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), reads_dead


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 4, 6, 6)).astype(np.float32)


def _run(model, x: np.ndarray, output: str = "y") -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {"x": x})[0]


def _relu_maxima(model, x: np.ndarray) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info("r"))
    return _run(probe, x, "r").max(axis=(0, 2, 3))


def test_the_rewrite_keeps_the_float_model_and_evens_out_the_relu_channels():
    model, reads_dead = _graph()
    before, calib, fresh = onnx.load_from_string(model.SerializeToString()), _images(64, 1), _images(32, 2)
    spread = _relu_maxima(model, calib)
    assert spread[:DEAD].max() / spread[:DEAD].min() > 1e3 and spread[DEAD] == 0
    rewrite = rewrite_for_int8(model, calib)
    assert rewrite.dead == {"C": [reads_dead]} and list(rewrite.scales) == ["P"]
    assert rewrite.summary() == {"dead_channels_zeroed": 1, "layers_with_dead_channels": 1, "pairs_equalised": 1}
    for x in (calib, fresh):  # the dead channel cannot fire: equal on any image
        np.testing.assert_allclose(_run(model, x), _run(before, x), rtol=1e-4, atol=1e-3)
    even = _relu_maxima(model, calib)
    np.testing.assert_allclose(even[:DEAD], even[0], rtol=1e-5)  # depthwise C: one range for every firing channel
    assert even[DEAD] == 0
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    assert not w2[reads_dead].any()


def test_the_rewrite_replays_bit_for_bit_on_a_fresh_copy():
    model, _ = _graph()
    fresh = onnx.load_from_string(model.SerializeToString())
    rewrite = rewrite_for_int8(model, _images(64, 1))
    ChannelRewrite(rewrite.dead, rewrite.scales, rewrite.spatial).apply(fresh)
    for a, b in zip(model.graph.initializer, fresh.graph.initializer):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    unrelated, _ = _graph(shuffle=False)
    with pytest.raises(ValueError, match="channel rewrite"):  # another graph: one line, not a silent half-rewrite
        ChannelRewrite({"missing": [0]}).apply(unrelated)


def test_int8_keeps_the_constant_channel_and_the_small_channels_after_the_rewrite(tmp_path):
    """Min-max INT8 as written: without the rewrite the bias 3 is rounded on the huge weight's grid (to 0) and the
    small channels get no steps; with it both come through."""
    model, reads_dead = _graph()
    calib, fresh = _images(64, 1), _images(32, 2)
    reference = _run(model, fresh)
    errors = {}
    for name in ("as exported", "rewritten"):
        if name == "rewritten":
            rewrite_for_int8(model, calib)
        path, workdir = tmp_path / f"{name}.onnx", tmp_path / name
        workdir.mkdir()
        onnx.save(model, path)
        int8 = onnx.load(_Quantizer(str(path), calib, str(workdir), 32).quantize("minmax"))
        y = _run(int8, fresh)
        step = float(numpy_helper.to_array(next(i for i in int8.graph.initializer if i.name == "y_scale")))
        errors[name] = (np.abs(y[:, reads_dead] - reference[:, reads_dead]).max(), step,
                        np.abs(y - reference).mean() / np.abs(reference).mean())
    lost, _, before = errors["as exported"]
    kept, step, after = errors["rewritten"]
    assert lost > 2.9 and kept <= step  # the constant 3 lost entirely, then within one step of the output's grid
    assert after < before / 10


def test_only_plain_channel_permutations_and_single_readers_are_paired():
    model, _ = _graph()
    spatial = {"r": (6, 6)}
    assert [(p.producer, p.consumer, list(p.permutation)) for p in find_pairs(model, spatial)] == \
        [("P", "C", list(SHUFFLE))]
    flattening = onnx.load_from_string(model.SerializeToString())  # the shuffle now mixes channels with pixels
    next(i for i in flattening.graph.initializer if i.name == "s5").CopyFrom(
        numpy_helper.from_array(np.array([-1, 2, 3, 36, 1], np.int64), "s5"))
    next(i for i in flattening.graph.initializer if i.name == "s4").CopyFrom(
        numpy_helper.from_array(np.array([-1, 36, 6, 1], np.int64), "s4"))
    assert find_pairs(flattening, spatial) == []
    shared = onnx.load_from_string(model.SerializeToString())  # the ReLU output is read twice
    shared.graph.node.append(helper.make_node("Neg", ["r"], ["n"], name="other"))
    assert find_pairs(shared, spatial) == []
    exposed = onnx.load_from_string(model.SerializeToString())  # the ReLU output is also a model output
    exposed.graph.output.append(helper.make_empty_tensor_value_info("r"))
    assert find_pairs(exposed, spatial) == []


def test_the_int8_stage_calibrates_the_rewritten_graph_and_reports_it(tmp_path):
    from sddcompress_export.ort_quantization import quantize_int8

    model, reads_dead = _graph()
    onnx.save(model, tmp_path / "model.onnx")
    said: list[str] = []
    result = quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", _images(64, 1), method="minmax",
                           keep_float="none", echo=said.append)
    assert result.to_report()["rewrite"] == {"dead_channels_zeroed": 1, "layers_with_dead_channels": 1,
                                             "pairs_equalised": 1}
    assert any("weights reading 1 channels that never fired set to 0, 1 Conv -> ReLU -> Conv pairs" in s for s in said)
    fresh = _images(32, 2)
    y = _run(onnx.load(tmp_path / "model.int8.onnx"), fresh)
    assert np.abs(y[:, reads_dead] - 3.0).max() < 0.1


def test_dead_channels_are_zeroed_only_where_they_set_the_weight_scale():
    """A dense 1x1 conv reading channels 0-3, of which 1 and 2 never fire: only channel 2's weights are the largest
    of some output row, so only they go (channel 1's leave every row's scale as it is)."""
    from sddcompress_export.channel_balance import dead_weights

    weight = np.ones((3, 4, 1, 1), np.float32)
    weight[:, 1] = 0.5
    weight[1, 2] = 50.0
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="dense")], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 2, 2])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert dead_weights(model, {"x": np.array([1.0, 0.0, 0.0, 2.0])}) == {"dense": [2]}
    assert dead_weights(model, {"x": np.array([1.0, 0.1, 0.1, 2.0])}) == {}
    model.graph.node.append(helper.make_node("Conv", ["z", "w"], ["v"], name="shared"))  # the weights read twice
    assert dead_weights(model, {"x": np.array([1.0, 0.0, 0.0, 2.0])}) == {}
