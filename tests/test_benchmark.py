"""The latency benchmark: timer statistics, the results schema, skipped backends, plot, report, --compare."""

from __future__ import annotations

import json

import pytest

from sddcompress.benchmarking.timer import measure
from test_cli_errors import assert_one_line_error


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
    assert doc["data"] == {"name": "digits", "val_images": 50, "input_size": 16}
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
