"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), per sample."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _binary_log_probs(z: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log (p_y, 1 - p_y) of softmax(z), computed from log-sum-exps: (M, 2)."""
    lse_all = torch.logsumexp(z, dim=1)
    log_py = z[target_mask] - lse_all
    log_rest = torch.logsumexp(z.masked_fill(target_mask, float("-inf")), dim=1) - lse_all
    return torch.stack([log_py, log_rest], dim=1)


def dkd_per_sample(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                   alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """{"tckd": T^2 alpha TCKD, "nckd": T^2 beta NCKD}, each (M,), for logits (M, K), labels (M,)."""
    m, k = student.shape
    target = F.one_hot(labels, k).bool()
    zs, zt = student / temperature, teacher / temperature
    bs, bt = _binary_log_probs(zs, target), _binary_log_probs(zt, target)
    tckd = F.kl_div(bs, bt, reduction="none", log_target=True).sum(1)
    # non-target classes only: exactly one target per row, so the rest reshapes to (M, K-1)
    qs = F.log_softmax(zs[~target].view(m, k - 1), dim=1)
    qt = F.log_softmax(zt[~target].view(m, k - 1), dim=1)
    nckd = F.kl_div(qs, qt, reduction="none", log_target=True).sum(1)
    t2 = temperature**2
    return {"tckd": t2 * alpha * tckd, "nckd": t2 * beta * nckd}
