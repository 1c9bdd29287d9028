"""The CPU-torch shim for torchvision: used only when the compiled ops cannot load."""

import subprocess
import sys
import textwrap

import torch

from sddcompress import torchvision_compat


def test_torchvision_models_work_through_the_shim():
    tv = torchvision_compat.import_torchvision()
    out = tv.models.resnet18(num_classes=5).eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 5)


def _run_with_fake_torchvision(tmp_path, body: str) -> str:
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    code = "import sddcompress.torchvision_compat as c, torchvision; print(c.shim_active, torchvision.ok)"
    env_path = f"{tmp_path}"
    res = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); {code}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_working_install_is_left_untouched(tmp_path):
    assert _run_with_fake_torchvision(tmp_path, "ok = True\n") == "False True"


def test_missing_ops_are_defined_then_import_retried(tmp_path):
    body = """
    import torch
    try:
        torch.ops.torchvision.nms.default
    except (AttributeError, RuntimeError):
        raise RuntimeError("operator torchvision::nms does not exist")
    ok = True
    """
    assert _run_with_fake_torchvision(tmp_path, body) == "True True"
