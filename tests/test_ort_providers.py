"""ONNX Runtime execution providers: GPU providers when present, CPU otherwise; a broken GPU install named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sddcompress_export.errors import DeployError
from sddcompress_export.onnxruntime_runner import default_providers


def test_provider_choice_prefers_gpu_providers_in_order(monkeypatch):
    import sddcompress_export.onnxruntime_runner as runner

    assert default_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runner, "_tensorrt_libraries_load", lambda: False)
    assert default_providers(gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runner, "_tensorrt_libraries_load", lambda: True)
    assert default_providers(gpu_build) == gpu_build
    assert default_providers([]) == ["CPUExecutionProvider"]


def test_session_reports_the_providers_it_uses(exported):
    import onnxruntime as ort

    from sddcompress_export.onnxruntime_runner import OrtClassifier

    clf = OrtClassifier(exported["artifacts"]["onnx"]["path"])
    assert clf.providers == clf.session.get_providers()
    assert set(clf.providers) <= set(ort.get_available_providers())
    assert clf.device == ("cpu" if clf.providers[0] == "CPUExecutionProvider" else "cuda")


@pytest.fixture
def second_ort_distribution(tmp_path, monkeypatch):
    """A real (metadata-only) `onnxruntime-gpu` distribution installed next to onnxruntime on sys.path:
    the state `pip install onnxruntime-gpu` leaves in an environment that already has onnxruntime."""
    import sddcompress_export.onnxruntime_runner as runner

    info = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    (info / "top_level.txt").write_text("onnxruntime\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    runner._distributions_providing_onnxruntime.cache_clear()
    yield tmp_path
    runner._distributions_providing_onnxruntime.cache_clear()


def test_onnxruntime_and_onnxruntime_gpu_side_by_side_is_named_with_the_fix(second_ort_distribution, exported):
    from sddcompress_export.onnxruntime_runner import OrtClassifier, ort_distributions, ort_install_problem

    assert ort_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    problem = ort_install_problem()
    assert "onnxruntime and onnxruntime-gpu are installed side by side" in problem
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'" in problem
    with pytest.raises(DeployError, match="ONNX Runtime install is broken") as err:
        OrtClassifier(exported["artifacts"]["onnx"]["path"])
    assert "\n" not in str(err.value)


def test_one_ort_distribution_is_fine():
    from sddcompress_export.onnxruntime_runner import ort_distributions, ort_install_problem

    assert len(ort_distributions()) == 1 and ort_install_problem() is None


def test_deploy_check_prints_providers_and_tensorrt_status():
    done = subprocess.run([sys.executable, "-m", "sddcompress_export.cli", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["onnxruntime_distributions"]) == 1
    assert "CPUExecutionProvider" in report["available_providers"] and report["providers_used"][-1] == \
        "CPUExecutionProvider"
    assert report["tensorrt"] == "available" or report["tensorrt"].startswith("TensorRT is not available here")
