"""The graph step (`--step graph`): the work a CUDA graph records, run as such on a CPU, equals the eager step.

On a CPU `CapturedStep` runs its recorded body directly each step (static input buffers, gradients
written rather than accumulated, the ramp from the device-side step index, the tally updated in
place): the same computation a replay performs. The trainer is made to use it here so that the
whole loop around it (optimiser step after it, schedule, log points, checkpoints, metrics) is
compared with the eager trainer. The real capture is compared on a GPU in test_engine_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from sddcompress.engine import trainer
from sddcompress.engine.captured_step import CapturedStep, EpochTally
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig
from sddcompress.errors import UserError

QUIET = dict(echo=lambda s: None)


def _config(out, teacher_ckpt, method: str, **over) -> TrainConfig:
    values = {**TINY, "model": "resnet20", "teacher": "resnet20", "teacher_ckpt": teacher_ckpt, "method": method,
              "warmup_epochs": 1.5, "msd_ramp_epochs": 1.5, "epochs": 2, "max_train_batches": 3,
              "clip_grad_norm": 1.0, "out": str(out), **over}
    return TrainConfig(**values)


@pytest.mark.parametrize("method, over", [("sdd-dkd", {}), ("sdd-dkd+msdcrd", {}),
                                          ("sdd-dkd", {"labelled_fraction": 0.2})],
                         ids=["sdd-dkd", "sdd-dkd+msdcrd", "sdd-dkd-label-scarce"])
def test_graph_step_body_trains_as_the_eager_step(tmp_path, teacher_ckpt, monkeypatch, method, over):
    eager = trainer.run(_config(tmp_path / "eager", teacher_ckpt, method, step="eager", **over), **QUIET)
    used = []
    monkeypatch.setattr(trainer, "_use_graph_step", lambda cfg, acc, say: used.append(cfg.out) or True)
    graph = trainer.run(_config(tmp_path / "graph", teacher_ckpt, method, **over), **QUIET)
    assert used == [str(tmp_path / "graph")]
    a, b = (load_checkpoint(r.latest)["model"]["state_dict"] for r in (eager, graph))
    for k in a:  # float32 rounding of the ramp (computed on the device from the step index) is all that differs
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    for row_e, row_g in zip(eager.history, graph.history):
        for key in ("train_loss", "train_ce", "train_distill", "train_top1", "val_top1", "val_loss"):
            assert row_g[key] == pytest.approx(row_e[key], rel=1e-5, abs=1e-6), key
    assert [r["epoch"] for r in graph.history] == [1, 2]


def test_graph_step_and_eager_step_differ_when_the_batch_differs(teacher_ckpt):
    """The comparison above can fail: another batch gives other terms."""
    from sddcompress.engine.method_nets import method_networks
    from sddcompress.losses import Objective, make_method
    from sddcompress.models import build_model

    torch.manual_seed(0)
    method = make_method("sdd-dkd", warmup_epochs=1.0)
    student_net, teacher_net = method_networks(build_model("resnet20", 10, 16), build_model("resnet20", 10, 16),
                                               16, method, "resnet20", "resnet20")
    teacher_net.eval().requires_grad_(False)
    tally = EpochTally("cpu")
    step = CapturedStep(student_net, teacher_net, Objective(method), tally, capture=False)
    step.set_epoch(0, 4)
    tally.reset()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    first = step(x, y)["loss"].clone()
    again = step(x, y)["loss"].clone()  # no optimiser step between: same weights, later ramp
    other = step(x.flip(0), y.flip(0))["loss"].clone()
    assert torch.isfinite(first) and again != first and other != again
    sums = tally.floats()
    assert sums["seen"] == 24 and sums["batches"] == 3 and int(tally.index) == 3 and int(tally.bad_at) == -1
    assert sums["loss"] == pytest.approx(float(first + again + other), rel=1e-6)


def test_graph_step_on_a_cpu_is_one_line(tmp_path, teacher_ckpt):
    with pytest.raises(UserError, match=r"^--step graph needs a CUDA GPU; pass --step eager or auto$"):
        trainer.run(_config(tmp_path / "r", teacher_ckpt, "sdd-dkd", step="graph"), **QUIET)


def test_a_step_that_cannot_be_recorded_falls_back_to_eager_in_one_line(tmp_path, teacher_ckpt, monkeypatch):
    """A failed capture says why once and trains on eagerly from the same batch: the eager run's weights."""
    from sddcompress.engine import captured_step

    eager = trainer.run(_config(tmp_path / "eager", teacher_ckpt, "sdd-dkd", step="eager"), **QUIET)

    def refuse(self):
        raise captured_step.CaptureFailed("RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(trainer, "_use_graph_step", lambda cfg, acc, say: True)
    monkeypatch.setattr(captured_step.CapturedStep, "_record", refuse)
    monkeypatch.setattr(trainer, "CapturedStep",
                        lambda *a, **k: captured_step.CapturedStep(*a, **{**k, "capture": True}))
    said: list[str] = []
    fallen = trainer.run(_config(tmp_path / "graph", teacher_ckpt, "sdd-dkd"), echo=said.append)
    notes = [line for line in said if line.startswith("training step:")]
    assert notes == ["training step: eager, the CUDA graph could not be recorded (RuntimeError: operation not "
                     "permitted when stream is capturing); --step eager skips the try"]
    a, b = (load_checkpoint(r.latest)["model"]["state_dict"] for r in (eager, fallen))
    assert all(torch.equal(a[k], b[k]) for k in a)
