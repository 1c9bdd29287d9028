"""The README's flow, end to end, as a user runs it: quickstart -> export --ort-int8 -> benchmarks/latency.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def sh(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_quickstart_export_benchmark(tmp_path):
    qs = sh(tmp_path, "-m", "sddcompress.cli.main", "quickstart", "--epochs", "5")
    assert "student (SDD-DKD)" in qs.stdout and "sddcompress export" in qs.stdout
    summary = json.loads((tmp_path / "runs/quickstart/summary.json").read_text())
    assert {r["role"] for r in summary["rows"]} == {"teacher", "student (CE)", "student (SDD-DKD)"}
    # 10 classes: well above chance after 5 epochs (at 3 the SDD-DKD student, warming up behind a teacher of
    # 6 epochs, can still sit near chance)
    assert all(r["top1"] > 30.0 for r in summary["rows"])
    assert "(ONNX Runtime INT8)" in qs.stdout and summary["deploy"]["int8_top1"] > 30.0

    exp = sh(tmp_path, "-m", "sddcompress.cli.main", "export", "--ort-int8")
    assert "parity vs PyTorch" in exp.stdout
    export_dir = tmp_path / "runs/quickstart/student-sdd-dkd/export"
    assert (export_dir / "model.onnx").is_file() and (export_dir / "model.int8.onnx").is_file()

    trt = sh(tmp_path, "-m", "sddcompress.cli.main", "export", "--trt", "fp16", ok=False)
    assert trt.returncode == 2 and "TensorRT is not available here" in trt.stderr

    sh(tmp_path, str(ROOT / "benchmarks/latency.py"), "--warmup", "1", "--min-iters", "3", "--min-seconds", "0",
       "--backends", "torch-eager,ort-fp32,ort-int8,trt-fp16")
    doc = json.loads((tmp_path / "runs/benchmark/results.json").read_text())
    # the student's artefacts are the ones `export` wrote (matched by checkpoint hash), not re-exported
    assert doc["models"]["student"]["artifacts"]["ort-int8"].endswith("student-sdd-dkd/export/model.int8.onnx")
    ok = {(r["model"], r["backend"]) for r in doc["results"] if r["status"] == "ok"}
    assert ok == {(m, b) for m in ("teacher", "student") for b in ("torch-eager", "ort-fp32", "ort-int8")}
    assert (tmp_path / "runs/benchmark/latency_accuracy.png").stat().st_size > 10_000
