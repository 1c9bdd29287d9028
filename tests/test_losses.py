"""KD, DKD and SDD against slow references written from the formulas in the spec."""

import pytest
import torch

from sddcompress.errors import UserError
from sddcompress.losses import (
    Objective, dkd_per_sample, kd_per_sample, make_method, parse_scales, ramp, region_weights, sdd_loss,
)

T = 4.0


def softmax(v):
    e = torch.exp(v - v.max())
    return e / e.sum()


def kd_ref(zs, zt, y, temperature=T):
    out = []
    for b in range(zs.shape[0]):
        ps, pt = softmax(zs[b] / temperature), softmax(zt[b] / temperature)
        out.append(temperature**2 * (pt * torch.log(pt / ps)).sum())
    return torch.stack(out)


def dkd_ref(zs, zt, y, temperature=T, alpha=1.0, beta=8.0):
    out = []
    for b in range(zs.shape[0]):
        k = int(y[b])
        ps, pt = softmax(zs[b] / temperature), softmax(zt[b] / temperature)
        bs = torch.stack([ps[k], 1 - ps[k]])
        bt = torch.stack([pt[k], 1 - pt[k]])
        tckd = (bt * torch.log(bt / bs)).sum()
        rest = [j for j in range(zs.shape[1]) if j != k]
        qs, qt = softmax(zs[b, rest] / temperature), softmax(zt[b, rest] / temperature)
        nckd = (qt * torch.log(qt / qs)).sum()
        out.append(temperature**2 * (alpha * tckd + beta * nckd))
    return torch.stack(out)


def sdd_ref(ls, lt, y, base, gamma=2.0):
    b_count, _, n_count = ls.shape
    total = 0.0
    for n in range(n_count):
        for b in range(b_count):
            loss = base(ls[b : b + 1, :, n], lt[b : b + 1, :, n], y[b : b + 1])[0]
            c = int(lt[b, :, n].argmax() == y[b])
            g = int(lt[b, :, 0].argmax() == y[b])
            total = total + (1.0 if c == g else gamma) * loss
    return total / (n_count * b_count)


def four_category_case(seed=0, b=6, k=7, n=5):
    """Teacher local logits where consistent/complementary x right/wrong regions all occur."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (b,), generator=g)
    lt = torch.randn(b, k, n, generator=g, dtype=torch.float64)
    pattern = torch.rand(b, n, generator=g) < 0.5
    if n == 5:
        pattern[0] = torch.tensor([True, True, False, True, False])   # global right: both kinds of region
        pattern[1] = torch.tensor([False, True, False, False, True])  # global wrong: both kinds of region
    for i in range(b):
        for r in range(n):
            wrong = (int(y[i]) + 1) % k
            lt[i, int(y[i]) if pattern[i, r] else wrong, r] += 10.0
    ls = torch.randn(b, k, n, generator=g, dtype=torch.float64, requires_grad=True)
    return ls, lt, y


def test_case_has_all_four_categories():
    _, lt, y = four_category_case()
    correct = lt.argmax(1) == y[:, None]
    glob = correct[:, :1].expand_as(correct)
    cats = {(bool(gv), bool(cv)) for gv, cv in zip(glob.flatten(), correct.flatten())}
    assert cats == {(True, True), (True, False), (False, True), (False, False)}


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_base_losses_match_reference_values_and_grads(name):
    ls, lt, y = four_category_case()
    zs, zt = ls[:, :, 0], lt[:, :, 0]
    if name == "kd":
        ours, ref = kd_per_sample(zs, zt, T)["kd"], kd_ref(zs, zt, y)
    else:
        parts = dkd_per_sample(zs, zt, y, T, 1.0, 8.0)
        ours, ref = parts["tckd"] + parts["nckd"], dkd_ref(zs, zt, y)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), ls)
    (g_ref,) = torch.autograd.grad(ref.sum(), ls)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_dkd_alpha_beta_scale_the_two_parts():
    ls, lt, y = four_category_case()
    a = dkd_per_sample(ls[:, :, 0], lt[:, :, 0], y, T, 1.0, 1.0)
    b = dkd_per_sample(ls[:, :, 0], lt[:, :, 0], y, T, 3.0, 0.5)
    torch.testing.assert_close(b["tckd"], 3.0 * a["tckd"])
    torch.testing.assert_close(b["nckd"], 0.5 * a["nckd"])


@pytest.mark.parametrize("name", ["kd", "dkd"])
@pytest.mark.parametrize("gamma", [2.0, 3.5])
def test_sdd_matches_reference_values_and_grads(name, gamma):
    ls, lt, y = four_category_case()
    if name == "kd":
        per_sample, base = (lambda s, t, yy: kd_per_sample(s, t, T)), kd_ref
    else:
        per_sample, base = (lambda s, t, yy: dkd_per_sample(s, t, yy, T, 1.0, 8.0)), dkd_ref
    ours = sum(sdd_loss(ls, lt, y, per_sample, gamma).values())
    ref = sdd_ref(ls, lt, y, base, gamma)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, ls)
    (g_ref,) = torch.autograd.grad(ref, ls)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_sdd_weights_pick_complementary_regions():
    _, lt, y = four_category_case()
    w = region_weights(lt, y, 2.0).t()  # (N, B), region-major
    assert w[:, 0].tolist() == [1.0, 1.0, 2.0, 1.0, 2.0]
    assert w[:, 1].tolist() == [1.0, 2.0, 1.0, 1.0, 2.0]


def test_sdd_with_single_scale_equals_base_loss_exactly():
    ls, lt, y = four_category_case(n=1)
    for per_sample in (lambda s, t, yy: kd_per_sample(s, t, T),
                       lambda s, t, yy: dkd_per_sample(s, t, yy, T, 1.0, 8.0)):
        sdd = sdd_loss(ls, lt, y, per_sample)
        base = {k: v.mean() for k, v in per_sample(ls[:, :, 0], lt[:, :, 0], y).items()}
        for key in base:
            assert torch.equal(sdd[key], base[key])


def test_objective_combines_terms_with_method_defaults():
    ls, lt, y = four_category_case()
    zs, zt = ls[:, :, 0], lt[:, :, 0]
    ce = torch.nn.functional.cross_entropy(zs.float(), y)
    kd = Objective(make_method("kd"))(zs, y, teacher_logits=zt)
    torch.testing.assert_close(kd["loss"], 0.1 * ce + 0.9 * kd_ref(zs, zt, y).mean().float())
    dkd = Objective(make_method("sdd-dkd"))
    half = dkd(zs, y, teacher_logits=zt, student_local=ls, teacher_local=lt, epoch_progress=10.0)
    full = dkd(zs, y, teacher_logits=zt, student_local=ls, teacher_local=lt, epoch_progress=25.0)
    sdd = sdd_ref(ls, lt, y, dkd_ref).float()
    torch.testing.assert_close(half["loss"], ce + 0.5 * sdd)
    torch.testing.assert_close(full["loss"], ce + sdd)
    assert set(full) == {"ce", "tckd", "nckd", "distill", "loss"}


def test_objective_never_hides_a_non_finite_loss():
    zs = torch.tensor([[float("nan"), 0.0, 1.0]])
    out = Objective(make_method("kd"))(zs, torch.tensor([0]), teacher_logits=torch.zeros(1, 3))
    assert not torch.isfinite(out["loss"])


def test_ramp_is_linear_over_warmup():
    m = make_method("dkd")
    assert [ramp(m, e) for e in (0, 5, 20, 40)] == [0.0, 0.25, 1.0, 1.0]
    assert ramp(make_method("kd"), 0) == 1.0


def test_method_defaults_and_overrides():
    assert (make_method("sdd-kd").ce_weight, make_method("sdd-kd").kd_weight) == (0.1, 0.9)
    m = make_method("sdd-dkd", beta=2.0, temperature=None, scales="1,2")
    assert (m.beta, m.temperature, m.scales, m.warmup_epochs) == (2.0, 4.0, (1, 2), 20.0)
    with pytest.raises(UserError, match="unknown method 'fitnet'"):
        make_method("fitnet")
    with pytest.raises(UserError, match="positive integers"):
        parse_scales("1,0")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_sdd_losses_equal_the_per_region_composition(seed):
    """The objective's fused SDD-KD / SDD-DKD (gradients written out) against sdd_loss over the per-sample
    KD / DKD, values and gradients in float64; the four-category case covers both region weights."""
    from sddcompress.losses import sdd_dkd_loss, sdd_kd_loss

    ls, lt, y = four_category_case(seed)
    lt = lt * 0.5  # softer teacher: the non-target terms matter
    cases = [(lambda: sdd_dkd_loss(ls, lt, y, T, 1.5, 8.0, 2.0),
              lambda: sdd_loss(ls, lt, y, lambda s, t, yy: dkd_per_sample(s, t, yy, T, 1.5, 8.0), 2.0)),
             (lambda: sdd_kd_loss(ls, lt, y, T, 2.0), lambda: sdd_loss(ls, lt, y, lambda s, t, yy: kd_per_sample(s, t, T), 2.0))]
    for fused, composed in cases:
        got, want = fused(), composed()
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)
            (g_got,) = torch.autograd.grad(got[name], ls, retain_graph=True)
            (g_want,) = torch.autograd.grad(want[name], ls, retain_graph=True)
            torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
            assert g_got.abs().max() > 0


def test_fused_sdd_dkd_keeps_float32_precision_for_a_confident_teacher():
    """1 - p_y is summed over the other classes, not taken as a difference: with the teacher at p_y ~ 1 - 1e-6
    in every region the float32 fused loss and gradient follow the float64 composition (a difference
    1 - p_y would have no correct digit left there)."""
    from sddcompress.losses import sdd_dkd_loss

    ls, lt, y = four_category_case(4)
    lt = lt.detach().clone()
    for i in range(lt.shape[0]):
        lt[i, int(y[i]), :] = lt[i].max() + 4.0 * 16.0  # a margin of 16 at T=4
    ls = (lt * 0.6).requires_grad_()
    want = sdd_loss(ls, lt, y, lambda s, t, yy: dkd_per_sample(s, t, yy, T, 1.0, 8.0), 2.0)
    ls32 = ls.detach().float().requires_grad_()
    got = sdd_dkd_loss(ls32, lt.float(), y, T, 1.0, 8.0, 2.0)
    for name in want:
        assert want[name] > 0
        torch.testing.assert_close(got[name].double(), want[name], rtol=2e-3, atol=0.0)
    (g_want,) = torch.autograd.grad(sum(want.values()), ls)
    (g_got,) = torch.autograd.grad(sum(got.values()), ls32)
    torch.testing.assert_close(g_got.double(), g_want, rtol=2e-3, atol=1e-4 * float(g_want.abs().max()))


def test_fused_sdd_dkd_stays_finite_when_every_other_class_underflows():
    """A teacher so sure that exp underflows for every other class in float32: the loss and its gradient
    stay finite (1 - p_y is kept above 0 by 1e-38)."""
    from sddcompress.losses import sdd_dkd_loss

    ls, lt, y = four_category_case(5)
    lt = lt.detach().float()
    for i in range(lt.shape[0]):
        lt[i, int(y[i]), :] = 500.0
    ls32 = ls.detach().float().requires_grad_()
    got = sdd_dkd_loss(ls32, lt, y, 1.0, 1.0, 8.0, 2.0)
    (grad,) = torch.autograd.grad(sum(got.values()), ls32)
    assert all(torch.isfinite(v) for v in got.values()) and torch.isfinite(grad).all()


def test_fused_sdd_dkd_gradient_passes_gradcheck():
    from sddcompress.losses import sdd_dkd_loss, sdd_kd_loss

    ls, lt, y = four_category_case(3, b=3, k=5, n=5)
    assert torch.autograd.gradcheck(lambda s: sum(sdd_dkd_loss(s, lt, y, T, 1.0, 8.0, 2.0).values()), (ls,))
    assert torch.autograd.gradcheck(lambda s: sdd_kd_loss(s, lt, y, T, 2.0)["kd"], (ls,))
