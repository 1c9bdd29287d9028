"""Hinton knowledge distillation, per sample."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .registry import Method, Outputs, logit_term, register


def kd_per_sample(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """T^2 * sum_k p_t log(p_t / p_s) for each row; logits (M, K) -> {"kd": (M,)}."""
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(1)
    return {"kd": kl * temperature**2}


@register
class KD(Method):
    """Hinton et al.: KL divergence of the softened global logits."""

    name = "kd"
    summary = "Hinton KD on the global logits"
    defaults = dict(ce_weight=0.1, kd_weight=0.9)
    options = ("ce_weight", "kd_weight", "warmup_epochs", "temperature")

    def loss(self, config, outputs: Outputs):
        per = kd_per_sample(outputs.student_logits.float(), outputs.teacher_logits.float(), config.temperature)
        return logit_term(config, outputs, {k: v.mean() for k, v in per.items()})
