"""Scale decoupled distillation (Wei et al., CVPR 2024): a per-sample loss over local logits.

Every region of every sample is one row of a single (B*N, K) batch, so the per-region KD or DKD
terms are one vectorised expression, whatever the number of scales.
"""

from __future__ import annotations

from typing import Callable

import torch

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
