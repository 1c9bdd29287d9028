"""Static INT8 quantisation of an ONNX classifier with ONNX Runtime's tools: one artefact for ORT and TensorRT.

The model is QDQ with symmetric signed 8-bit activations and weights (every zero point is 0, as TensorRT's
explicit quantisation requires) and per-output-channel weight scales. Calibration uses training images only
(the tensor file's `calib_images`); they are split into a calibration slice (at most 256) and a held-out
slice (the rest; `split_calibration`), and every decision is scored on the held-out slice, never on the
validation images a report scores. A score there is the lower of the top-1 counted and the top-1 expected
from every pairing of one image's fp32 margin with another image's change of margin under INT8
(`HeldOutScore`), which sees a drop of a fraction of one image:

- the calibration method (`minmax`, `percentile`, `entropy`, or `auto`: each is tried, the best held-out
  score wins, ties go to agreement with fp32 and then to the smaller logit error);
- which layers stay in float (`keep_float`): `auto` keeps all layers quantised if that already meets
  `max_drop` on the held-out slice, else tries keeping the first conv and the classifier in float, else runs
  a sensitivity pass over units (`float_regions`: each node ONNX Runtime quantises on its own, with its ReLU;
  quantise one unit at a time, rank by logit error on the first `SENSITIVITY_IMAGES` held-out images) and
  keeps the float regions of the most sensitive units (the unit and every unit writing or reading its
  tensors) in float one region more at a time, until the held-out drop is within `max_drop` or a quarter of
  the measured units have been tried; a set with more float nodes is kept only if it wins back held-out
  top-1 or agreement.
  Then, for speed on this machine's CPU (`precision_plan`), layers that are slower in INT8 here (depthwise
  and grouped convolutions, kinds or single layers that ONNX Runtime's profiler finds slower) are tried in
  float too; the fastest plan that keeps the held-out accuracy is written, and the plan with its
  recommendation (INT8, or fp32 where no INT8 plan is faster) goes into the model's metadata.

Each method is calibrated once (ONNX Runtime's calibration cache), on as many images at a time as fit a
memory budget (`calibration_chunks`); later variants only re-quantise.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .calibration_chunks import activation_bytes_per_image, calibration_batches, chunked_reader, images_fitting
from .channel_balance import ChannelRewrite, rewrite_for_int8
from .classifier_metrics import predict_all
from .atomic import atomic_write
from .cpu_int8_plan import WEIGHTED_OPS
from .defaults import DEFAULTS
from .errors import DeployError
from .metadata import INT8_PLAN_KEY, load_onnx
from .onnxruntime_runner import OrtClassifier

METHODS = ("minmax", "percentile", "entropy")
CALIBRATE_AT_MOST = 256  # training images ONNX Runtime calibrates on; the rest are held out to score choices
HELD_OUT_FRACTION = 0.25  # of the training images, held out however few there are
SENSITIVITY_IMAGES = 128  # held-out images the sensitivity pass ranks units on (by logit error, not top-1)
SCORING_BATCH = 64  # images a held-out score runs at once, fewer where their activations would pass CHUNK_BYTES
CALIBRATION_CHOICES = ("auto",) + METHODS
# The channel axis of a quantised weight where ONNX Runtime's default (axis 1) does not fit: a BatchNorm that
# follows no conv (a pre-activation block's) keeps its scale, one value per channel (rank 1).
PER_CHANNEL_AXES = {"BatchNormalization": 0}


@dataclass
class HeldOutScore:
    """An INT8 variant on the held-out calibration images, against the fp32 model on the same images.

    Counted on 768 held-out images (the default), one image is 0.13 points; on 64, 1.56 points, and a model
    that changes 1% of its predictions counts as lossless most of the time. So each score also holds the
    *expected* top-1 (`expected_drop`): every image's fp32 margin paired with every image's INT8 change of
    margin, n x n pairs. The score that
    decides is the lower of the counted and the expected one (`accuracy`)."""

    top1: float | None  # None when the tensor file has no calibration labels
    agreement: float  # % of images where INT8 and fp32 predict the same class
    logit_mse: float
    as_written: bool = False  # the file's Q/DQ as written scored lower than the CPU plan (and this is that score)
    expected_top1: float | None = None  # with labels
    expected_agreement: float | None = None
    fp32_top1: float | None = None  # the fp32 model's on the same images, with labels

    def accuracy(self) -> float:
        """Top-1 (agreement with fp32 without labels): the lower of the counted and the expected value."""
        counted, expected = ((self.top1, self.expected_top1) if self.top1 is not None
                             else (self.agreement, self.expected_agreement))
        return counted if expected is None else min(counted, expected)

    def drop(self) -> float:
        """Points below the fp32 model: top-1 with labels, agreement with fp32 without."""
        reference = self.fp32_top1 if self.top1 is not None and self.fp32_top1 is not None else 100.0
        return reference - self.accuracy()

    def key(self) -> tuple:
        """Larger is better."""
        return (self.accuracy(), self.agreement, -self.logit_mse)


@dataclass
class QuantizationResult:
    path: Path
    method: str
    float_nodes: list[str]
    float_reason: str
    calibration_images: int
    held_out_images: int
    held_out_fp32_top1: float | None
    held_out: HeldOutScore | None
    candidates: dict[str, dict] = field(default_factory=dict)
    sensitivity: list[dict] = field(default_factory=list)
    plan: dict | None = None  # `PrecisionPlan.to_dict()` when the layers were chosen for speed as well
    ranges: str | None = field(default=None, repr=False)  # the chosen calibration's activation ranges (ORT's cache)
    rewrite: ChannelRewrite = field(default_factory=ChannelRewrite, repr=False)  # the float graph's changes

    def held_out_drop(self) -> float | None:
        return None if self.held_out is None else self.held_out.drop()

    def to_report(self) -> dict:
        values = asdict(self)
        del values["ranges"]
        values["rewrite"] = self.rewrite.summary()
        values["path"] = str(self.path)
        values["held_out_drop"] = self.held_out_drop()
        return values


def predict_cpu(path: str, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits as the export report will score them: through the same ONNX Runtime runner (CPU plan)."""
    return predict_all(OrtClassifier(path, providers=["CPUExecutionProvider"]), images, batch_size)


def scoring_batch(fp32_path: str | Path) -> int:
    """Images per batch for scoring a model of this graph on held-out images: `SCORING_BATCH`, fewer where
    their float activations would pass the calibration chunks' budget (a MobileNetV2 at 224 px: 20). Each
    score runs two sessions (`held_out_score`), and at 224 px a session's memory grows with its batch."""
    return min(SCORING_BATCH, images_fitting(activation_bytes_per_image(load_onnx(fp32_path))))


def label_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each prediction's logit of its label minus its largest other logit (> 0: predicted right); classes on axis
    1, as `argmax(1)` reads them, any further axes (a dense output) flattened with the batch."""
    logits = np.moveaxis(np.asarray(logits, np.float64), 1, -1).reshape(-1, np.shape(logits)[1])
    labels = np.asarray(labels).reshape(-1)
    rows = np.arange(len(logits))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - others.max(1)


def expected_drop(ref_margins: np.ndarray, changes: np.ndarray) -> float:
    """Points lost, expected over the pairs (i, j): image i, right when its fp32 margin is > 0, takes the change
    quantisation made to image j's margin. That is the counted drop's expectation when the change does not
    depend on the image, and it resolves drops far below one image in n. No change: exactly 0."""
    ordered = np.sort(ref_margins)
    staying = len(ordered) - np.searchsorted(ordered, -np.asarray(changes), side="right")
    return float(100.0 * ((ordered > 0).mean() - staying.mean() / len(ordered)))


def score_against(logits: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> HeldOutScore:
    pred, ref_pred = logits.argmax(1), ref.argmax(1)
    mse, agreement = float(((logits - ref) ** 2).mean()), float(100.0 * (pred == ref_pred).mean())

    def expected_loss(truth: np.ndarray) -> float:
        ref_margins = label_margins(ref, truth)
        return expected_drop(ref_margins, label_margins(logits, truth) - ref_margins)

    expected_agreement = 100.0 - expected_loss(ref_pred)
    if labels is None:
        return HeldOutScore(None, agreement, mse, expected_agreement=expected_agreement)
    fp32_top1 = float(100.0 * (ref_pred == labels).mean())
    return HeldOutScore(float(100.0 * (pred == labels).mean()), agreement, mse,
                        expected_top1=fp32_top1 - expected_loss(labels), expected_agreement=expected_agreement,
                        fp32_top1=fp32_top1)


def held_out_score(path: str, images: np.ndarray, ref: np.ndarray, labels: np.ndarray | None,
                   batch_size: int = 64) -> HeldOutScore:
    """An INT8 file's score against the fp32 logits `ref`: the lower of its scores as ONNX Runtime runs it on
    this CPU (the CPU plan) and with its Q/DQ as written (how TensorRT and other runtimes round and clip).

    The CPU plan's uint8 ReLU outputs reach past the calibrated range where the file clips, so a calibration or
    a set of float layers can look fine on this CPU and fail elsewhere; every INT8 choice is scored this way so
    that the one file holds on both."""
    plan = OrtClassifier(path, providers=["CPUExecutionProvider"])
    score = score_against(predict_all(plan, images, batch_size), ref, labels)
    written = plan.as_written()
    if written is not None:
        plain = score_against(predict_all(written, images, batch_size), ref, labels)
        if plain.key() < score.key():
            score = replace(plain, as_written=True)
    return score


def wins_back_accuracy(candidate: HeldOutScore, best: HeldOutScore) -> bool:
    """Whether one more layer in float pays for its cost: it must raise the held-out accuracy (`accuracy`: counted
    or expected top-1) or the agreement with fp32.

    A smaller logit error alone does not: it need not change a prediction, and every float layer splits the
    integer graph (slower in ONNX Runtime and TensorRT alike)."""
    return candidate.key()[:2] > best.key()[:2]


def weighted_nodes(model) -> list[str]:
    """Names of the nodes with weights to quantise (Conv/Gemm/MatMul), in graph order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def end_nodes(model) -> list[str]:
    """The first weighted node (the stem conv) and the last one (the classifier)."""
    names = weighted_nodes(model)
    return sorted({names[0], names[-1]}, key=names.index) if names else []


def split_calibration(images: np.ndarray, labels: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images to calibrate on, held-out images, held-out labels).

    The first images calibrate: three quarters of them, at most `CALIBRATE_AT_MOST`; every later one is held
    out. Calibration needs a few hundred images, while a decision scored on n held-out images is only as good
    as n allows, so images beyond the calibration's go to scoring (1024: 256 and 768). Below 8, all calibrate."""
    n = len(images)
    cut = n if n < 8 else min(n - int(round(n * HELD_OUT_FRACTION)), CALIBRATE_AT_MOST)
    return images[:cut], images[cut:], (None if labels is None else labels[cut:])


class _Quantizer:
    """Calibrate once per method (cache file), quantise any number of variants of one prepared model."""

    def __init__(self, prepared: str, fit_images: np.ndarray, workdir: str, batch_size: int) -> None:
        from onnxruntime.quantization import quantize_static

        graph = load_onnx(prepared)
        batch_size, self.chunk = calibration_batches(len(fit_images), batch_size, activation_bytes_per_image(graph))
        self.prepared, self.fit_images, self.workdir, self.batch_size = prepared, fit_images, workdir, batch_size
        self.input_name = graph.graph.input[0].name
        self.chunks = len(fit_images) // batch_size // self.chunk  # calibration passes, each over `chunk` batches
        self.cached = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        self.count = 0

    def _reader(self):
        return chunked_reader(self.fit_images, self.batch_size, self.input_name)

    def _entropy_ranges(self, cache: str) -> None:
        """Entropy (KL) ranges over a 512-bin histogram (TensorRT uses 2048; 512 keeps the search fast).

        `quantize_static` gives its entropy calibrator 128 histogram bins for 128 quantised bins, which
        leaves one candidate threshold (the full range) and so reproduces min-max exactly; calibrating
        here with more bins and handing the ranges over through ORT's calibration cache avoids that.
        """
        from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(
                Path(self.prepared), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                augmented_model_path=os.path.join(self.workdir, "augmented_model.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"num_bins": 512, "num_quantized_bins": 128, "symmetric": True})
            reader = self._reader()
            for start in range(0, len(reader), self.chunk):
                reader.set_range(start, start + self.chunk)
                calibrator.collect_data(reader)
            save_tensors_data(calibrator.compute_data(), cache)

    def cache(self, method: str) -> str | None:
        """The activation ranges `method` calibrated (ORT's calibration cache, JSON), if it keeps one."""
        path = Path(self.workdir) / f"calibration-{method}.json"
        return path.read_text() if self.cached and path.is_file() else None

    def quantize(self, method: str, float_nodes: list[str] = (), only: list[str] | None = None) -> str:
        self.count += 1
        out = os.path.join(self.workdir, f"int8-{self.count}.onnx")
        kwargs = {}
        if self.cached:
            kwargs["calibration_cache_path"] = os.path.join(self.workdir, f"calibration-{method}.json")
            if method == "entropy" and not os.path.exists(kwargs["calibration_cache_path"]):
                self._entropy_ranges(kwargs["calibration_cache_path"])
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            _quantize_qdq(self.prepared, out, self._reader(), method, float_nodes, only, self.chunk, **kwargs)
        return out


def _quantize_qdq(prepared: str, out: str, reader, method: str, float_nodes, only=None, chunk: int | None = None,
                  **kwargs) -> None:
    """ONNX Runtime's static quantisation with this project's settings: QDQ, symmetric int8 activations and
    per-channel weights (every zero point 0), calibrated by `method` (one of METHODS), `chunk` batches of the
    reader at a time if given (`calibration_chunks`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    quantize_static(prepared, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
                    nodes_to_exclude=list(float_nodes), nodes_to_quantize=list(only) if only else None,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QDQOpTypePerChannelSupportToAxis": PER_CHANNEL_AXES,
                                   **({"CalibStridedMinMax": chunk} if chunk else {})}, **kwargs)


def prepared_model(fp32_path: str | Path, out_path: str | Path) -> None:
    """The float graph as the quantiser sees it (ONNX Runtime's pre-processing: BatchNorm folded, shapes
    inferred); its node and initializer names are those of the INT8 model made from it.

    Pre-processing inlines functions (torch exports HardSwish as one) into nodes without names, and the
    quantiser keeps nodes float by name: a node without a name, or with one an earlier node has, is named
    after its op type and first output (with underscores added until the name is free)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    model = onnx.load(str(out_path))
    seen: set[str] = set()
    renamed = []
    for node in model.graph.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
        else:
            renamed.append(node)
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(renamed):
        name = f"{node.op_type}_{node.output[0] if node.output else index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    if renamed:
        onnx.save(model, str(out_path))


def quantize_with_weights(fp32_path: str | Path, int8_path: str | Path, weights: dict[str, np.ndarray],
                          ranges: str, method: str, float_nodes: list[str],
                          out_path: str | Path | None = None) -> None:
    """The INT8 model `int8_path` made again from the float graph of `fp32_path` with `weights` (float
    initializers by name, e.g. after quantization-aware training) put in: the same activation ranges
    (`ranges`, the calibration cache `method` wrote), the same float layers, weight scales from the new
    weights, and `int8_path`'s metadata (plan included). Written to `out_path` (default: over `int8_path`)."""
    import onnx
    from onnx import numpy_helper

    previous = load_onnx(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        prepared_model(fp32_path, prepared)
        model = onnx.load(prepared)
        known = {init.name for init in model.graph.initializer}
        missing = sorted(set(weights) - known)
        if missing:
            raise DeployError(f"quantization-aware weights name {missing[0]!r}, which the float graph does not have")
        for init in model.graph.initializer:
            if init.name in weights:
                init.CopyFrom(numpy_helper.from_array(np.asarray(weights[init.name], np.float32), init.name))
        onnx.save(model, prepared)
        cache = os.path.join(tmp, "calibration.json")
        Path(cache).write_text(ranges)
        out = os.path.join(tmp, "int8.onnx")
        with contextlib.redirect_stdout(io.StringIO()):
            _quantize_qdq(prepared, out, None, method, float_nodes, calibration_cache_path=cache)
        written = onnx.load(out)
        del written.metadata_props[:]
        written.metadata_props.extend(previous.metadata_props)
        atomic_write(Path(out_path or int8_path), lambda temp: onnx.save(written, str(temp)))


def _parse_keep_float(keep_float: str, model) -> list[str] | None:
    """None for 'auto'; else the node names to keep in float."""
    if keep_float == "auto":
        return None
    if keep_float == "none":
        return []
    if keep_float == "ends":
        return end_nodes(model)
    names = [n for n in keep_float.split(",") if n]
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DeployError(f"--int8-keep-float: no node named {unknown[0]!r} in the model; use auto, none, ends "
                          f"or node names such as {', '.join(weighted_nodes(model)[:2])}")
    return names


class _HeldOutSearch:
    """What the INT8 choices share: the quantiser over the fit slice, and each candidate's score on the
    held-out slice against the fp32 model (top-1 drop with labels, disagreement without)."""

    def __init__(self, prepared: str, rewritten: str, fit: np.ndarray, held: np.ndarray,
                 held_labels: np.ndarray | None, tmp: str, batch_size: int) -> None:
        self.quantizer = _Quantizer(rewritten, fit, tmp, batch_size)
        self.held, self.held_labels = held, held_labels
        self.batch = scoring_batch(prepared)
        self.ref = predict_cpu(prepared, held, self.batch) if len(held) else None  # the float model as exported

    def evaluate(self, path: str, at_most: int | None = None) -> HeldOutScore | None:
        """`path` scored on the held-out images (the first `at_most` of them, if given)."""
        if self.ref is None:
            return None
        return held_out_score(path, self.held[:at_most], self.ref[:at_most],
                              None if self.held_labels is None else self.held_labels[:at_most], self.batch)

    def drop(self, score: HeldOutScore | None) -> float:
        return 0.0 if score is None else score.drop()


def _choose_calibration(search: _HeldOutSearch, method: str, start_float: list[str], echo):
    """Step 1: the calibration method (each one tried with `auto`); returns (method, path, score, candidates).

    With `auto` a method whose calibration fails (e.g. a histogram over a degenerate activation range) is
    skipped and recorded with its error; the run fails in one line only when every method does."""
    candidates: dict[str, dict] = {}
    variants: dict[str, tuple[str, HeldOutScore | None]] = {}
    for m in (METHODS if method == "auto" else (method,)):
        try:
            path = search.quantizer.quantize(m, start_float)
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if method != "auto":
                raise DeployError(f"INT8 calibration with {m} failed ({why}); pass another --int8-calibration "
                                  f"({', '.join(c for c in CALIBRATION_CHOICES if c != m)})") from None
            candidates[m] = {"error": why}
            echo(f"INT8 {m}: calibration failed ({why}); skipped")
            continue
        score = search.evaluate(path)
        variants[m] = (path, score)
        candidates[m] = {"held_out": None if score is None else asdict(score), "held_out_drop": search.drop(score)}
        echo(f"INT8 {m}: held-out drop {search.drop(score):+.2f}")
    if not variants:
        raise DeployError("INT8 calibration failed with every method (" + "; ".join(
            f"{m}: {c['error']}" for m, c in candidates.items()) + "); the model cannot be quantised as it is")
    chosen = max(variants, key=lambda m: variants[m][1].key() if variants[m][1] else (0,)) \
        if method == "auto" and search.ref is not None else next(iter(variants))
    return chosen, *variants[chosen], candidates


def _keep_float_for_accuracy(search: _HeldOutSearch, graph, chosen: str, best_path: str, best_score, max_drop: float,
                             echo):
    """Step 2: nodes kept in float while the held-out drop is above `max_drop`: the first conv and the
    classifier, then the float regions (`float_regions`) of the most sensitive units, one region more at a
    time. Returns (path, score, float nodes, reason or None, sensitivity)."""
    from .float_regions import FloatRegions

    float_nodes: list[str] = []
    reason, sensitivity = None, []
    ends = end_nodes(graph)
    path = search.quantizer.quantize(chosen, ends)
    score = search.evaluate(path)
    echo(f"INT8 {chosen} with {ends} in float: held-out drop {search.drop(score):+.2f}")
    if score.key() > best_score.key():
        best_path, best_score, float_nodes, reason = path, score, ends, "first conv and classifier"
    if search.drop(best_score) > max_drop:
        regions = FloatRegions(graph)
        for k in regions.measured:
            unit = regions.units[k]
            s = search.evaluate(search.quantizer.quantize(chosen, only=unit), SENSITIVITY_IMAGES)
            sensitivity.append({"node": unit[0], "nodes": unit, "region": regions.region(k),
                                "logit_mse": s.logit_mse, "agreement": s.agreement})
        ranked = sorted(range(len(sensitivity)), key=lambda i: -sensitivity[i]["logit_mse"])
        kept: list[str] = []
        for i in ranked[: max(1, len(ranked) // 4)]:
            added = [name for name in sensitivity[i]["region"] if name not in kept]
            if not added:  # already float with an earlier region
                continue
            kept += added
            path = search.quantizer.quantize(chosen, kept)
            score = search.evaluate(path)
            if wins_back_accuracy(score, best_score):
                best_path, best_score, float_nodes = path, score, list(kept)
                reason = "float regions of the most sensitive units"
            if search.drop(score) <= max_drop:
                break
        echo(f"INT8 {chosen}: sensitivity pass keeps {len(float_nodes)} nodes in float "
             f"(held-out drop {search.drop(best_score):+.2f})")
    return best_path, best_score, float_nodes, reason, sensitivity


def _keep_float_for_speed(search: _HeldOutSearch, graph, fp32_path, chosen: str, best_path: str, float_nodes,
                          fit: np.ndarray, max_drop: float, speed, echo):
    """Step 3: layers kept in float for speed on this CPU, within the same accuracy constraint
    (precision_plan.choose_plan). Returns (plan, path, float nodes)."""
    from .precision_plan import MeasuredSpeed, choose_plan, kernel_names, weighted_layers

    def quantize_plan(nodes: list[str]) -> str:
        return best_path if set(nodes) == set(float_nodes) else search.quantizer.quantize(chosen, nodes)

    def held_out_drop(path: str) -> float | None:
        return None if search.ref is None else search.drop(search.evaluate(path))

    timing_images = search.held if len(search.held) else fit  # training images only, like every other choice
    plan, plan_path = choose_plan(weighted_layers(graph), float_nodes, str(fp32_path), timing_images,
                                  quantize_plan, held_out_drop, max_drop, speed or MeasuredSpeed(),
                                  names=kernel_names(graph))
    return plan, plan_path


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_images: np.ndarray,
                  calib_labels: np.ndarray | None = None, method: str = DEFAULTS.calib_method,
                  keep_float: str = DEFAULTS.keep_float, max_drop: float = DEFAULTS.max_drop,
                  batch_size: int = 32, echo=lambda s: None,
                  speed=None) -> QuantizationResult:
    """Calibrate on training images (preprocessed, N x 3 x H x W) and write the QDQ INT8 model.

    `calib_labels` (optional) lets the held-out slice be scored by top-1; without them INT8 is scored by its
    agreement with fp32. Metadata is carried over from the fp32 file. With `keep_float='auto'` the layers
    are chosen in three steps: the calibration method, layers kept float for accuracy, then for speed on
    this CPU, timed by `speed` (a `precision_plan.SpeedSource`; default: measured here).
    """
    import onnx

    if len(calib_images) == 0:
        raise DeployError("INT8 quantisation needs calibration images; pass --calib-size N > 0")
    if method not in CALIBRATION_CHOICES:
        raise DeployError(f"unknown calibration method '{method}'; use one of {', '.join(CALIBRATION_CHOICES)}")
    if calib_labels is not None and len(calib_labels) != len(calib_images):
        raise DeployError(f"{len(calib_images)} calibration images but {len(calib_labels)} labels")
    source = load_onnx(fp32_path)
    images = np.ascontiguousarray(calib_images, np.float32)
    fit, held, held_labels = split_calibration(images, calib_labels)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, rewritten = os.path.join(tmp, "prepared.onnx"), os.path.join(tmp, "rewritten.onnx")
        prepared_model(fp32_path, prepared)
        graph = load_onnx(prepared)  # node names as the quantiser sees them
        forced = _parse_keep_float(keep_float, graph)
        rewrite = rewrite_for_int8(graph, fit)
        onnx.save(graph, rewritten)
        counts = rewrite.summary()
        echo(f"INT8 channel rewrite: weights reading {counts['dead_channels_zeroed']} channels that never fired set "
             f"to 0, {counts['pairs_equalised']} Conv -> ReLU -> Conv pairs equalised")
        search = _HeldOutSearch(prepared, rewritten, fit, held, held_labels, tmp, batch_size)
        chosen, best_path, best_score, candidates = _choose_calibration(search, method, forced or [], echo)
        float_nodes, reason, sensitivity = list(forced or []), "requested" if forced else "none needed", []
        if forced is None and search.ref is not None and search.drop(best_score) > max_drop:
            best_path, best_score, float_nodes, why, sensitivity = _keep_float_for_accuracy(
                search, graph, chosen, best_path, best_score, max_drop, echo)
            reason = why or reason
        plan = None
        if forced is None:
            plan, plan_path = _keep_float_for_speed(search, graph, fp32_path, chosen, best_path, float_nodes, fit,
                                                    max_drop, speed, echo)
            if plan_path != best_path:
                best_path, best_score = plan_path, search.evaluate(plan_path)
                reason = f"{reason}; for speed: {plan.chosen}" if float_nodes else f"for speed: {plan.chosen}"
                float_nodes = list(plan.float_nodes)
            echo(f"INT8 plan for this CPU: {plan.chosen} ({len(float_nodes)} nodes in float); "
                 f"{plan.recommendation}")
            plan = plan.to_dict()
        ranges = search.quantizer.cache(chosen)

        model = onnx.load(best_path)
        del model.metadata_props[:]
        model.metadata_props.extend(source.metadata_props)
        if plan is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = INT8_PLAN_KEY, json.dumps(plan)
        atomic_write(out_path, lambda temp: onnx.save(model, str(temp)))
    fp32_top1 = None if best_score is None else best_score.fp32_top1  # the fp32 model on the held-out images
    return QuantizationResult(out_path, chosen, float_nodes, reason, len(fit), len(held), fp32_top1, best_score,
                              candidates, sensitivity, plan, ranges, rewrite)


def zero_points(model) -> dict[str, list[int]]:
    """Every QuantizeLinear/DequantizeLinear zero point of a model, by tensor name (for checks and tests)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            found[node.input[2]] = numpy_helper.to_array(inits[node.input[2]]).ravel().tolist()
    return found
