"""Scale decoupled distillation (Wei et al., CVPR 2024): a per-sample loss over local logits.

Every region of every sample is one row of a single (B*N, K) batch, so the per-region KD or DKD
terms are one vectorised expression, whatever the number of scales.
"""

from __future__ import annotations

from typing import Callable

import torch

from .dkd import DKD
from .kd import KD
from .registry import Method, Outputs, logit_term, register

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def flatten_regions(local: torch.Tensor) -> torch.Tensor:
    """(B, K, N) -> (B*N, K): the N regions of sample 0, then those of sample 1, ...

    A view (no copy) when `local` is the (B, K, N) transpose of a contiguous (B, N, K) tensor, which is
    how `LocalLogits` returns it."""
    b, k, n = local.shape
    return local.transpose(1, 2).reshape(b * n, k)


def region_weights(teacher_local: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weights (B, N): 1 where a region's teacher correctness equals the global one, gamma otherwise."""
    correct = teacher_local.argmax(dim=1).eq(labels[:, None])  # (B, N)
    return torch.where(correct.eq(correct[:, :1]), 1.0, float(gamma)).to(teacher_local.dtype)


def sdd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
             per_sample: PerSampleLoss, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """sum_i w_i l_i / (N*B) for each term of `per_sample` (a dict of (B*N,) losses)."""
    b, _, n = student_local.shape
    region_labels = labels[:, None].expand(b, n).reshape(b * n)
    terms = per_sample(flatten_regions(student_local), flatten_regions(teacher_local), region_labels)
    w = region_weights(teacher_local, labels, gamma).view(b * n)
    return {name: (w * value).sum() / (n * b) for name, value in terms.items()}


class _RegionKD(torch.autograd.Function):
    """sum_i w_i T^2 KL(p_t,i || p_s,i) over (M, K) rows; its gradient written out (one expression each way)."""

    @staticmethod
    def forward(ctx, student, teacher, weights, temperature):
        log_ps = torch.log_softmax(student / temperature, 1)
        log_pt = torch.log_softmax(teacher / temperature, 1)
        p_t = log_pt.exp()
        ctx.save_for_backward(log_ps, p_t, weights)
        ctx.temperature = temperature
        return temperature**2 * (weights * (p_t * (log_pt - log_ps)).sum(1)).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        log_ps, p_t, weights = ctx.saved_tensors
        # d/dz_s of T^2 KL = T (p_s - p_t) for logits z_s (the 1/T of the softmax input included)
        return (grad * ctx.temperature) * weights[:, None] * (log_ps.exp() - p_t), None, None, None


class _RegionDKD(torch.autograd.Function):
    """(sum_i w_i T^2 alpha TCKD_i, sum_i w_i T^2 beta NCKD_i) over (M, K) rows; gradient written out.

    With log-probabilities l = log_softmax(z / T), the target's y, and r = log(1 - p_y) (the
    log-sum-exp of l over the other classes): TCKD_i is the KL of the binary (p_y, 1 - p_y)
    distributions, t_y (l_t,y - l_s,y) + t_r (r_t - r_s), and NCKD_i the KL of the non-target
    distributions q = exp(l - r), sum_k q_t,k (l_t,k - l_s,k) - (r_t - r_s). Their gradients in
    the student logits are (p_k - [k = y] t_y - [k != y] t_r q_s,k) / T and [k != y] (q_s,k - q_t,k) / T.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, weights, temperature, alpha, beta):
        target = labels[:, None].eq(torch.arange(student.shape[1], device=labels.device))
        log_ps = torch.log_softmax(student / temperature, 1)
        log_pt = torch.log_softmax(teacher / temperature, 1)
        index = labels[:, None]
        ys, yt = log_ps.gather(1, index), log_pt.gather(1, index)  # (M, 1)
        rs = torch.logsumexp(log_ps.masked_fill(target, float("-inf")), 1, keepdim=True)
        rt = torch.logsumexp(log_pt.masked_fill(target, float("-inf")), 1, keepdim=True)
        ty, tr = yt.exp(), rt.exp()
        tckd = ty * (yt - ys) + tr * (rt - rs)
        q_t = (log_pt - rt).exp().masked_fill(target, 0.0)
        nckd = (q_t * (log_pt - log_ps)).sum(1, keepdim=True) - (rt - rs)
        w = weights[:, None]
        ctx.save_for_backward(target, log_ps, rs, ty, tr, q_t, w)
        ctx.scales = (temperature, alpha, beta)
        t2 = temperature**2
        return t2 * alpha * (w * tckd).sum(), t2 * beta * (w * nckd).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_tckd, grad_nckd):
        target, log_ps, rs, ty, tr, q_t, w = ctx.saved_tensors
        temperature, alpha, beta = ctx.scales
        q_s = (log_ps - rs).exp().masked_fill(target, 0.0)
        tckd = (grad_tckd * alpha) * (log_ps.exp() - torch.where(target, ty, tr * q_s))
        nckd = (grad_nckd * beta) * (q_s - q_t)
        return (temperature * w) * (tckd + nckd), None, None, None, None, None, None


def _flat_weights(teacher_local: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """`region_weights` as (B*N,) rows matching `flatten_regions`, divided by N*B (the mean over regions)."""
    b, _, n = teacher_local.shape
    return region_weights(teacher_local, labels, gamma).view(b * n) / (n * b)


def sdd_kd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
                temperature: float, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """`sdd_loss` with the KD term, as one fused expression: {"kd"}."""
    w = _flat_weights(teacher_local, labels, gamma)
    return {"kd": _RegionKD.apply(flatten_regions(student_local), flatten_regions(teacher_local), w, temperature)}


def sdd_dkd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
                 temperature: float, alpha: float, beta: float, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """`sdd_loss` with the DKD terms, as one fused expression: {"tckd", "nckd"}."""
    b, _, n = student_local.shape
    w = _flat_weights(teacher_local, labels, gamma)
    region_labels = labels[:, None].expand(b, n).reshape(b * n)
    tckd, nckd = _RegionDKD.apply(flatten_regions(student_local), flatten_regions(teacher_local), region_labels, w,
                                  temperature, alpha, beta)
    return {"tckd": tckd, "nckd": nckd}


@register
class SDDKD(Method):
    """Wei et al.: KD on every region of the multi-scale local logits, complementary regions x gamma."""

    name = "sdd-kd"
    summary = "scale-decoupled KD (every region of --scales, complementary ones x --gamma)"
    defaults = KD.defaults
    options = KD.options + ("gamma", "scales")
    needs_local_logits = True

    def loss(self, config, outputs: Outputs):
        parts = sdd_kd_loss(outputs.student_local.float(), outputs.teacher_local.float(), outputs.labels,
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
        parts = sdd_dkd_loss(outputs.student_local.float(), outputs.teacher_local.float(), outputs.labels,
                             config.temperature, config.alpha, config.beta, config.gamma)
        return logit_term(config, outputs, parts)
