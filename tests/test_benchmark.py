"""The latency benchmark: timer statistics, the results schema, skipped backends, plot, report, --compare."""

from __future__ import annotations

import json

import pytest

from sddcompress.benchmarking.timer import measure
from helpers import assert_one_line_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timer_statistics_on_known_delays():
    clock = FakeClock()
    delays = iter([0.5] * 3 + [0.001 * k for k in range(1, 101)])  # 3 warm-up calls, then 1..100 ms

    def fn():
        clock.now += next(delays)

    stats = measure(fn, warmup=3, min_iters=100, min_seconds=0.0, batch=4, clock=clock)
    assert stats.iterations == 100 and stats.warmup == 3
    assert max(stats.times_ms) == pytest.approx(100.0)  # the 500 ms warm-up calls were not timed
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.throughput == pytest.approx(4 / 0.0505)


def test_timer_runs_until_min_seconds():
    clock = FakeClock()

    def fn():
        clock.now += 0.01

    stats = measure(fn, warmup=0, min_iters=5, min_seconds=1.0, clock=clock)
    assert stats.iterations == 100  # 5 iterations would take 50 ms; it keeps going to 1 s
    assert stats.p50 == pytest.approx(10.0)


def test_timer_uses_interval_when_given():
    stats = measure(lambda: None, warmup=0, min_iters=4, interval=lambda fn: (fn(), 7.0)[1])
    assert stats.times_ms == [7.0] * 4


class FakeRunner:
    """Records its calls in a shared log; a call 'takes' `ms` on the shared fake clock. `fail_at` makes
    that call raise, as an engine whose profile is too small would."""

    clock_name, device = "fake", "cpu"

    def __init__(self, name: str, ms: float, log: list, clock: FakeClock, fail_at: int | None = None) -> None:
        self.name, self.ms, self.log, self.clock, self.fail_at = name, ms, log, clock, fail_at
        self.calls = 0

    def prepare(self, batch):
        return len(batch)

    def run(self, handle):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("batch above the profile's max")
        self.log.append((self.name, handle))
        self.clock.now += self.ms / 1e3

    sync = None


def test_cells_are_timed_in_turn_round_by_round(monkeypatch):
    """Every cell gets a block per round, in turn (A, B, A, B, ...) so drift hits them alike; the p50 is over
    all rounds' calls; a cell that fails at some batch is reported skipped there, and the others go on."""
    from functools import partial

    import numpy as np

    from sddcompress.benchmarking import latency, timer

    clock = FakeClock()
    monkeypatch.setattr(latency, "measure", partial(timer.measure, clock=clock))
    monkeypatch.setattr(latency.time, "sleep", lambda seconds: None)
    log: list = []
    a, b = FakeRunner("a", 2.0, log, clock), FakeRunner("b", 5.0, log, clock, fail_at=1 + 4 + 2 + 4 + 2 + 4 + 1)
    rows = [{"model": "teacher", "backend": "x", "latency": {}}, {"model": "student", "backend": "y", "latency": {}}]
    images = np.zeros((3, 3, 2, 2), np.float32)
    o = latency.BenchmarkOptions(batch_sizes=[1, 4], warmup=1, min_iters=12, min_seconds=0.0, rounds=3)
    latency.time_cells([(rows[0], a, images), (rows[1], b, images)], o, lambda s: None)
    # batch 1: round 1 warms up once then times 4 calls per cell; later rounds warm up twice
    order = [name for name, _ in log[: 2 * (1 + 4) + 2 * 2 * (2 + 4)]]
    assert order == ["a"] * 5 + ["b"] * 5 + (["a"] * 6 + ["b"] * 6) * 2
    first = rows[0]["latency"]["1"]
    assert first["iterations"] == 12 and first["rounds"] == 3 and first["p50_ms"] == pytest.approx(2.0)
    assert rows[1]["latency"]["1"]["p50_ms"] == pytest.approx(5.0)
    # b's first call at batch 4 fails: skipped there with the reason, while a is still timed at batch 4
    assert rows[1]["latency"]["4"] == {"skipped": "RuntimeError: batch above the profile's max"}
    assert rows[0]["latency"]["4"]["iterations"] == 12
    assert [h for n, h in log if n == "a"] == [1] * 17 + [4] * 17 and [h for n, h in log if n == "b"] == [1] * 17


def test_rounds_must_be_positive(tmp_path):
    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark
    from sddcompress.errors import UserError

    with pytest.raises(UserError, match="--rounds must be >= 1"):
        run_benchmark(BenchmarkOptions(rounds=0, out=str(tmp_path)), echo=lambda s: None)


@pytest.fixture(scope="module")
def bench(teacher_ckpt, tmp_path_factory):
    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark

    out = tmp_path_factory.mktemp("bench")
    opts = BenchmarkOptions(teacher=teacher_ckpt, student=teacher_ckpt, val_size=50, calib_size=16,
                            batch_sizes=[1, 4], backends=["torch-eager", "ort-fp32", "ort-int8", "trt-fp16"],
                            warmup=1, min_iters=3, min_seconds=0.0, out=str(out))
    doc = run_benchmark(opts, echo=lambda s: None)
    return out, doc


def test_results_json_schema(bench):
    out, _ = bench
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "sddcompress-benchmark-v1"
    env = doc["environment"]
    for key in ("cpu", "gpu", "threads", "date"):
        assert key in env
    assert {"torch", "onnxruntime", "tensorrt"} <= env["versions"].keys()
    assert doc["method"]["batch_sizes"] == [1, 4] and doc["method"]["warmup"] == 1
    assert doc["data"] == {"name": "digits", "val_images": 50, "input_size": 16, "classes_in_sample": 10,
                           "sample": "class-stratified"}
    cells = {(r["model"], r["backend"]): r for r in doc["results"]}
    assert len(cells) == 8
    for role in ("teacher", "student"):
        for backend in ("torch-eager", "ort-fp32", "ort-int8"):
            r = cells[(role, backend)]
            assert r["status"] == "ok"
            assert set(r["latency"]) == {"1", "4"}
            lat = r["latency"]["4"]
            assert lat["iterations"] >= 3 and len(lat["times_ms"]) == lat["iterations"]
            assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
            assert lat["throughput_ips"] == pytest.approx(4000.0 / lat["mean_ms"])
            assert 0 <= r["accuracy"]["top1"] <= r["accuracy"]["top5"] <= 100
    # same model, same images: eager and ORT fp32 agree on accuracy
    assert cells[("student", "ort-fp32")]["accuracy"]["top1"] == cells[("student", "torch-eager")]["accuracy"]["top1"]
    comparison = {row["backend"]: row for row in doc["comparison"]}
    assert comparison["ort-fp32"]["top1_gap"] == pytest.approx(0.0)


def test_skipped_backends_have_reasons(bench):
    _, doc = bench
    skipped = [r for r in doc["results"] if r["status"] == "skipped"]
    assert {(r["model"], r["backend"]) for r in skipped} == {("teacher", "trt-fp16"), ("student", "trt-fp16")}
    assert all("TensorRT is not available here" in r["reason"] for r in skipped)


def test_plot_and_report_written(bench):
    out, _ = bench
    png = (out / "latency_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = (out / "report.md").read_text()
    assert "| student | ort-int8 |" in report and "trt-fp16 | skipped" in report
    assert "latency_accuracy.png" in report
    assert "(class-stratified sample)" in report and "INSIDE the timing" in report


def test_backend_that_fails_to_start_is_reported(teacher_ckpt, tmp_path, monkeypatch):
    import sddcompress.benchmarking.candidates as cand
    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("inductor needs a C++ compiler")

    monkeypatch.setattr(cand, "TorchRunner", Broken)
    doc = run_benchmark(BenchmarkOptions(teacher=teacher_ckpt, student=teacher_ckpt, val_size=8, batch_sizes=[1],
                                         backends=["torch-compiled"], warmup=0, min_iters=1, min_seconds=0,
                                         out=str(tmp_path)), echo=lambda s: None)
    reasons = [r["reason"] for r in doc["results"]]
    assert reasons == ["failed to start: RuntimeError: inductor needs a C++ compiler"] * 2


def test_compare_prints_ratios(cli, bench, tmp_path):
    out, doc = bench
    slower = json.loads(json.dumps(doc))
    for r in slower["results"]:
        for lat in r.get("latency", {}).values():
            lat["p50_ms"] *= 2
            lat["throughput_ips"] /= 2
    (tmp_path / "results.json").write_text(json.dumps(slower))
    code, stdout, _ = cli("benchmark", "--compare", str(out), str(tmp_path / "results.json"))
    assert code == 0
    assert stdout.count("2.00x") >= 12 and stdout.count("0.50x") >= 12


@pytest.mark.parametrize("args,fragment", [
    (["--backends", "torch-eager,onnx-gpu"], "unknown backend 'onnx-gpu'"),
    (["--batch-sizes", "0,8"], "--batch-sizes must be positive"),
    (["--batch-sizes", "1,x"], "expected comma-separated integers"),
])
def test_benchmark_bad_inputs(cli, teacher_ckpt, tmp_path, args, fragment):
    result = cli("benchmark", "--teacher", teacher_ckpt, "--student", teacher_ckpt, "--out", str(tmp_path), *args)
    assert_one_line_error(result, fragment)


def test_benchmark_without_models_or_quickstart(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("benchmark"), "run `sddcompress quickstart` first")


def test_compare_rejects_other_json(cli, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    assert_one_line_error(cli("benchmark", "--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")),
                          "not an sddcompress benchmark")


# ---- honesty of the GPU-ready method: samples, tick labels, clocks ----

def test_stratified_sample_gives_every_class_its_share():
    import numpy as np

    from sddcompress.data.sampling import stratified_indices

    labels = np.repeat(np.arange(10), 50)  # an image folder: sorted by class
    idx = stratified_indices(labels, 100)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10  # the first 100 would be 2 classes
    assert np.array_equal(idx, stratified_indices(labels, 100))  # seeded: the same sample every run
    uneven = np.array([0] * 3 + [1] * 40 + [2] * 40)
    counts = np.bincount(uneven[stratified_indices(uneven, 30)]).tolist()
    assert counts == [3, 14, 13] or counts == [3, 13, 14]  # a small class gives all it has
    assert len(stratified_indices(labels, None)) == 500 and len(stratified_indices(labels, 10_000)) == 500


def test_benchmark_scores_a_stratified_sample_of_a_tensor_file(teacher_ckpt, exported, tmp_path):
    import numpy as np

    from sddcompress.benchmarking.latency import BenchmarkOptions, run_benchmark

    npz = exported["tensor_file"]["path"]
    doc = run_benchmark(BenchmarkOptions(teacher=teacher_ckpt, student=teacher_ckpt, data=npz, val_size=30,
                                         batch_sizes=[1], backends=["ort-fp32"], warmup=0, min_iters=1,
                                         min_seconds=0, out=str(tmp_path)), echo=lambda s: None)
    labels = np.load(npz)["val_labels"]
    assert doc["data"]["sample"] == "class-stratified" and doc["data"]["val_images"] == 30
    assert doc["data"]["classes_in_sample"] == len(np.unique(labels))
    assert "INSIDE the timing" in doc["method"]["clock"] and "stopped before any timing" in doc["method"]["memory"]


def _overlaps(boxes) -> bool:
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


@pytest.mark.parametrize("latencies", [
    [0.3, 0.63, 1.34, 2.84, 6.0],  # matplotlib's own log labels (2x10^-1, 3x10^-1, ...) ran into each other here
    [0.33, 0.35, 0.41, 0.55, 0.62], [0.02, 0.05, 4.0, 30.0, 120.0], [1.0, 1.1, 1.2, 1.25, 1.3]])
def test_latency_plot_tick_labels_do_not_overlap(latencies):
    import matplotlib.pyplot as plt

    from sddcompress.benchmarking.report import latency_figure

    results = [{"model": ("teacher", "student")[i % 2], "backend": f"b{i}", "status": "ok",
                "latency": {"1": {"p50_ms": x}}, "accuracy": {"top1": 90.0 + i}} for i, x in enumerate(latencies)]
    doc = {"results": results, "models": {"teacher": {"name": "t"}, "student": {"name": "s"}},
           "data": {"name": "digits"}, "environment": {"cpu": "cpu", "threads": 2, "date": "2026-11-23"}}
    fig = latency_figure(doc, 1)
    fig.canvas.draw()
    renderer, (low, high) = fig.canvas.get_renderer(), fig.axes[0].get_xlim()
    labels = [t for t in fig.axes[0].get_xticklabels(which="both")
              if t.get_visible() and t.get_text() and low <= t.get_position()[0] <= high]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    plt.close(fig)
    assert len(boxes) >= 2 and not _overlaps(boxes)
