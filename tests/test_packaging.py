"""The wheel a user gets from `pip install .` holds every module and the shipped configs.

(The non-editable install itself, and the flow run from it outside the repository, is in `.ci/run`.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_every_module_config_and_entry_point(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("sddcompress", "export"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("sddcompress-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sddcompress").rglob("*.py")}
    expected |= {"sddcompress_export/" + p.relative_to(ROOT / "export").as_posix()
                 for p in (ROOT / "export").rglob("*.py")}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "sddcompress/configs").glob("*.yaml")}
    assert "sddcompress/exporting/pipeline.py" in expected and "sddcompress_export/cli.py" in expected
    assert sorted(expected - names) == []
    assert not any(n.startswith(("tests/", "export/", "benchmarks/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read("sddcompress-0.1.0.dist-info/entry_points.txt").decode()
    assert "sddcompress = sddcompress.cli.main:main" in entry_points
    assert "sddcompress-deploy = sddcompress_export.cli:main" in entry_points
