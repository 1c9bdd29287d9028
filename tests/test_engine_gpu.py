"""The training engine on a CUDA GPU: `pytest -m gpu`. Skipped, with the reason, on a host without one.

A two-epoch SDD-DKD smoke run with everything the GPU path adds: bf16 autocast (--precision auto),
torch.compile of student and teacher, channels_last, the device-resident input pipeline, pinned memory.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig
from sddcompress.engine.trainer import resolve_precision, run

REASON = None if torch.cuda.is_available() else (
    "no CUDA GPU here: the engine's GPU smoke run (bf16 autocast, torch.compile, 2 epochs) needs one; "
    "run `pytest -m gpu` on a host with an NVIDIA GPU")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def test_gpu_smoke_run_amp_compile_two_epochs(tmp_path, teacher_ckpt):
    cfg = TrainConfig(**{**TINY, "cpu": False}, model="resnet20", teacher="resnet20", teacher_ckpt=teacher_ckpt,
                      method="sdd-dkd", warmup_epochs=1.0, epochs=2, precision="auto", compile=True,
                      pipeline="auto", out=str(tmp_path / "r"))
    assert resolve_precision(cfg) == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    result = run(cfg, echo=lambda s: None)
    ckpt = load_checkpoint(result.latest)
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in result.history] == [1, 2]
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["state_dict"].values() if v.is_floating_point())
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # not NaN
    assert 0.0 <= result.final["top1"] <= 100.0
