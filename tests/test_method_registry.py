"""The method registry: a method registered from this file alone trains through the CLI, editing nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_args
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.losses import Method, Outputs, make_method, method_names, register
from sddcompress.losses import registry


class RegionL2(Method):
    """A toy: squared distance between student and teacher local logits, ramped by the warm-up."""

    name = "toy-region-l2"
    summary = "a test method: squared distance of the SDD local logits"
    defaults = dict(ce_weight=0.5, kd_weight=2.0, warmup_epochs=1.0)
    options = ("ce_weight", "kd_weight", "warmup_epochs", "scales")
    needs_local_logits = True

    def loss(self, config, outputs: Outputs):
        distance = (outputs.student_local.float() - outputs.teacher_local.float()).pow(2).mean()
        return config.kd_weight * registry.ramp(config.warmup_epochs, outputs.epoch_progress) * distance, \
            {"region_l2": distance}


@pytest.fixture
def toy_method():
    register(RegionL2)
    yield RegionL2.name
    registry.unregister(RegionL2.name)


def test_a_registered_method_trains_through_the_cli(toy_method, cli, teacher_ckpt, tmp_path):
    assert toy_method in method_names()
    out = tmp_path / "toy"
    code, _, err = cli("distill", "--teacher", "resnet20", "--teacher-ckpt", teacher_ckpt, "--student", "resnet20",
                       "--method", toy_method, "--scales", "1,2", *tiny_args(epochs=2), "--out", str(out))
    assert code == 0, err
    ckpt = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert ckpt["method"]["name"] == toy_method and ckpt["method"]["scales"] == [1, 2]
    assert (ckpt["method"]["ce_weight"], ckpt["method"]["kd_weight"]) == (0.5, 2.0)  # its own defaults
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_region_l2"] > 0 for r in rows)
    # the loss is CE x 0.5 plus the ramped distance (the ramp is over after the first epoch)
    assert rows[1]["train_loss"] == pytest.approx(0.5 * rows[1]["train_ce"] + 2.0 * rows[1]["train_region_l2"],
                                                  rel=1e-5)


def test_a_registered_method_gets_the_networks_it_declares(toy_method):
    from sddcompress.engine.method_nets import method_networks
    from sddcompress.models import LocalLogits, build_model

    method = make_method(toy_method, scales="1,2")
    student, teacher = method_networks(build_model("resnet20", 10, 16), build_model("resnet20", 10, 16), 16, method,
                                       "resnet20", "resnet20")
    assert isinstance(student, LocalLogits) and isinstance(teacher, LocalLogits) and student.scales == (1, 2)
    logits, local = student(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and local.shape == (2, 10, 5)


def test_unknown_methods_are_refused_with_the_registered_choices(cli):
    code, _, err = cli("distill", "--method", "fitnet", "--teacher", "resnet20", *tiny_args())
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: unknown method 'fitnet'; choose one of ")
    assert all(name in line for name in method_names())


def test_a_combination_is_its_parts():
    both, sdd, msd = (make_method(n).spec for n in ("sdd-dkd+msdcrd", "sdd-dkd", "msdcrd"))
    assert both.parts == (sdd, msd)
    assert both.needs_local_logits and both.needs_msd and both.needs_teacher
    assert set(both.options) == set(sdd.options) | set(msd.options)
    assert make_method("sdd-dkd+msdcrd").kd_weight == make_method("sdd-dkd").kd_weight  # the earlier part wins
