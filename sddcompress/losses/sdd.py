"""Scale decoupled distillation (Wei et al., CVPR 2024): a per-sample loss over local logits."""

from __future__ import annotations

from typing import Callable

import torch

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def flatten_regions(local: torch.Tensor) -> torch.Tensor:
    """(B, K, N) -> (N*B, K): every sample of region 0, then region 1, ..."""
    b, k, n = local.shape
    return local.permute(2, 0, 1).reshape(n * b, k)


def region_weights(teacher_local: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weights (N*B,): 1 where a region's teacher correctness equals the global one, gamma otherwise."""
    b, _, n = teacher_local.shape
    correct = teacher_local.argmax(dim=1).eq(labels[:, None])  # (B, N)
    consistent = correct.eq(correct[:, :1])
    weights = torch.where(consistent, 1.0, float(gamma)).to(teacher_local.dtype)
    return weights.t().reshape(n * b)


def sdd_loss(student_local: torch.Tensor, teacher_local: torch.Tensor, labels: torch.Tensor,
             per_sample: PerSampleLoss, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """sum_i w_i l_i / (N*B) for each term of `per_sample` (a dict of (N*B,) losses)."""
    b, _, n = student_local.shape
    terms = per_sample(flatten_regions(student_local), flatten_regions(teacher_local), labels.repeat(n))
    w = region_weights(teacher_local, labels, gamma)
    return {name: (w * value).sum() / (n * b) for name, value in terms.items()}
