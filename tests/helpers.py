"""Helpers the test modules share: quiet runs, weight comparisons, the tiny SDD config, one-line errors."""

from __future__ import annotations

import torch

from conftest import TINY
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig

QUIET = dict(echo=lambda s: None)


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]["state_dict"]


def assert_same_weights(a, b, atol=0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            diff = (wa[k].double() - wb[k].double()).abs().max().item()
            assert diff <= atol * (1 + wa[k].double().abs().max().item()), f"{k}: max abs difference {diff:.3g}"


def sdd_config(out, teacher_ckpt, **over) -> TrainConfig:
    values = {**TINY, "model": "resnet20", "teacher": "resnet20", "teacher_ckpt": teacher_ckpt,
              "method": "sdd-dkd", "warmup_epochs": 1.0, "out": str(out), **over}
    return TrainConfig(**values)


def assert_one_line_error(result, *fragments: str) -> None:
    code, _, err = result
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
