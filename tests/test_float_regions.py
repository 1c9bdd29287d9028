"""INT8 error that lives in activations, not weights: the accuracy pass measures a layer with its ReLU and
keeps whole tensors float (a unit with every unit that writes or reads its tensors).

The constructed model concatenates a branch of small activations (values of a few units) with a branch that
sits near 4000, so the concatenation's int8 step (about 32) wipes out the small branch; a 1x1 conv after it
reads only the small channels. No set of weighted layers in float removes the Concat's own Q/DQ.
"""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sddcompress_export.float_regions import FloatRegions
from sddcompress_export.ort_quantization import _Quantizer, quantize_int8, weighted_nodes
from sddcompress_export.precision_plan import candidate_plans
from helpers import random_initializers, save_constructed_classifier


def _concat_model(path) -> None:
    """small: conv -> ReLU; big: conv (bias 4000) -> ReLU -> average pool; concat -> ReLU -> 1x1 conv reading
    the small channels only -> global pool -> classifier."""
    weight = random_initializers(0.5, seed=2)
    mix = np.zeros((6, 8, 1, 1), np.float32)
    mix[:, :6, 0, 0] = np.random.default_rng(3).standard_normal((6, 6))
    small_bias = np.zeros(6, np.float32)
    small_bias[5] = -60.0  # a channel that never fires: its pre-activation reaches far below 0
    inits = [weight("small.w", 6, 3, 3, 3), numpy_helper.from_array(small_bias, "small.b"), weight("big.w", 2, 3, 1, 1),
             numpy_helper.from_array(np.full(2, 4000.0, np.float32), "big.b"),
             numpy_helper.from_array(mix, "mix.w"), weight("mix.b", 6), weight("fc.w", 4, 6),
             numpy_helper.from_array(np.zeros(4, np.float32), "fc.b")]
    nodes = [
        helper.make_node("Conv", ["input", "small.w", "small.b"], ["s"], name="small", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s_act"], name="small_relu"),
        helper.make_node("Conv", ["input", "big.w", "big.b"], ["b"], name="big"),
        helper.make_node("Relu", ["b"], ["b_act"], name="big_relu"),
        helper.make_node("AveragePool", ["b_act"], ["b_pool"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1]),
        helper.make_node("Concat", ["s_act", "b_pool"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["cat_act"], name="cat_relu"),
        helper.make_node("Conv", ["cat_act", "mix.w", "mix.b"], ["m"], name="mix"),
        helper.make_node("Relu", ["m"], ["m_act"], name="mix_relu"),
        helper.make_node("GlobalAveragePool", ["m_act"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    save_constructed_classifier(path, nodes, inits, 3, "concat")


@pytest.fixture
def concat_model(tmp_path):
    path = tmp_path / "model.onnx"
    _concat_model(path)
    rng = np.random.default_rng(4)  # each image its own channel offsets: the pooled features differ by image
    images = rng.standard_normal((96, 3, 8, 8)) + 2.0 * rng.standard_normal((96, 3, 1, 1))
    return path, images.astype(np.float32)


def _quantised_tensors(path) -> set[str]:
    """The float tensors a written Q/DQ model quantises (the inputs of its activation QuantizeLinear nodes)."""
    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights}


def _quantiser(model_path, images, workdir):
    """The INT8 stage's own quantiser (min-max over every image): `.quantize("minmax", float_nodes, only)`
    writes a variant and returns its path."""
    return _Quantizer(str(model_path), images, str(workdir), 32)


def test_units_pair_a_layer_with_its_activation_and_regions_cover_every_tensor(concat_model):
    path, _ = concat_model
    regions = FloatRegions(onnx.load(str(path)))
    assert regions.units[:5] == [["small", "small_relu"], ["big", "big_relu"], ["pool"], ["cat", "cat_relu"],
                                 ["mix", "mix_relu"]]
    cat = regions.units.index(["cat", "cat_relu"])
    # the concatenation's inputs come from the small branch and the pool; its ReLU's output goes to mix
    assert regions.region(cat) == ["small", "small_relu", "pool", "cat", "cat_relu", "mix", "mix_relu"]
    # the pools and the flatten pass 8-bit values through: quantised alone they would get no Q/DQ
    assert [regions.units[k][0] for k in regions.measured] == ["small", "big", "cat", "mix", "gap", "fc"]


def test_a_node_without_a_name_is_in_no_unit(concat_model):
    model = onnx.load(str(concat_model[0]))
    for node in model.graph.node:
        if node.name in ("gap", "flatten"):
            node.name = ""
    regions = FloatRegions(model)
    assert all(name for unit in regions.units for name in unit)
    assert ["fc"] in regions.units and ["gap"] not in regions.units
    assert "" not in regions.region(regions.units.index(["mix", "mix_relu"]))


def test_the_quantisers_graph_names_every_node(concat_model, tmp_path):
    """ONNX Runtime's pre-processing inlines functions (HardSwish) into nodes without names; the prepared
    graph names them, so they can be measured and kept float like any other node."""
    from sddcompress_export.ort_quantization import prepared_model

    model = onnx.load(str(concat_model[0]))
    for node in model.graph.node:
        if node.name in ("gap", "flatten"):
            node.name = ""
        if node.name == "fc":
            node.name = "Flatten_flat"  # the name the unnamed flatten would get
        if node.name == "mix_relu":
            node.name = "mix"  # a name an earlier node has
    onnx.save(model, str(tmp_path / "unnamed.onnx"))
    with pytest.raises(ValueError, match="node names repeat"):
        FloatRegions(model)
    prepared_model(tmp_path / "unnamed.onnx", tmp_path / "prepared.onnx")
    names = [n.name for n in onnx.load(str(tmp_path / "prepared.onnx")).graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert {"GlobalAveragePool_pooled", "Flatten_flat_", "Relu_m_act", "mix", "Flatten_flat"} <= set(names)
    assert ["Flatten_flat_"] in FloatRegions(onnx.load(str(tmp_path / "prepared.onnx"))).units


def test_a_float_region_leaves_every_tensor_of_its_unit_unquantised(concat_model, tmp_path):
    path, images = concat_model
    regions = FloatRegions(onnx.load(str(path)))
    cat = regions.units.index(["cat", "cat_relu"])
    touched = {"s_act", "b_pool", "cat", "cat_act"}
    quantiser = _quantiser(path, images, tmp_path)
    assert _quantised_tensors(quantiser.quantize("minmax", regions.units[cat])) & touched  # neighbours quantise them
    quantised = _quantised_tensors(quantiser.quantize("minmax", regions.region(cat)))
    assert not quantised & touched
    assert "m_act" in quantised or "pooled" in quantised  # the rest of the model is still INT8


def test_a_layer_is_measured_with_its_relu(concat_model, tmp_path):
    """Quantised alone, the big conv's output is quantised on its own range (about 4000); quantised with its
    ReLU, on the ReLU's (the same here: all positive). The small conv's pre-activation reaches far below 0
    (a channel that never fires): alone it is quantised on that range, with its ReLU on the ReLU's."""
    path, images = concat_model
    quantiser = _quantiser(path, images, tmp_path)

    def conv_output_scale(only) -> float:
        model = onnx.load(quantiser.quantize("minmax", only=only))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "s")
        return float(inits[q.input[1]])

    ref = onnx.load(str(path))
    value = onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None)
    ref.graph.output.append(value)
    import onnxruntime as ort

    pre = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["s"], {"input": images})[0]
    assert pre.min() < -2 * pre.max() < 0  # negative pre-activations the ReLU clips
    alone, unit = conv_output_scale(["small"]), conv_output_scale(["small", "small_relu"])
    assert unit == pytest.approx(pre.max() / 127, rel=1e-5)
    assert alone == pytest.approx(max(pre.max(), -pre.min()) / 127, rel=1e-5) and alone > unit


class EqualSpeed:
    """Every plan as fast as fp32: the speed step keeps what the accuracy pass chose."""

    def layer_costs(self, fp32_path, int8_path, images, names):
        return {}, {}

    def times_ms(self, paths, images):
        return {name: [1.0] for name in paths}


def test_accuracy_pass_keeps_the_concatenation_float(concat_model, tmp_path):
    """Every layer INT8 loses most of the held-out agreement; the first conv and classifier in float do not
    help; the float region of the most sensitive unit (the concatenation) does. Layers alone could not:
    the Concat quantises its own output."""
    path, images = concat_model
    result = quantize_int8(path, tmp_path / "model.int8.onnx", images, None, method="minmax", speed=EqualSpeed())
    all_int8 = result.candidates["minmax"]["held_out_drop"]
    assert all_int8 > 10.0
    assert result.held_out_drop() <= 0.5
    assert {"cat", "cat_relu"} <= set(result.float_nodes)
    assert not _quantised_tensors(result.path) & {"cat", "cat_act"}
    assert "float regions" in result.float_reason
    weighted = set(weighted_nodes(onnx.load(str(path))))
    layers_float = _quantiser(path, images, tmp_path).quantize("minmax", sorted(weighted))
    assert "cat" in _quantised_tensors(layers_float)  # every layer float still quantises it


def test_units_are_ranked_on_a_slice_and_every_choice_is_scored_on_all_held_out_images(concat_model, tmp_path,
                                                                                          monkeypatch):
    """400 training images: 256 calibrate, 144 are held out. The sensitivity pass ranks units by logit error on
    the first SENSITIVITY_IMAGES of them (one score per unit); the calibration, the float regions and the
    plans are scored on all 144."""
    import sddcompress_export.ort_quantization as quantization

    path, _ = concat_model
    rng = np.random.default_rng(5)
    images = (rng.standard_normal((400, 3, 8, 8)) + 2.0 * rng.standard_normal((400, 3, 1, 1))).astype(np.float32)
    scored = []
    real = quantization.held_out_score

    def recording(model_path, held, *args, **kwargs):
        scored.append(len(held))
        return real(model_path, held, *args, **kwargs)

    monkeypatch.setattr(quantization, "held_out_score", recording)
    result = quantize_int8(path, tmp_path / "model.int8.onnx", images, None, method="minmax", speed=EqualSpeed())
    assert (result.calibration_images, result.held_out_images) == (256, 144)
    assert len(result.sensitivity) == scored.count(quantization.SENSITIVITY_IMAGES) > 0
    assert set(scored) == {quantization.SENSITIVITY_IMAGES, 144}
    assert {"cat", "cat_relu"} <= set(result.float_nodes)


def test_speed_candidates_keep_the_accuracy_plans_non_layer_nodes():
    layers = {"stem": "Conv", "dw": "grouped Conv", "pw": "Conv", "fc": "Gemm"}
    accuracy = ["stem", "stem_relu", "cat", "cat_relu"]
    plans = candidate_plans(layers, accuracy, {"stem": 10, "dw": 10, "pw": 10, "fc": 10},
                            {"stem": 5, "dw": 20, "pw": 15, "fc": 5})
    assert [p.name for p in plans] == ["accuracy", "grouped-float", "slower-kinds-float"]
    for plan in plans:
        assert set(accuracy) <= set(plan.float_nodes)
    assert set(plans[2].float_nodes) == set(accuracy) | {"dw", "pw"}
