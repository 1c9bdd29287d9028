"""Shared fixtures: a tiny trained teacher on the offline digits data, and a CLI runner."""

from __future__ import annotations

import os

import pytest

# keep tests off the network and quiet
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))

TINY = dict(data="digits", input_size=16, epochs=1, batch_size=32, lr=0.05, max_train_batches=4, log_every=1000,
            cpu=True)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> str:
    from sddcompress.engine.config import TrainConfig
    from sddcompress.engine.trainer import run

    out = tmp_path_factory.mktemp("teacher")
    result = run(TrainConfig(model="resnet20", out=str(out), **TINY), echo=lambda s: None)
    return str(result.best)


@pytest.fixture(scope="session")
def exported(teacher_ckpt, tmp_path_factory) -> dict:
    """The tiny model exported once: ONNX + ORT INT8 + data.npz; returns the export report."""
    from sddcompress.exporting.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("export")
    return run_export(ExportOptions(ckpt=teacher_ckpt, out=str(out), ort_int8=True, calib_size=64, val_size=200),
                      echo=lambda s: None)


def in_process(main, capsys):
    """A function running `main(ARGS)` in-process; it returns (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def cli(capsys):
    """Run `sddcompress ARGS` in-process; returns (exit code, stdout, stderr)."""
    from sddcompress.cli.main import main

    return in_process(main, capsys)


@pytest.fixture
def deploy(capsys):
    """Run `sddcompress-deploy ARGS` in-process; returns (exit code, stdout, stderr)."""
    from sddcompress_export.cli import main

    return in_process(main, capsys)


def tiny_args(**over) -> list[str]:
    values = {**TINY, **over}
    args = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    return args


