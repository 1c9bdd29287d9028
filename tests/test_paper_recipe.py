"""benchmarks/paper_recipe.py on a CPU: the real trainer over generated CIFAR-100-shaped data, figures out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_recipe.py"


@pytest.mark.slow
def test_paper_recipe_runs_on_a_cpu_and_reports_its_projection(tmp_path):
    figures = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--epochs", "2", "--max-train-batches", "1",
                           "--train-size", "128", "--val-size", "64", "--json", str(figures)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "projection for 240 epochs:" in done.stdout
    result = json.loads(figures.read_text())
    assert [row["epoch"] for row in result["epochs"]] == [1, 2]
    assert result["steps_per_epoch"] == 1
    assert all(row["train_seconds"] > 0 and row["eval_seconds"] > 0 for row in result["epochs"])
    second = result["epochs"][1]
    expected = (second["train_seconds"] + second["eval_seconds"]) * 240 / 60
    assert result["projection_minutes"] == pytest.approx(expected)
