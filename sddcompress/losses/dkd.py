"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), per sample."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .registry import Method, Outputs, logit_term, register


def _decoupled_log_probs(z: torch.Tensor, labels: torch.Tensor,
                         target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From logits (M, K): log (p_y, 1 - p_y) as (M, 2), and log q over non-target classes (M, K).

    The target entry of log q is -inf (q is a distribution over the other K-1 classes).
    """
    lse_all = torch.logsumexp(z, dim=1)
    rest = z.masked_fill(target, float("-inf"))
    lse_rest = torch.logsumexp(rest, dim=1)
    log_b = torch.stack([z.gather(1, labels[:, None])[:, 0] - lse_all, lse_rest - lse_all], dim=1)
    return log_b, rest - lse_rest[:, None]


def dkd_per_sample(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                   alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """{"tckd": T^2 alpha TCKD, "nckd": T^2 beta NCKD}, each (M,), for logits (M, K), labels (M,)."""
    # a comparison, not F.one_hot: one_hot checks the labels' range with a host-device sync
    target = labels[:, None].eq(torch.arange(student.shape[1], device=labels.device))
    bs, qs = _decoupled_log_probs(student / temperature, labels, target)
    bt, qt = _decoupled_log_probs(teacher / temperature, labels, target)
    tckd = F.kl_div(bs, bt, reduction="none", log_target=True).sum(1)
    # the target's (0 * -inf) KL term is dropped with `where`, which also passes it no gradient
    nckd = torch.where(target, 0.0, qt.exp() * (qt - qs)).sum(1)
    t2 = temperature**2
    return {"tckd": t2 * alpha * tckd, "nckd": t2 * beta * nckd}


@register
class DKD(Method):
    """Zhao et al.: target-class (alpha) and non-target-class (beta) KD on the global logits, warmed up."""

    name = "dkd"
    summary = "decoupled KD (alpha TCKD + beta NCKD) on the global logits"
    defaults = dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0)
    options = ("ce_weight", "kd_weight", "warmup_epochs", "temperature", "alpha", "beta")

    def loss(self, config, outputs: Outputs):
        per = dkd_per_sample(outputs.student_logits.float(), outputs.teacher_logits.float(), outputs.labels,
                             config.temperature, config.alpha, config.beta)
        return logit_term(config, outputs, {k: v.mean() for k, v in per.items()})
