"""Which layers of the INT8 model stay float, chosen by what runs fastest on this machine's CPU.

Post-training quantisation (`ort_quantization`) first decides the nodes that must stay float to keep
accuracy (layers, and the activations, sums and concatenations of its float regions); every candidate
keeps those. Whether the rest are worth running in INT8 depends on the CPU and on ONNX Runtime's kernels:
depthwise and grouped convolutions, layers whose signed int8 input or output ONNX Runtime cannot fuse into
`QLinearConv`, and the layout transposes around them can make an INT8 layer (or the whole model) slower
than its float counterpart. So a few candidate plans are built from the accuracy plan, each with more
layers in float:

- `accuracy`: the accuracy plan as it is (every other weighted layer INT8);
- `grouped-float`: depthwise and grouped convolutions in float as well;
- `slower-kinds-float`: every kind of layer (grouped conv, conv, Gemm, ...) whose summed INT8 time in
  ONNX Runtime's per-node profile exceeds its summed fp32 time;
- `slower-layers-float`: every single layer whose INT8 time in that profile exceeds its fp32 time.

The profile comes from ONNX Runtime itself (`SessionOptions.enable_profiling`, one Chrome-trace JSON of
per-node kernel times): the fp32 session and the INT8 session (with the CPU plan, as `OrtClassifier` runs
it) each run a few batches, and each profiled kernel is attributed to the weighted layer of the QDQ model
it came from (see `attribute`). Kernels that belong to no single layer (layout transposes, shared
activation Q/DQ) are left out of the per-layer comparison; they count in the end-to-end timing.

Every candidate that keeps the held-out accuracy is then timed end to end against fp32, interleaved call by
call at the goal batch, for a bounded time. The fastest is written as the INT8 model (of candidates within
`NEAR_TIE` of it, the one with the fewest float layers); if even it is not clearly faster than fp32
(`SHIP_BELOW`, in the median and in the fastest calls), the recommendation is to ship the fp32 model. When
the median and the fastest calls disagree, that plan and fp32 are timed once more and the second timing
decides. Being measured, the plan can differ between two quantisations of the same model where candidates
are about equally fast.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np

from .cpu_int8_plan import WEIGHTED_OPS
from .latency_ratio import BATCH, batch_of

SHIP_BELOW = 0.95  # INT8 is shipped only when its median and fastest-call times are below this fraction of fp32's
NEAR_TIE = 0.03  # candidates within 3% of the fastest count as equally fast
TIME_BUDGET_S = 3.0  # end-to-end timing of all candidates together, after warm-up
MIN_ROUNDS, MAX_ROUNDS = 10, 200
PROFILE_RUNS = 8  # batches each session runs with profiling on
CANDIDATES = ("accuracy", "grouped-float", "slower-kinds-float", "slower-layers-float")
FP32_FILE_HINT = "model.onnx"


def layer_kind(node) -> str:
    """'grouped Conv' for a depthwise or grouped convolution, else the op type."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return f"grouped {node.op_type}" if node.op_type in ("Conv", "ConvTranspose") and group > 1 else node.op_type


def weighted_layers(model) -> dict[str, str]:
    """{node name: kind} of the layers with weights, in graph order."""
    return {n.name: layer_kind(n) for n in model.graph.node if n.op_type in WEIGHTED_OPS}


def _activation_chain(graph, node) -> list[str]:
    """The layer's output tensor and, while the only reader is an activation or an Add that ONNX Runtime
    fuses into the layer, that reader's output too (the names fused kernels are called after)."""
    readers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            readers[name].append(n)
    names, tensor = [node.output[0]], node.output[0]
    for _ in range(2):
        users = readers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in ("Relu", "Clip", "Add", "Sigmoid", "HardSigmoid"):
            break
        tensor = users[0].output[0]
        names.append(tensor)
    return names


def kernel_names(model) -> dict[str, dict[str, set[str]]]:
    """For each weighted layer of the fp32 (or QDQ) model, the profiled node names that belong to it.

    {"int8": ..., "fp32": ...} name sets per layer: ONNX Runtime keeps the layer's name on the kernel it
    becomes (`QLinearConv` after a layout change gets `NAME_token_N`), the quantiser names Q/DQ nodes after
    their tensor (`TENSOR_QuantizeLinear`), and the fp32 NCHWc kernels are named after the tensor they
    write (`TENSOR_nchwc`, the output of the activation or Add fused into them)."""
    graph = model.graph
    layers = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    found = {}
    for node in layers:
        chain = _activation_chain(graph, node)
        weights = [t for t in node.input[1:] if t]
        found[node.name] = {
            "int8": {node.name} | {f"{t}_DequantizeLinear" for t in weights}
            | {f"{t}_QuantizeLinear" for t in chain},
            "fp32": {node.name} | {f"{t}_nchwc" for t in chain}}
    return found


def _base_name(event_name: str) -> str:
    """A profiled node's name without ORT's suffixes (`_token_N` from the layout transformer,
    `/duplicated` from Q/DQ duplication)."""
    name = event_name.split("/")[0]
    head, sep, tail = name.rpartition("_token_")
    return head if sep and tail.isdigit() else name


def attribute(times: dict[str, float], names: dict[str, set[str]]) -> dict[str, float]:
    """Per-layer sums of profiled node times; a node name claimed by two layers counts for neither, and a
    layer none of whose names was profiled is absent."""
    owners: dict[str, list[str]] = defaultdict(list)
    for layer, claimed in names.items():
        for name in claimed:
            owners[name].append(layer)
    costs: dict[str, float] = {}
    for event, us in times.items():
        owner = owners.get(_base_name(event), [])
        if len(owner) == 1:
            costs[owner[0]] = costs.get(owner[0], 0.0) + us
    return costs


def profiled_node_times(path: str, images: np.ndarray, runs: int = PROFILE_RUNS) -> dict[str, float]:
    """Mean microseconds per run of every kernel ONNX Runtime runs for `path` on the CPU (through the same
    runner as deployment: the INT8 CPU plan, the same optimisers), from its own profiler."""
    from .onnxruntime_runner import OrtClassifier

    with tempfile.TemporaryDirectory() as tmp:
        model = OrtClassifier(path, providers=["CPUExecutionProvider"], profile_prefix=os.path.join(tmp, "p"))
        model(images)  # the first call allocates; keep it out of the per-node sums
        start = model.end_profiling()
        os.remove(start)
        model = OrtClassifier(path, providers=["CPUExecutionProvider"], profile_prefix=os.path.join(tmp, "q"))
        for _ in range(runs + 1):
            model(images)
        with open(model.end_profiling()) as handle:
            events = json.load(handle)
    per_run: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            per_run[event["name"][: -len("_kernel_time")]].append(float(event["dur"]))
    # drop each node's first run (warm-up), average the rest
    return {name: statistics.fmean(values[1:] or values) for name, values in per_run.items()}


class SpeedSource(Protocol):
    """Where the plan search gets its timings; tests pass a stand-in."""

    def layer_costs(self, fp32_path: str, int8_path: str, images: np.ndarray,
                    names: dict[str, dict[str, set[str]]]) -> tuple[dict[str, float], dict[str, float]]:
        """(fp32 microseconds per layer, INT8 microseconds per layer); layers not found are absent."""

    def times_ms(self, paths: dict[str, str], images: np.ndarray) -> dict[str, list[float]]:
        """Milliseconds of every timed call of each model, the models interleaved call by call."""


class MeasuredSpeed:
    """Timings on this machine: ONNX Runtime's profiler per layer, interleaved calls end to end."""

    def __init__(self, budget_s: float = TIME_BUDGET_S) -> None:
        self.budget_s = budget_s

    def layer_costs(self, fp32_path, int8_path, images, names):
        fp32 = attribute(profiled_node_times(fp32_path, images), {k: v["fp32"] for k, v in names.items()})
        int8 = attribute(profiled_node_times(int8_path, images), {k: v["int8"] for k, v in names.items()})
        return fp32, int8

    def times_ms(self, paths, images):
        from .latency_ratio import ms_within_budget
        from .onnxruntime_runner import OrtClassifier

        models = {name: OrtClassifier(path, providers=["CPUExecutionProvider"]) for name, path in paths.items()}
        return ms_within_budget(models, images, self.budget_s, MIN_ROUNDS, MAX_ROUNDS)


@dataclass
class Candidate:
    name: str
    float_nodes: list[str]
    why: dict[str, str]  # layer kept float -> reason
    held_out_drop: float | None = None
    keeps_accuracy: bool = True
    median_ms: float | None = None
    ratio: float | None = None  # median time / fp32 median time at `batch`
    fastest_ratio: float | None = None  # fastest call / fp32's fastest call


@dataclass
class PrecisionPlan:
    """The plan chosen for this CPU and what to ship; written into the INT8 model's metadata."""

    chosen: str
    float_nodes: list[str]
    why: dict[str, str]
    ratio: float | None
    fastest_ratio: float | None
    batch: int
    ship: str  # "int8" or "fp32"
    recommendation: str
    candidates: list[dict] = field(default_factory=list)
    layer_costs_us: dict[str, dict] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    retimed: bool = False  # median and fastest calls disagreed; `ratio` and `fastest_ratio` are a second timing

    def to_dict(self) -> dict:
        return asdict(self)


def machine() -> dict:
    """Where the plan was measured: the plan holds for this CPU and ONNX Runtime version."""
    import onnxruntime

    return {"processor": platform.processor() or platform.machine(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__}


def recommendation_line(ship: str, ratio: float | None, chosen: str, batch: int,
                        fastest_ratio: float | None = None) -> str:
    """One line naming the model to ship on this CPU."""
    if ratio is None:
        return "ship model.int8.onnx (INT8 was not timed against fp32)"
    if ship == "int8":
        return (f"ship model.int8.onnx: INT8 plan '{chosen}' takes {ratio:.2f}x the fp32 time at batch {batch} "
                "on this CPU")
    fastest = "" if fastest_ratio is None else f", fastest calls {fastest_ratio:.2f}x"
    return (f"ship {FP32_FILE_HINT} (fp32): no INT8 plan is faster than fp32 on this CPU (fastest, '{chosen}', "
            f"takes {ratio:.2f}x the fp32 time at batch {batch}{fastest})")


def candidate_plans(layers: dict[str, str], accuracy_float: list[str], fp32_us: dict[str, float],
                    int8_us: dict[str, float]) -> list[Candidate]:
    """The candidate plans (see the module docstring), without duplicates, in order of CANDIDATES."""
    base_why = {name: "accuracy" for name in accuracy_float}
    compared = [n for n in layers if n in fp32_us and n in int8_us and n not in base_why]
    kinds_int8, kinds_fp32 = defaultdict(float), defaultdict(float)
    for name in compared:
        kinds_int8[layers[name]] += int8_us[name]
        kinds_fp32[layers[name]] += fp32_us[name]
    slower_kinds = {k for k in kinds_int8 if kinds_int8[k] > kinds_fp32[k]}
    extra = {
        "grouped-float": {n: "depthwise/grouped convolution" for n, k in layers.items() if k.startswith("grouped ")},
        "slower-kinds-float": {n: f"{layers[n]} layers are slower in INT8 here "
                                  f"({kinds_int8[layers[n]]:.0f} vs {kinds_fp32[layers[n]]:.0f} us)"
                               for n in compared if layers[n] in slower_kinds},
        "slower-layers-float": {n: f"slower in INT8 here ({int8_us[n]:.0f} vs {fp32_us[n]:.0f} us)"
                                for n in compared if int8_us[n] > fp32_us[n]},
    }
    plans = [Candidate("accuracy", list(accuracy_float), dict(base_why))]
    seen = {frozenset(accuracy_float)}
    for name in CANDIDATES[1:]:
        added = {n: r for n, r in extra[name].items() if n not in base_why}
        why = {**base_why, **added}
        nodes = list(accuracy_float) + [n for n in layers if n in added]
        if frozenset(nodes) in seen or all(n in why for n in layers):
            continue  # the same plan, or no layer left in INT8
        seen.add(frozenset(nodes))
        plans.append(Candidate(name, nodes, why))
    return plans


def _ratios_to_fp32(times: dict[str, list[float]], name: str) -> tuple[float, float]:
    """`name`'s median time and fastest call, each over fp32's, from one interleaved timing."""
    return (statistics.median(times[name]) / statistics.median(times["fp32"]),
            min(times[name]) / min(times["fp32"]))


def choose_plan(layers: dict[str, str], accuracy_float: list[str], fp32_path: str, images: np.ndarray,
                quantize: Callable[[list[str]], str], held_out_drop: Callable[[str], float | None],
                max_drop: float, speed: SpeedSource, batch: int = BATCH,
                names: dict[str, dict[str, set[str]]] | None = None) -> tuple[PrecisionPlan, str]:
    """Build, score and time the candidate plans; returns (the plan, the path of the chosen INT8 model).

    `quantize(float_nodes)` writes an INT8 model with those nodes in float and returns its path;
    `held_out_drop(path)` scores it on the held-out calibration images (None when there are none). A
    candidate keeps accuracy when its drop is within `max_drop`, or no worse than the accuracy plan's
    when that one could not meet it.
    """
    x = batch_of(images, batch)
    base_path = quantize(accuracy_float)
    fp32_us, int8_us = speed.layer_costs(fp32_path, base_path, x, names or {})
    plans = candidate_plans(layers, accuracy_float, fp32_us, int8_us)
    paths = {plans[0].name: base_path}
    base_drop = held_out_drop(base_path)
    for plan in plans:
        if plan.name not in paths:
            paths[plan.name] = quantize(plan.float_nodes)
        plan.held_out_drop = base_drop if plan.name == "accuracy" else held_out_drop(paths[plan.name])
        limit = max(max_drop, base_drop) if base_drop is not None else max_drop
        plan.keeps_accuracy = plan.held_out_drop is None or plan.held_out_drop <= limit + 1e-9
    kept = [p for p in plans if p.keeps_accuracy] or plans[:1]
    times = speed.times_ms({"fp32": fp32_path, **{p.name: paths[p.name] for p in kept}}, x)
    for plan in kept:
        plan.median_ms = statistics.median(times[plan.name])
        plan.ratio, plan.fastest_ratio = _ratios_to_fp32(times, plan.name)
    # the first candidate (fewest float layers) within NEAR_TIE of the fastest: a plan is not swapped for
    # one that only the noise of the timing puts ahead, and more INT8 layers are kept for the same speed
    fastest = min(p.median_ms for p in kept)
    best = next(p for p in kept if p.median_ms <= fastest * (1 + NEAR_TIE))
    # a loaded machine slows some calls of one model and not the other: INT8 must be faster both in the
    # median and in the fastest calls (its speed when nothing interfered). Where the two disagree, a burst
    # may have hit one model's calls: the chosen plan and fp32 are timed once more, and that timing decides.
    ratio, fastest_ratio = best.ratio, best.fastest_ratio
    retimed = (ratio < SHIP_BELOW) != (fastest_ratio < SHIP_BELOW)
    if retimed:
        again = speed.times_ms({"fp32": fp32_path, best.name: paths[best.name]}, x)
        ratio, fastest_ratio = _ratios_to_fp32(again, best.name)
    ship = "int8" if max(ratio, fastest_ratio) < SHIP_BELOW else "fp32"
    costs = {n: {"kind": layers[n], "fp32_us": fp32_us.get(n), "int8_us": int8_us.get(n)} for n in layers}
    plan = PrecisionPlan(best.name, best.float_nodes, best.why, ratio, fastest_ratio, batch, ship,
                         recommendation_line(ship, ratio, best.name, batch, fastest_ratio),
                         [asdict(p) for p in plans], costs, machine(), retimed)
    return plan, paths[best.name]
