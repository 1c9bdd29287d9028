"""Hinton knowledge distillation, per sample."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_per_sample(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """T^2 * sum_k p_t log(p_t / p_s) for each row; logits (M, K) -> {"kd": (M,)}."""
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(1)
    return {"kd": kl * temperature**2}
