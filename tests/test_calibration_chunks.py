"""INT8 calibration a chunk of images at a time (`sddcompress_export.calibration_chunks`)."""

import json
import os

import numpy as np
import onnx
import pytest

import sddcompress_export.calibration_chunks as calibration_chunks
import sddcompress_export.ort_quantization as ort_quantization
from sddcompress_export.calibration_chunks import activation_bytes_per_image, calibration_batches
from sddcompress_export.ort_quantization import _Quantizer, prepared_model
from test_float_regions import _concat_model


@pytest.fixture
def prepared(tmp_path):
    """The concat model of the float-region tests as the quantiser sees it, and 96 images."""
    _concat_model(tmp_path / "model.onnx")
    prepared_model(tmp_path / "model.onnx", tmp_path / "prepared.onnx")
    images = np.random.default_rng(5).standard_normal((96, 3, 8, 8)).astype(np.float32)
    return str(tmp_path / "prepared.onnx"), images


def _count_batches(monkeypatch) -> list[int]:
    """From now on, the number of images of every ONNX Runtime session run, in order."""
    runs = []
    original_session = __import__("onnxruntime").InferenceSession

    class CountingSession(original_session):
        def run(self, names, feed, *args):
            runs.append(len(next(iter(feed.values()))))
            return super().run(names, feed, *args)

    monkeypatch.setattr("onnxruntime.InferenceSession", CountingSession)
    return runs


def test_activation_bytes_are_those_of_every_tensor_one_image_produces(prepared):
    import onnxruntime as ort

    path, images = prepared
    model = onnx.load(path)
    names = [info.name for info in model.graph.value_info] + [o.name for o in model.graph.output]
    probe = onnx.load(path)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(info for info in probe.graph.value_info if info.name not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    produced = session.run(names, {"input": images[:1]})

    assert activation_bytes_per_image(model) == sum(a.nbytes for a in produced) > 0


def test_a_tensor_listed_twice_is_counted_once(prepared):
    model = onnx.load(prepared[0])
    counted = activation_bytes_per_image(model)
    model.graph.value_info.extend(list(model.graph.value_info)[:3])

    assert activation_bytes_per_image(model) == counted


def test_a_tensor_of_unknown_shape_is_not_counted(prepared):
    model = onnx.load(prepared[0])
    counted = activation_bytes_per_image(model)
    info = model.graph.value_info[0]
    size = 4 * int(np.prod([d.dim_value for d in info.type.tensor_type.shape.dim[1:]]))
    info.type.tensor_type.shape.dim[2].ClearField("dim_value")

    assert activation_bytes_per_image(model) == counted - size


@pytest.mark.parametrize("images, fitting, batch, chunk", [
    (256, 10_000, 32, 8),  # everything fits: one pass in the batches asked for
    (256, 100, 32, 2),  # 100 images fit: two batches of 32 a chunk (8 batches split evenly)
    (256, 10, 8, 1),  # a batch of 32 would not fit: batches of 8, one a chunk
    (96, 0.5, 1, 1),  # not even one image fits: one at a time
    (224, 128, 32, 1),  # 7 batches, 4 fit, no equal share of more than one
    (97, 1000, 1, 97),  # a prime count: batches of one image, all in one chunk
])
def test_batches_and_chunks_are_equal_and_fit_the_budget(images, fitting, batch, chunk):
    per_image = 1000
    assert calibration_batches(images, 32, per_image, budget=int(fitting * per_image)) == (batch, chunk)


def _calibrate(prepared, monkeypatch, batches_fitting, method):
    """Quantise with `method` (batches of 32) under a budget that fits `batches_fitting` batches; returns (ranges
    by tensor, the batch ranges the reader was set to)."""
    path, images = prepared
    budget = batches_fitting * 32 * activation_bytes_per_image(onnx.load(path))
    ranges_read = []
    make_reader = calibration_chunks.chunked_reader

    def spying_reader(*args):
        reader = make_reader(*args)
        set_range = reader.set_range

        def recorded(start_index, end_index):
            ranges_read.append((start_index, end_index))
            set_range(start_index, end_index)
        reader.set_range = recorded
        return reader

    monkeypatch.setattr(calibration_chunks, "CHUNK_BYTES", budget)
    monkeypatch.setattr(ort_quantization, "chunked_reader", spying_reader)
    workdir = f"{path}-{batches_fitting}-{method}"
    os.makedirs(workdir)
    quantizer = _Quantizer(path, images, workdir, 32)
    quantizer.quantize(method)
    return json.loads(quantizer.cache(method))["data"], ranges_read


def test_min_max_in_chunks_gives_the_ranges_of_one_pass(prepared, monkeypatch):
    one_pass, read_once = _calibrate(prepared, monkeypatch, 3, "minmax")
    chunked, read_chunked = _calibrate(prepared, monkeypatch, 1, "minmax")

    assert read_chunked == [(0, 1), (1, 2), (2, 3)]
    assert read_once == [(0, 3)]  # one chunk: every batch in one range
    assert chunked == one_pass and len(one_pass) > 5


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_the_histogram_calibrators_read_one_chunk_at_a_time(prepared, monkeypatch, method):
    chunked, read = _calibrate(prepared, monkeypatch, 1, method)
    bounds, _ = _calibrate(prepared, monkeypatch, 3, "minmax")

    assert read == [(0, 1), (1, 2), (2, 3)]
    assert chunked.keys() == bounds.keys()


def test_channel_maxima_in_batches_the_budget_allows_are_those_of_full_batches(prepared, monkeypatch):
    from sddcompress_export.channel_balance import channel_maxima

    path, images = prepared
    model = onnx.load(path)
    full, spatial = channel_maxima(model, images)
    monkeypatch.setattr(calibration_chunks, "CHUNK_BYTES", 1)  # one image a run
    runs = _count_batches(monkeypatch)
    small, small_spatial = channel_maxima(model, images)

    assert runs == [1] * len(images)
    assert small_spatial == spatial and small.keys() == full.keys()
    assert all(np.array_equal(small[name], full[name]) for name in full)


def test_held_out_scores_run_in_batches_the_budget_allows(prepared, tmp_path, monkeypatch):
    from sddcompress_export.ort_quantization import _HeldOutSearch, scoring_batch

    path, images = prepared
    fit, held = images[:64], images[64:]
    labels = np.arange(len(held)) % 4
    assert scoring_batch(path) == ort_quantization.SCORING_BATCH  # a small graph: the full batch
    full = _HeldOutSearch(path, path, fit, held, labels, str(tmp_path), 32)
    int8 = full.quantizer.quantize("minmax")
    monkeypatch.setattr(calibration_chunks, "CHUNK_BYTES", 3 * activation_bytes_per_image(onnx.load(path)))
    runs = _count_batches(monkeypatch)
    small = _HeldOutSearch(path, path, fit, held, labels, str(tmp_path / "small"), 32)
    score = small.evaluate(int8)

    assert small.batch == scoring_batch(path) == 3 and runs and max(runs) == 3
    assert (score.agreement, score.top1) == (full.evaluate(int8).agreement, full.evaluate(int8).top1)


def test_memory_benchmark_calibrates_each_way_in_its_own_process(prepared, tmp_path):
    from helpers import load_benchmark

    bench = load_benchmark("int8_memory")
    path, images = prepared
    np.save(tmp_path / "images.npy", images)
    one_batch = 32 * activation_bytes_per_image(onnx.load(path))
    chunked = bench.run_child("calibrate", path, str(tmp_path / "images.npy"), "minmax", one_batch)
    one_pass = bench.run_child("calibrate", path, str(tmp_path / "images.npy"), "minmax", 1 << 62)

    assert (chunked["chunks"], one_pass["chunks"]) == (3, 1)
    assert chunked["peak_mb"] >= 0 and one_pass["seconds"] > 0
    assert bench.range_gaps(chunked["ranges"], one_pass["ranges"]) == (0.0, 0.0)
    assert "error" in bench.run_child("calibrate", path, str(tmp_path / "missing.npy"), "minmax", None)


def test_memory_benchmark_runs_the_whole_stage_step_by_step(tmp_path):
    from helpers import load_benchmark

    bench = load_benchmark("int8_memory")
    _concat_model(tmp_path / "model.onnx")
    np.save(tmp_path / "images.npy", np.random.default_rng(5).standard_normal((40, 3, 8, 8)).astype(np.float32))
    result = bench.run_child("stage", str(tmp_path / "model.onnx"), str(tmp_path / "images.npy"))

    steps = [s["step"] for s in result["steps"]]
    assert steps[0].startswith("INT8 channel rewrite") and steps[-1] == "written"
    assert any(s.startswith("INT8 plan for this CPU") for s in steps)
    assert [s["seconds"] for s in result["steps"]] == sorted(s["seconds"] for s in result["steps"])
    assert result["peak_mb"] == max(s["peak_mb"] for s in result["steps"]) >= 0
