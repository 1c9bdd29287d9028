"""MSDCRD-style (reconstructed) loss: slow loop references from the formulas, the CRD reduction, training runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig
from sddcompress.engine.method_nets import MSDNet, method_networks, split_outputs
from sddcompress.engine.trainer import run
from sddcompress.errors import UserError
from sddcompress.losses import Objective, make_method
from sddcompress.losses.msdcrd import RegionEmbedding, category_weights, feature_wise, msdcrd_loss, pool_regions
from sddcompress.models import build_model
from sddcompress.models.local_logits import region_pool

from conftest import TINY

SCALES = (1, 2, 4)


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def loop_windows(feature: torch.Tensor, scales, window: float) -> torch.Tensor:
    """Reference pooling, one region at a time, from the window formula in the module docstring."""
    _, _, h, w = feature.shape
    out = []
    for s in scales:
        for i in range(s):
            for j in range(s):
                def span(k, size):
                    if window == 1.0:
                        return math.floor(k * size / s), math.ceil((k + 1) * size / s)
                    centre, half = (k + 0.5) * size / s, window * size / (2 * s)
                    return max(0, math.floor(centre - half)), min(size, math.ceil(centre + half))
                (y0, y1), (x0, x1) = span(i, h), span(j, w)
                out.append(feature[:, :, y0:y1, x0:x1].mean(dim=(2, 3)))
    return torch.stack(out, dim=2)


def loop_sample_wise(s, t, w, tau):
    b, n, _ = s.shape
    total = 0.0
    for r in range(n):
        for i in range(b):
            logits = torch.stack([s[i, r] @ t[j, r] / tau for j in range(b)])
            total = total + w[i, r] * -(logits[i] - torch.log(torch.exp(logits).sum()))
    return total / (b * n)


def loop_feature_wise(s, t, w, tau, scales):
    b, n, _ = s.shape
    starts, first = [], 0
    for sc in scales:
        starts.append((first, first + sc * sc))
        first += sc * sc
    total, count = 0.0, 0
    for lo, hi in starts:
        if hi - lo == 1:
            continue
        for i in range(b):
            for r in range(lo, hi):
                logits = torch.stack([s[i, r] @ t[i, q] / tau for q in range(lo, hi)])
                total = total + w[i, r] * -(logits[r - lo] - torch.log(torch.exp(logits).sum()))
                count += 1
    return total / count


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (8, 8)])
def test_grid_pooling_is_sdds_region_pool(size):
    feature = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scales = tuple(s for s in SCALES if s <= min(size))
    adaptive = torch.cat([F.adaptive_avg_pool2d(feature, s).flatten(2) for s in scales], dim=2)  # torch's own bins
    torch.testing.assert_close(pool_regions(feature, scales), adaptive)
    torch.testing.assert_close(region_pool(feature, scales), adaptive)
    torch.testing.assert_close(pool_regions(feature, scales), loop_windows(feature, scales, 1.0))


def test_tables_first_built_in_inference_mode_serve_training_steps():
    feature = torch.randn(2, 3, 6, 6)
    embed = RegionEmbedding((1, 3), 1.5, "features", 3, 5)
    head = lambda r: r  # noqa: E731
    with torch.inference_mode():  # e.g. the teacher's forward or an evaluation comes first
        t_emb, _ = embed(feature, head)
        msdcrd_loss(t_emb, t_emb, torch.ones(2, 10), 0.1, (1, 3))
    s_emb, _ = embed(feature.requires_grad_(), head)
    msdcrd_loss(s_emb, t_emb.clone(), torch.ones(2, 10), 0.1, (1, 3))["msd_feature"].backward()
    assert feature.grad is not None and embed.projection.weight.grad is not None


def test_overlapping_windows_match_the_loop_reference_and_overlap():
    feature = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pooled = pool_regions(feature, SCALES, window=2.0)
    torch.testing.assert_close(pooled, loop_windows(feature, SCALES, 2.0))
    assert pooled.shape == (2, 3, 21)
    # scale 2 with windows twice the cell: every window spans 6 of 8 rows, so neighbours share pixels
    ones = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    ones[..., 3, 3] = 1.0  # a pixel inside the top-left cell's window and the top-right's
    covered = pool_regions(ones, (2,), window=2.0)[0, 0]
    assert (covered > 0).sum() == 4


def test_sample_and_feature_wise_match_loop_references_values_and_gradients():
    b, n, d, tau = 3, 21, 5, 0.07
    raw_s = torch.randn(b, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    t = unit(b, n, d, seed=3)
    w = torch.where(torch.rand(b, n, generator=torch.Generator().manual_seed(4)) < 0.3, 2.0, 1.0).double()
    fast = msdcrd_loss(F.normalize(raw_s, dim=2), t, w, tau, SCALES)
    ref_s = loop_sample_wise(F.normalize(raw_s, dim=2), t, w, tau)
    ref_f = loop_feature_wise(F.normalize(raw_s, dim=2), t, w, tau, SCALES)
    torch.testing.assert_close(fast["msd_sample"], ref_s)
    torch.testing.assert_close(fast["msd_feature"], ref_f)
    for fast_value, ref_value in ((fast["msd_sample"], ref_s), (fast["msd_feature"], ref_f)):
        g_fast, = torch.autograd.grad(fast_value, raw_s, retain_graph=True)
        g_ref, = torch.autograd.grad(ref_value, raw_s, retain_graph=True)
        torch.testing.assert_close(g_fast, g_ref)


def test_single_region_scales_have_no_feature_wise_term():
    s, t = unit(4, 5, 3, seed=5), unit(4, 5, 3, seed=6)
    per_region = feature_wise(s, t, 0.1, torch.tensor([0, 1, 1, 1, 1]))
    assert torch.all(per_region[:, 0] == 0)
    assert torch.all(per_region[:, 1:] > 0)
    assert msdcrd_loss(s[:, :1], t[:, :1], torch.ones(4, 1, dtype=torch.float64), 0.1, (1,))["msd_feature"] == 0


def test_category_weights_follow_the_sdd_rule():
    labels = torch.tensor([0, 1])
    teacher_logits = torch.tensor([[5.0, 0.0], [5.0, 0.0]])  # right on image 0, wrong on image 1
    # regions: image 0 -> right, wrong; image 1 -> right, wrong
    regions = torch.tensor([[[3.0, 0.0], [0.0, 3.0]], [[0.0, 3.0], [3.0, 0.0]]])
    weights = category_weights(regions, teacher_logits, labels, gamma=2.5)
    assert weights.tolist() == [[1.0, 2.5], [2.5, 1.0]]


def test_reduces_to_in_batch_crd_with_one_scale_and_no_feature_wise_term():
    torch.manual_seed(0)
    fs, ft = torch.randn(6, 8, 4, 4), torch.randn(6, 12, 4, 4)
    head_w = torch.randn(10, 12)
    embed_s = RegionEmbedding((1,), 1.0, "features", 8, 12)
    embed_t = RegionEmbedding((1,), 1.0, "features", 12, 12)
    assert embed_t.projection is None
    s_emb, _ = embed_s(fs, lambda r: torch.einsum("bcn,kc->bkn", r, torch.zeros(10, 8)))
    t_emb, t_region_logits = embed_t(ft, lambda r: torch.einsum("bcn,kc->bkn", r, head_w))
    method = make_method("msdcrd", msd_scales="1", msd_feature_weight=0.0, ce_weight=0.0, msd_ramp_epochs=0.0)
    labels = torch.arange(6) % 10
    teacher_logits = ft.mean(dim=(2, 3)) @ head_w.t()
    terms = Objective(method)(torch.zeros(6, 10), labels, teacher_logits=teacher_logits,
                              student_msd={"embedding": s_emb}, teacher_msd={"embedding": t_emb,
                                                                             "region_logits": t_region_logits})
    student = F.normalize(embed_s.projection(fs.mean(dim=(2, 3))), dim=1)
    teacher = F.normalize(ft.mean(dim=(2, 3)), dim=1)
    crd = F.cross_entropy(student @ teacher.t() / 0.07, torch.arange(6))
    torch.testing.assert_close(terms["msd_sample"], crd)
    torch.testing.assert_close(terms["loss"], 0.8 * crd)


def test_logit_space_is_parameter_free_and_uses_each_models_head():
    method = make_method("msdcrd", msd_space="logits")
    student, teacher = build_model("resnet20", 10, 16).eval(), build_model("resnet8x4", 10, 16).eval()
    s_net, t_net = method_networks(student, teacher, 16, method, "resnet20", "resnet8x4")
    assert list(s_net.msd.parameters()) == []
    x = torch.randn(2, 3, 16, 16)
    logits, local, msd = split_outputs(s_net(x))
    assert local is None and msd["embedding"].shape == (2, 21, 10)
    torch.testing.assert_close(msd["region_logits"][:, 0], logits, rtol=1e-4, atol=1e-5)  # region 0 = the whole map
    torch.testing.assert_close(msd["embedding"], F.normalize(msd["region_logits"], dim=2))


def test_feature_space_projects_the_student_to_the_teachers_width():
    method = make_method("sdd-dkd+msdcrd")
    s_net, t_net = method_networks(build_model("resnet20", 10, 16), build_model("resnet8x4", 10, 16), 16, method,
                                   "resnet20", "resnet8x4")
    assert isinstance(s_net, MSDNet) and s_net.msd.projection.weight.shape == (256, 64)
    assert t_net.msd.projection is None
    logits, local, msd = split_outputs(s_net(torch.randn(2, 3, 16, 16)))
    assert local.shape == (2, 10, 21) and msd["embedding"].shape == (2, 21, 256)
    torch.testing.assert_close(msd["embedding"].norm(dim=2), torch.ones(2, 21))


def test_objective_terms_and_ramps():
    torch.manual_seed(0)
    b, k, n, d = 4, 10, 21, 6
    y = torch.randint(0, k, (b,))
    s_msd = {"embedding": unit(b, n, d, seed=7).float()}
    t_msd = {"embedding": unit(b, n, d, seed=8).float(), "region_logits": torch.randn(b, n, k)}
    s_local, t_local = torch.randn(b, k, n), torch.randn(b, k, n)
    kwargs = dict(teacher_logits=t_local[:, :, 0], student_local=s_local, teacher_local=t_local,
                  student_msd=s_msd, teacher_msd=t_msd)
    both = Objective(make_method("sdd-dkd+msdcrd"))
    at_start = both(s_local[:, :, 0], y, epoch_progress=0.0, **kwargs)
    assert set(at_start) == {"ce", "tckd", "nckd", "distill", "msd_sample", "msd_feature", "loss"}
    torch.testing.assert_close(at_start["loss"], at_start["ce"])
    half = both(s_local[:, :, 0], y, epoch_progress=10.0, **kwargs)
    msd = 0.8 * half["msd_sample"] + 0.8 * half["msd_feature"]
    torch.testing.assert_close(half["loss"], half["ce"] + 0.5 * half["distill"] + 0.5 * msd)
    alone = Objective(make_method("msdcrd"))(s_local[:, :, 0], y, epoch_progress=40.0, **kwargs)
    assert set(alone) == {"ce", "msd_sample", "msd_feature", "loss"}
    torch.testing.assert_close(alone["loss"], alone["ce"] + 0.8 * alone["msd_sample"] + 0.8 * alone["msd_feature"])
    no_categories = Objective(make_method("msdcrd", msd_categorise="none"))(s_local[:, :, 0], y, epoch_progress=40.0,
                                                                          **kwargs)
    ones = torch.ones(b, n)
    expected = msdcrd_loss(s_msd["embedding"], t_msd["embedding"], ones, 0.07, SCALES)
    torch.testing.assert_close(no_categories["msd_sample"], expected["msd_sample"])


@pytest.mark.parametrize("override, message", [
    (dict(msd_window=0.5), "--msd-window"), (dict(msd_space="pixels"), "--msd-space"),
    (dict(msd_categorise="all"), "--msd-categorise"), (dict(msd_tau=0.0), "--msd-tau"),
    (dict(msd_scales="1,x"), "--msd-scales"),
])
def test_bad_options_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message):
        make_method("msdcrd", **override)


@pytest.mark.parametrize("method, student", [("msdcrd", "resnet8x4"), ("sdd-dkd+msdcrd", "resnet20")])
def test_tiny_training_run_logs_terms_and_keeps_the_projection_out_of_the_model(tmp_path, teacher_ckpt, method,
                                                                                student):
    cfg = dict(TINY, model=student, teacher="resnet20", teacher_ckpt=teacher_ckpt, method=method,
               max_train_batches=2, out=str(tmp_path / "run"))
    result = run(TrainConfig(**cfg), echo=lambda s: None)
    record = json.loads((result.out / "metrics.jsonl").read_text().splitlines()[0])
    for term in ("train_ce", "train_msd_sample", "train_msd_feature", "train_loss"):
        assert math.isfinite(record[term]), term
    ckpt = load_checkpoint(result.latest)
    assert not any("msd" in key or "projection" in key for key in ckpt["model"]["state_dict"])
    plain = build_model(student, 10, 16)
    plain.load_state_dict(ckpt["model"]["state_dict"])  # the exported model is the student alone
    projection = ckpt["train_only"]
    if student == "resnet8x4":  # 256 -> the teacher's 64 channels; its momentum is in the optimiser
        assert projection["projection.weight"].shape == (64, 256)
        n_params = len(list(plain.parameters()))
        assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == n_params + 2
        resumed = run(TrainConfig(**{**cfg, "epochs": 2}), echo=lambda s: None)
        straight = run(TrainConfig(**{**cfg, "epochs": 2, "out": str(tmp_path / "straight")}), echo=lambda s: None)
        a, b = load_checkpoint(resumed.latest), load_checkpoint(straight.latest)
        torch.testing.assert_close(a["train_only"], b["train_only"], rtol=0, atol=0)  # resumed, not re-initialised
        assert not torch.equal(a["train_only"]["projection.weight"], projection["projection.weight"])
    else:
        assert projection == {}
