"""Scale decoupled distillation (Wei et al., CVPR 2024): a per-sample loss over local logits.

`sdd_loss` states it: every region of every sample is one row of a (B*N, K) batch for KD's or DKD's
per-sample loss. The methods train with `sdd_kd_loss` and `sdd_dkd_loss`, the same values as one
expression each over the (B, K, N) local logits, with the gradient written out: few operators per step,
whatever the number of scales. Student and teacher are stacked once as (B, 2, N, K), so every softmax,
sum and argmax runs over contiguous classes.
"""

from __future__ import annotations

from typing import Callable

import torch

from .dkd import DKD
from .kd import KD
from .registry import Method, Outputs, logit_term, register

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def flatten_regions(local: torch.Tensor) -> torch.Tensor:
    """(B, K, N) -> (B*N, K): the N regions of sample 0, then those of sample 1, ... (a copy unless `local` is
    the transpose of a contiguous (B, N, K) tensor)."""
    b, k, n = local.shape
    return local.transpose(1, 2).reshape(b * n, k)


def region_weights(teacher_local: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weights (B, N): 1 where a region's teacher correctness equals the global one, gamma otherwise."""
    return _weights(teacher_local.argmax(dim=1), labels.view(-1, 1), gamma, teacher_local.dtype)


def _weights(teacher_classes: torch.Tensor, labels: torch.Tensor, gamma: float, dtype: torch.dtype,
             region_axis: int = -1) -> torch.Tensor:
    """1 + (gamma - 1) [correct != correct of region 0], regions on `region_axis` of `teacher_classes`."""
    correct = teacher_classes.eq(labels)
    weights = correct.ne(correct.narrow(region_axis, 0, 1)) * (float(gamma) - 1.0) + 1.0  # float32, whatever `dtype`
    return weights if weights.dtype == dtype else weights.to(dtype)


def sdd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
             per_sample: PerSampleLoss, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """sum_i w_i l_i / (N*B) for each term of `per_sample` (a dict of (B*N,) losses)."""
    b, _, n = student_local.shape
    region_labels = labels[:, None].expand(b, n).reshape(b * n)
    terms = per_sample(flatten_regions(student_local), flatten_regions(teacher_local), region_labels)
    w = region_weights(teacher_local, labels, gamma).view(b * n)
    return {name: (w * value).sum() / (n * b) for name, value in terms.items()}


# the target's entry of log p before the sum over the other classes that gives 1 - p_y, so that sum is never
# 0 (it moves by exp(-80) = 2e-35, a normal float32: exp is slow where its result is subnormal)
_LOG_FLOOR = -80.0


def _stacked_regions(student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """From (B, K, N) local logits: log-probabilities (B, 2: student, teacher; N, K) at `temperature`, one
    region per row with the classes contiguous, and the teacher's class per region (B, N, 1)."""
    z = torch.stack((student.transpose(1, 2), teacher.transpose(1, 2)), 1)
    teacher_classes = z[:, 1].argmax(2, keepdim=True)
    return torch.log_softmax(z.div_(temperature), 3), teacher_classes


def _transposed_result(like: torch.Tensor, b: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, K, N) gradient buffer and its (B, N, K) view: the last operator of a backward writes through
    the view, so the gradient leaves in the local logits' own layout without a copy."""
    grad = like.new_empty(b, k, n)
    return grad, grad.transpose(1, 2)


class _RegionKD(torch.autograd.Function):
    """sum_i w_i T^2 KL(p_t,i || p_s,i) / (N*B) over the regions of (B, K, N) local logits, w_i the SDD region
    weights; student and teacher go through the softmax as one stacked tensor, the gradient is written out."""

    @staticmethod
    def forward(ctx, student, teacher, labels, gamma, temperature):
        b, k, n = student.shape
        log_p, teacher_classes = _stacked_regions(student, teacher, temperature)
        log_ps, log_pt = log_p.unbind(1)
        gap = log_pt - log_ps  # taken before the in-place exp below
        p = log_p.exp_()
        w = _weights(teacher_classes, labels.view(b, 1, 1), gamma, student.dtype, region_axis=1)  # (B, N, 1)
        ctx.save_for_backward(p, w)
        ctx.scale = temperature / (n * b)
        return (p[:, 1] * gap * w).sum() * (temperature**2 / (n * b))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, w = ctx.saved_tensors
        b, _, n, k = p.shape
        result, result_t = _transposed_result(p, b, k, n)
        # d/dz_s of T^2 KL = T (p_s - p_t) for logits z_s (the 1/T of the softmax input included)
        ps, pt = p.unbind(1)
        torch.mul(ps - pt, w * (grad * ctx.scale), out=result_t)
        return result, None, None, None, None


class _RegionDKD(torch.autograd.Function):
    """(sum_i w_i T^2 alpha TCKD_i, sum_i w_i T^2 beta NCKD_i) / (N*B) over the regions of (B, K, N) local
    logits; student and teacher go through each step as one stacked tensor, the gradient is written out.

    Per region, with p = softmax(z / T) over the K classes, y the target and r = 1 - p_y, summed over the
    other classes (exact however close p_y is to 1): TCKD is the KL of the binary distributions (p_y, r),
    and NCKD the KL of the non-target distributions q = p / r (q_y = 0), sum_k q_t,k (log p_t,k - log p_s,k)
    - (log r_t - log r_s). The gradient in the student logits z_k is alpha (r_t - r_s) / T at the target
    and (alpha (r_s - r_t) q_s,k + beta (q_s,k - q_t,k)) / T elsewhere.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, gamma, temperature, alpha, beta):
        b, k, n = student.shape
        log_p, teacher_classes = _stacked_regions(student, teacher, temperature)  # (B, 2, N, K)
        target = labels.view(b, 1, 1, 1).expand(b, 2, n, 1)  # the target's index in every region
        log_py = log_p.gather(3, target)  # (B, 2, N, 1)
        log_ps, log_pt = log_p.unbind(1)
        gap = log_pt - log_ps  # (B, N, K), taken before the in-place steps below
        q = log_p.scatter_(3, target, _LOG_FLOOR).exp_()  # p, 0 (2e-35) at the target
        r = q.sum(3, keepdim=True)  # (B, 2, N, 1)
        q.div_(r)
        lb_s, lb_t = torch.cat((log_py, r.log()), 3).unbind(1)  # (B, N, 2): log (p_y, r)
        lb_gap = lb_t - lb_s
        w = _weights(teacher_classes, labels.view(b, 1, 1), gamma, student.dtype, region_axis=1)  # (B, N, 1)
        tckd = (lb_t.exp() * lb_gap * w).sum()
        nckd = (((q[:, 1] * gap).sum(2, keepdim=True) - lb_gap[..., 1:]) * w).sum()
        # the backward's one expression, q_s (c_b - c_a d) - q_t c_b with c_a, c_b the TCKD and NCKD coefficients
        # and d = r_t - r_s, gives the target's c_a d where q_y = -1 on both sides
        q.scatter_(3, target, -1.0)
        ctx.save_for_backward(q, r, w)
        ctx.scales = (alpha * temperature / (n * b), beta * temperature / (n * b))
        per_region = temperature**2 / (n * b)
        return tckd * (per_region * alpha), nckd * (per_region * beta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_tckd, grad_nckd):
        q, r, w = ctx.saved_tensors
        b, _, n, k = q.shape
        c_a = w * (grad_tckd * ctx.scales[0])  # (B, N, 1)
        c_b = w * (grad_nckd * ctx.scales[1])
        rs, rt = r.unbind(1)
        qs, qt = q.unbind(1)
        result, result_t = _transposed_result(q, b, k, n)
        # qs (c_b - c_a (rt - rs)) - qt c_b; at the target (q = -1 there) c_a (rt - rs)
        torch.addcmul(qs * torch.addcmul(c_b, c_a, rt - rs, value=-1.0), qt, c_b, value=-1.0, out=result_t)
        return result, None, None, None, None, None, None


def sdd_kd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
                temperature: float, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """`sdd_loss` with the KD term, as one fused expression over (B, K, N) local logits: {"kd"}."""
    return {"kd": _RegionKD.apply(student_local, teacher_local, labels, gamma, temperature)}


def sdd_dkd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
                 temperature: float, alpha: float, beta: float, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """`sdd_loss` with the DKD terms, as one fused expression over (B, K, N) local logits: {"tckd", "nckd"}."""
    tckd, nckd = _RegionDKD.apply(student_local, teacher_local, labels, gamma, temperature, alpha, beta)
    return {"tckd": tckd, "nckd": nckd}


def _float32(local: torch.Tensor) -> torch.Tensor:
    """`local.float()`, without dispatching a no-op conversion (the teacher's are inference tensors, for
    which even that is an operator call)."""
    return local if local.dtype == torch.float32 else local.float()


@register
class SDDKD(Method):
    """Wei et al.: KD on every region of the multi-scale local logits, complementary regions x gamma."""

    name = "sdd-kd"
    summary = "scale-decoupled KD (every region of --scales, complementary ones x --gamma)"
    defaults = KD.defaults
    options = KD.options + ("gamma", "scales")
    needs_local_logits = True

    def loss(self, config, outputs: Outputs):
        parts = sdd_kd_loss(_float32(outputs.student_local), _float32(outputs.teacher_local), outputs.labels,
                            config.temperature, config.gamma)
        return logit_term(config, outputs, parts)


@register
class SDDDKD(Method):
    """Wei et al.: DKD on every region of the multi-scale local logits, complementary regions x gamma."""

    name = "sdd-dkd"
    summary = "scale-decoupled DKD (the default)"
    defaults = DKD.defaults
    options = DKD.options + ("gamma", "scales")
    needs_local_logits = True

    def loss(self, config, outputs: Outputs):
        parts = sdd_dkd_loss(_float32(outputs.student_local), _float32(outputs.teacher_local), outputs.labels,
                             config.temperature, config.alpha, config.beta, config.gamma)
        return logit_term(config, outputs, parts)
