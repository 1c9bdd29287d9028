"""The training engine on a CUDA GPU: `pytest -m gpu`. Skipped, with the reason, on a host without one.

A two-epoch SDD-DKD smoke run with everything the GPU path adds (bf16 autocast through --precision
auto, torch.compile, channels_last, the device-resident input pipeline, the step as a CUDA graph), and
the captured step against the eager step over a few optimiser steps.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig
from sddcompress.engine.trainer import resolve_precision, run

REASON = None if torch.cuda.is_available() else (
    "no CUDA GPU here: the engine's GPU runs (CUDA-graph step, bf16 autocast, torch.compile) need one; "
    "run `pytest -m gpu` on a host with an NVIDIA GPU")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _gpu_config(out, teacher_ckpt, **over) -> TrainConfig:
    values = {**TINY, "cpu": False, "model": "resnet20", "teacher": "resnet20", "teacher_ckpt": teacher_ckpt,
              "method": "sdd-dkd", "warmup_epochs": 1.0, "pipeline": "auto", "out": str(out), **over}
    return TrainConfig(**values)


def test_gpu_smoke_run_amp_compile_two_epochs(tmp_path, teacher_ckpt):
    said: list[str] = []
    cfg = _gpu_config(tmp_path / "r", teacher_ckpt, epochs=2, precision="auto", compile=True)
    assert resolve_precision(cfg) == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    result = run(cfg, echo=said.append)
    ckpt = load_checkpoint(result.latest)
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in result.history] == [1, 2]
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["state_dict"].values() if v.is_floating_point())
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # not NaN
    assert all(r["eval_seconds"] > 0 and r["train_seconds"] > 0 for r in result.history)
    assert 0.0 <= result.final["top1"] <= 100.0
    assert not any("eager" in line for line in said), said  # the graph step ran (no fallback)


@pytest.mark.parametrize("method, over", [("sdd-dkd", {}), ("sdd-dkd+msdcrd", {}),
                                          ("sdd-dkd", {"labelled_fraction": 0.2})],
                         ids=["sdd-dkd", "sdd-dkd+msdcrd", "sdd-dkd-label-scarce"])
def test_captured_step_trains_as_the_eager_step(tmp_path, teacher_ckpt, method, over):
    # float32 without TF32 in both, so the kernels differ only in cuDNN's choice of algorithm
    torch.backends.cudnn.allow_tf32 = False
    try:
        common = dict(epochs=2, max_train_batches=4, precision="no", clip_grad_norm=1.0, method=method,
                      msd_ramp_epochs=1.0, **over)
        eager = run(_gpu_config(tmp_path / "eager", teacher_ckpt, step="eager", **common), echo=lambda s: None)
        graph = run(_gpu_config(tmp_path / "graph", teacher_ckpt, step="graph", **common), echo=lambda s: None)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    a, b = (load_checkpoint(r.latest)["model"]["state_dict"] for r in (eager, graph))
    for k in a:
        torch.testing.assert_close(b[k].double(), a[k].double(), rtol=1e-3, atol=1e-4, msg=k)
    for row_e, row_g in zip(eager.history, graph.history):
        assert row_g["train_loss"] == pytest.approx(row_e["train_loss"], rel=1e-3)
        # as many images' worth whatever the share of them train top-1 counts (the labelled ones)
        tolerance = 100.0 / 32 / over.get("labelled_fraction", 1.0)
        assert row_g["train_top1"] == pytest.approx(row_e["train_top1"], abs=tolerance)
