"""Scale decoupled distillation (Wei et al., CVPR 2024): a per-sample loss over local logits.

`sdd_loss` states it: every region of every sample is one row of a (B*N, K) batch for KD's or DKD's
per-sample loss. The methods train with `sdd_kd_loss` and `sdd_dkd_loss`, the same values as one
expression each over the (B, K, N) local logits, with the gradient written out: few operators per step,
whatever the number of scales.
"""

from __future__ import annotations

from functools import lru_cache
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


def _weights(teacher_classes: torch.Tensor, labels: torch.Tensor, gamma: float, dtype: torch.dtype) -> torch.Tensor:
    """1 + (gamma - 1) [correct != correct of region 0], regions on the last axis of `teacher_classes`."""
    correct = teacher_classes.eq(labels)
    weights = correct.ne(correct[..., :1]) * (float(gamma) - 1.0) + 1.0  # float32, whatever `dtype`
    return weights if weights.dtype == dtype else weights.to(dtype)


def sdd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
             per_sample: PerSampleLoss, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """sum_i w_i l_i / (N*B) for each term of `per_sample` (a dict of (B*N,) losses)."""
    b, _, n = student_local.shape
    region_labels = labels[:, None].expand(b, n).reshape(b * n)
    terms = per_sample(flatten_regions(student_local), flatten_regions(teacher_local), region_labels)
    w = region_weights(teacher_local, labels, gamma).view(b * n)
    return {name: (w * value).sum() / (n * b) for name, value in terms.items()}


@lru_cache(maxsize=16)
def _class_index(classes: int, device: torch.device) -> torch.Tensor:
    """(K, 1) class indices, built once per device (comparing labels with it gives the (B, K, 1) target mask)."""
    with torch.inference_mode(False):
        return torch.arange(classes, device=device)[:, None]


def _region_weights_kept(teacher: torch.Tensor, labels3: torch.Tensor, gamma: float) -> torch.Tensor:
    """`region_weights` as (B, 1, N), from labels viewed as (B, 1, 1)."""
    return _weights(teacher.argmax(dim=1, keepdim=True), labels3, gamma, teacher.dtype)


class _RegionKD(torch.autograd.Function):
    """sum_i w_i T^2 KL(p_t,i || p_s,i) / (N*B) over the regions of (B, K, N) local logits, w_i the SDD region
    weights; student and teacher go through the softmax as one stacked tensor, the gradient is written out."""

    @staticmethod
    def forward(ctx, student, teacher, labels, gamma, temperature):
        b, _, n = student.shape
        log_p = torch.log_softmax(torch.stack((student, teacher)) / temperature, 2)  # (2, B, K, N)
        log_ps, log_pt = log_p.unbind()
        p_t = log_pt.exp()
        w = _region_weights_kept(teacher, labels.view(b, 1, 1), gamma)  # (B, 1, N)
        ctx.save_for_backward(log_ps, p_t, w)
        ctx.scale = temperature / (n * b)
        return (p_t * (log_pt - log_ps) * w).sum() * (temperature**2 / (n * b))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        log_ps, p_t, w = ctx.saved_tensors
        # d/dz_s of T^2 KL = T (p_s - p_t) for logits z_s (the 1/T of the softmax input included)
        return (log_ps.exp() - p_t) * (w * (grad * ctx.scale)), None, None, None, None


class _RegionDKD(torch.autograd.Function):
    """(sum_i w_i T^2 alpha TCKD_i, sum_i w_i T^2 beta NCKD_i) / (N*B) over the regions of (B, K, N) local
    logits; student and teacher go through each step as one stacked tensor, the gradient is written out.

    With log-probabilities l = log_softmax(z / T) over the classes, the target's y and r = log(1 - p_y)
    (the log-sum-exp of l over the other classes): TCKD_i is the KL of the binary distributions
    b = (exp y, exp r), and NCKD_i the KL of the non-target distributions q = exp(l - r). Each side holds
    its K values log q and then its two log b on one (K + 2) axis, so one difference and one product give
    both KLs' terms. With s and t the student's and the teacher's b, the gradients in the student logits
    z_k are alpha (s_y - t_y) / T at the target and (alpha (s_r - t_r) q_s,k + beta (q_s,k - q_t,k)) / T
    elsewhere.
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, gamma, temperature, alpha, beta):
        b, k, n = student.shape
        log_p = torch.log_softmax(torch.stack((student, teacher)) / temperature, 2)  # (2: s, t; B, K, N)
        labels3 = labels.view(b, 1, 1)
        target = labels3.eq(_class_index(k, student.device))  # (B, K, 1)
        # log(1 - p_y) and log p_y (exact: one term and zeros) of student and teacher
        rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), 2, keepdim=True)  # (2, B, 1, N)
        logs_s, logs_t = torch.cat((log_p - rest, (log_p * target).sum(2, keepdim=True), rest), 2).unbind()
        # the teacher's q (0 at the target: that term is not in NCKD) and b, as the (B, K + 2, N) weights
        teacher_p = logs_t.exp().masked_fill(labels3.eq(_class_index(k + 2, student.device)), 0.0)
        w = _region_weights_kept(teacher, labels3, gamma)  # (B, 1, N)
        nckd, tckd = (teacher_p * w * (logs_t - logs_s)).split((k, 2), 1)
        per_region = temperature**2 / (n * b)  # the mean over the N*B regions
        ctx.save_for_backward(target, logs_s, teacher_p, w)
        ctx.scales = (alpha * temperature / (n * b), beta * temperature / (n * b))
        return tckd.sum() * (per_region * alpha), nckd.sum() * (per_region * beta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_tckd, grad_nckd):
        target, logs_s, teacher_p, w = ctx.saved_tensors
        alpha_scale, beta_scale = ctx.scales
        k = target.shape[1]
        student_p = logs_s.exp()
        diff_q, diff_y, diff_r = (student_p - teacher_p).split((k, 1, 1), 1)  # q_s - q_t, s_y - t_y, s_r - t_r
        g_nckd = grad_nckd * beta_scale
        g_tckd = grad_tckd * alpha_scale
        rest = torch.addcmul(student_p[:, :k] * (diff_r * g_tckd), diff_q, g_nckd)
        return torch.where(target, diff_y * g_tckd, rest) * w, None, None, None, None, None, None


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
