"""The INT8 precision plan for this CPU: layers slower in INT8 stay float, the fastest plan that keeps the
held-out accuracy is written, and the model to ship is named in the model, the report and `info`.

The timings are a stand-in (per-layer costs chosen by each test, end-to-end times summed from which layers a
written model quantises), so every decision here is deterministic; only `test_profile_finds_every_layer`
runs ONNX Runtime's profiler, and it asserts which layers are found, never how long they took.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from sddcompress_export.chain import INT8_FILE, ONNX_FILE, int8_model
from sddcompress_export.metadata import INT8_PLAN_KEY, read_int8_plan
from sddcompress_export.precision_plan import (
    attribute,
    choose_plan,
    kernel_names,
    profiled_node_times,
    recommendation_line,
    weighted_layers,
)
from helpers import random_initializers, save_constructed_classifier

LAYERS = ("stem", "dw", "pw", "fc")


def _constructed_model(path) -> None:
    """stem conv -> ReLU -> depthwise conv -> ReLU -> pointwise conv -> ReLU -> global pool -> Gemm."""
    weight = random_initializers(0.3)
    nodes = [
        helper.make_node("Conv", ["input", "stem.w", "stem.b"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "dw.w", "dw.b"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "pw.w", "pw.b"], ["c3"], name="pw"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inits = [weight("stem.w", 8, 3, 3, 3), weight("stem.b", 8), weight("dw.w", 8, 1, 3, 3), weight("dw.b", 8),
             weight("pw.w", 8, 8, 1, 1), weight("pw.b", 8), weight("fc.w", 4, 8), weight("fc.b", 4)]
    save_constructed_classifier(path, nodes, inits, 3, "constructed")


def _quantised_layers(path) -> set[str]:
    """The weighted layers a written model runs in INT8 (their weights come from a DequantizeLinear)."""
    model = onnx.load(str(path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.name in LAYERS and n.input[1] in dequantized}


class StandInSpeed:
    """Per-layer microseconds as given; a model's time is the sum over its layers of the INT8 cost where it
    quantises the layer and the fp32 cost where it does not."""

    def __init__(self, fp32_us: dict, int8_us: dict) -> None:
        self.fp32_us, self.int8_us = fp32_us, int8_us
        self.timed: list[dict] = []

    def layer_costs(self, fp32_path, int8_path, images, names):
        assert set(names) == set(LAYERS)  # the plan asks about every weighted layer
        return dict(self.fp32_us), dict(self.int8_us)

    def times_ms(self, paths, images):
        self.timed.append(dict(paths))
        times = {}
        for name, path in paths.items():
            quantised = _quantised_layers(path)
            times[name] = [sum(self.int8_us[n] if n in quantised else self.fp32_us[n] for n in LAYERS) / 1000]
        return times


@pytest.fixture
def constructed(tmp_path):
    _constructed_model(tmp_path / ONNX_FILE)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    return tmp_path, images


def test_a_layer_slower_in_int8_stays_float(constructed):
    folder, images = constructed
    # dw is a depthwise conv and slower in INT8; pw is an ordinary conv, also slower here, while convs as a
    # kind (stem + pw) are not: only the per-layer candidate keeps both float, and it is the fastest
    speed = StandInSpeed(fp32_us={"stem": 10, "dw": 10, "pw": 10, "fc": 10},
                         int8_us={"stem": 5, "dw": 20, "pw": 15, "fc": 5})
    result = int8_model(folder / ONNX_FILE, folder / INT8_FILE, images, None, keep_float="auto", method="minmax",
                        max_drop=100.0, speed=speed)
    assert set(result.float_nodes) == {"dw", "pw"}
    assert _quantised_layers(folder / INT8_FILE) == {"stem", "fc"}
    plan = result.plan
    assert plan["chosen"] == "slower-layers-float" and plan["ship"] == "int8"
    assert plan["ratio"] == pytest.approx(30 / 40)
    assert "slower in INT8" in plan["why"]["pw"] and plan["why"]["dw"]
    assert {c["name"] for c in plan["candidates"]} == {"accuracy", "grouped-float", "slower-layers-float"}
    assert read_int8_plan(folder / INT8_FILE) == plan  # the plan travels inside the INT8 model
    assert set(speed.timed[0]) == {"fp32", "accuracy", "grouped-float", "slower-layers-float"}


def test_fp32_is_recommended_when_no_int8_plan_is_faster(constructed, deploy):
    folder, images = constructed
    speed = StandInSpeed(fp32_us=dict.fromkeys(LAYERS, 10), int8_us={"stem": 12, "dw": 30, "pw": 11, "fc": 10})
    result = int8_model(folder / ONNX_FILE, folder / INT8_FILE, images, None, keep_float="auto", method="minmax",
                        max_drop=100.0, speed=speed)
    plan = result.plan
    assert plan["ship"] == "fp32" and plan["ratio"] >= 1.0
    assert plan["recommendation"].startswith("ship model.onnx (fp32): no INT8 plan is faster than fp32")
    assert "\n" not in plan["recommendation"]
    # `info` shows it for the INT8 model and, read from the INT8 model beside it, for the fp32 model
    for path in (folder / INT8_FILE, folder / ONNX_FILE):
        code, out, err = deploy("info", str(path))
        assert code == 0, err
        info = json.loads(out)
        assert info["recommendation"] == plan["recommendation"]
        assert info["int8_plan"]["ship"] == "fp32" and info["int8_plan"]["from"].endswith(INT8_FILE)


def test_a_faster_plan_that_loses_accuracy_is_not_chosen():
    layers = {"stem": "Conv", "dw": "grouped Conv", "pw": "Conv", "fc": "Gemm"}
    paths = {(): "all.onnx", ("dw",): "dw.onnx", ("dw", "pw"): "dw-pw.onnx"}
    drops = {"all.onnx": 0.2, "dw.onnx": 0.3, "dw-pw.onnx": 2.0}

    class Speed:
        def layer_costs(self, *args):
            return dict.fromkeys(layers, 10.0), {"stem": 5.0, "dw": 20.0, "pw": 15.0, "fc": 5.0}

        def times_ms(self, timed, images):
            ms = {"fp32.onnx": 4.0, "all.onnx": 4.5, "dw.onnx": 3.5, "dw-pw.onnx": 3.0}
            return {name: [ms[path], ms[path] * 1.1] for name, path in timed.items()}

    plan, path = choose_plan(layers, [], "fp32.onnx", np.zeros((2, 3, 8, 8), np.float32),
                             lambda nodes: paths[tuple(sorted(nodes))], drops.get, max_drop=0.5, speed=Speed())
    assert path == "dw.onnx" and plan.chosen == "grouped-float" and plan.float_nodes == ["dw"]
    rejected = next(c for c in plan.candidates if c["name"] == "slower-layers-float")
    assert not rejected["keeps_accuracy"] and rejected["ratio"] is None  # never timed


def test_forced_float_layers_skip_the_speed_plan(constructed):
    folder, images = constructed
    speed = StandInSpeed(dict.fromkeys(LAYERS, 10), dict.fromkeys(LAYERS, 50))
    result = int8_model(folder / ONNX_FILE, folder / INT8_FILE, images, None, keep_float="none", method="minmax",
                        speed=speed)
    assert result.plan is None and result.float_nodes == [] and not speed.timed
    assert read_int8_plan(folder / INT8_FILE) is None


def test_profile_finds_every_layer(constructed):
    """ONNX Runtime's own profiler, attributed to the QDQ model's layers: every layer is found in the fp32
    and the INT8 session (the times themselves are not checked)."""
    folder, images = constructed
    int8_model(folder / ONNX_FILE, folder / INT8_FILE, images, None, keep_float="none", method="minmax")
    graph = onnx.load(str(folder / INT8_FILE))
    names = kernel_names(onnx.load(str(folder / ONNX_FILE)))
    assert set(weighted_layers(graph)) == set(LAYERS)
    assert weighted_layers(graph)["dw"] == "grouped Conv"
    fp32 = attribute(profiled_node_times(str(folder / ONNX_FILE), images[:32], runs=2),
                     {k: v["fp32"] for k, v in names.items()})
    int8 = attribute(profiled_node_times(str(folder / INT8_FILE), images[:32], runs=2),
                     {k: v["int8"] for k, v in names.items()})
    assert set(fp32) == set(int8) == set(LAYERS)
    assert all(v >= 0 for v in [*fp32.values(), *int8.values()])


def test_a_node_name_two_layers_claim_counts_for_neither():
    costs = attribute({"a": 1.0, "shared_nchwc": 5.0, "b_token_3": 2.0, "a_w_DequantizeLinear/duplicated": 0.5},
                      {"a": {"a", "shared_nchwc", "a_w_DequantizeLinear"}, "b": {"b", "shared_nchwc"}})
    assert costs == {"a": 1.5, "b": 2.0}


def test_int8_slower_in_its_fastest_calls_is_not_shipped():
    """A median that a loaded machine put ahead is not enough: the fastest calls must agree."""
    layers = {"stem": "Conv", "fc": "Gemm"}

    class Speed:
        def layer_costs(self, *args):
            return {}, {}

        def times_ms(self, timed, images):
            return {"fp32": [4.0, 4.0, 1.0], "accuracy": [3.0, 3.0, 3.0]}

    plan, _ = choose_plan(layers, [], "fp32.onnx", np.zeros((2, 3, 8, 8), np.float32), lambda nodes: "all.onnx",
                          lambda path: None, max_drop=0.5, speed=Speed())
    assert plan.ratio == pytest.approx(0.75) and plan.fastest_ratio == pytest.approx(3.0) and plan.ship == "fp32"
    assert plan.retimed  # timed twice, the same both times
    assert "fastest calls 3.00x" in plan.recommendation


def test_a_burst_that_splits_median_and_fastest_calls_is_timed_again():
    """Median at 1.2x but fastest calls at 0.7x: the chosen plan and fp32 are timed once more, and that second
    timing decides (here INT8 at 0.7x both ways is shipped); the plan records the re-timing."""
    layers = {"stem": "Conv", "fc": "Gemm"}

    class Speed:
        calls: list = []

        def layer_costs(self, *args):
            return {}, {}

        def times_ms(self, timed, images):
            self.calls.append(sorted(timed))
            if len(self.calls) == 1:
                return {"fp32": [5.0, 5.0, 10.0], "accuracy": [3.5, 6.0, 6.0]}  # a burst on INT8's calls
            return {"fp32": [5.0, 5.0, 5.0], "accuracy": [3.5, 3.5, 3.5]}

    speed = Speed()
    plan, _ = choose_plan(layers, [], "fp32.onnx", np.zeros((2, 3, 8, 8), np.float32), lambda nodes: "all.onnx",
                          lambda path: None, max_drop=0.5, speed=speed)
    assert speed.calls == [["accuracy", "fp32"], ["accuracy", "fp32"]]
    assert plan.retimed and plan.ship == "int8" and plan.ratio == pytest.approx(0.7)
    assert plan.to_dict()["retimed"] is True


def test_recommendation_is_one_line_naming_the_model():
    assert recommendation_line("int8", 0.6, "accuracy", 32).startswith("ship model.int8.onnx")
    assert recommendation_line("fp32", 1.2, "grouped-float", 32).startswith("ship model.onnx (fp32)")


def test_export_report_and_info_show_the_recommendation(exported, deploy):
    info = exported["artifacts"]["ort_int8"]
    assert info["recommendation"].startswith("ship ") and info["ship"] in ("int8", "fp32")
    assert info["plan"]["recommendation"] == info["recommendation"]
    assert set(info["plan"]["float_nodes"]) == set(info["float_nodes"])
    code, out, err = deploy("info", info["path"])
    assert code == 0, err
    assert json.loads(out)["recommendation"] == info["recommendation"]


def test_damaged_plan_metadata_is_one_line(constructed, deploy):
    folder, images = constructed
    model = onnx.load(str(folder / ONNX_FILE))
    entry = model.metadata_props.add()
    entry.key, entry.value = INT8_PLAN_KEY, "{not json"
    onnx.save(model, str(folder / "damaged.onnx"))
    code, out, err = deploy("info", str(folder / "damaged.onnx"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "damaged INT8 plan" in err
