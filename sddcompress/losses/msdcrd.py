"""MSDCRD-style (reconstructed) multi-scale contrastive feature distillation.

After "Contrastive Representation Distillation via Multi-Scale Feature Decoupling" (Wang, Wang, Chen,
2025). Its equations are not available to us; this is our reading, every choice an option:

* regions: the last feature map average-pooled over an s x s grid per scale (1,2,4 -> 21 regions),
  optionally with windows `window` x the cell's side, centred on the cell (overlapping when > 1);
* embeddings: region vectors L2-normalised; the student's projected to the teacher's width by a
  training-only linear layer (space "features"), or the regions' logits from each model's own head
  (space "logits", parameter-free);
* sample-wise InfoNCE: student region r of image b against teacher region r of every image in the
  batch (positive: the same image);
* feature-wise InfoNCE: student region r of image b against the teacher's regions of image b at the
  same scale (positive: the same region); scales with one region carry no such term;
* SDD categorisation: a region whose teacher prediction is right where the teacher's global prediction
  is wrong, or the reverse, weighs `gamma`, others 1 (`categorise="none"`: all 1).

Everything is batched tensor algebra: no Python loop over samples or regions, no host sync.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from ..models.local_logits import pool_matrix, pool_regions
from .registry import Method, Outputs, ramp, register

SPACES = ("features", "logits")
CATEGORISE = ("sdd", "none")


@lru_cache(maxsize=32)
def _region_tables(scales: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) scale position of every region and (N,) whether its scale has more than one region; cached per
    device so the training step copies nothing from the host."""
    scale_of = [i for i, s in enumerate(scales) for _ in range(s * s)]
    multi = [scales[i] > 1 for i in scale_of]
    with torch.inference_mode(False):  # cached: it must also serve steps that autograd records
        return torch.tensor(scale_of, device=device), torch.tensor(multi, device=device)


def scale_index(scales: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) the scale position of every region."""
    return _region_tables(tuple(scales), torch.device(device))[0]


def category_weights(teacher_region_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """(B, N): 1 where a region's teacher correctness equals the global one, gamma where it differs."""
    region_ok = teacher_region_logits.argmax(dim=2).eq(labels[:, None])
    global_ok = teacher_logits.argmax(dim=1).eq(labels)[:, None]
    return torch.where(region_ok.eq(global_ok), 1.0, float(gamma)).to(teacher_region_logits.dtype)


def sample_wise(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, N) InfoNCE over the batch per region; embeddings (B, N, D), unit length."""
    sim = torch.einsum("bnd,cnd->nbc", student, teacher) / tau  # (N, B, B)
    positive = torch.diagonal(sim, dim1=1, dim2=2)  # (N, B)
    return (torch.logsumexp(sim, dim=2) - positive).t()


def feature_wise(student: torch.Tensor, teacher: torch.Tensor, tau: float, scale_of: torch.Tensor) -> torch.Tensor:
    """(B, N) InfoNCE over the regions of the same image and scale; embeddings (B, N, D), unit length."""
    sim = torch.einsum("bnd,bmd->bnm", student, teacher) / tau  # (B, N, N)
    same_scale = scale_of[:, None].eq(scale_of[None, :])
    sim = sim.masked_fill(~same_scale, float("-inf"))
    positive = torch.diagonal(sim, dim1=1, dim2=2)  # (B, N)
    return torch.logsumexp(sim, dim=2) - positive


def msdcrd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, weights: torch.Tensor, tau: float,
                scales: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """{"msd_sample", "msd_feature"}: weighted means over regions (feature-wise: regions of scales > 1)."""
    b, n, _ = student_emb.shape
    scale_of, multi = _region_tables(tuple(scales), student_emb.device)
    sample = (weights * sample_wise(student_emb, teacher_emb, tau)).sum() / (b * n)
    n_multi = sum(s * s for s in scales if s > 1)
    per_region = feature_wise(student_emb, teacher_emb, tau, scale_of)
    feature = (weights * per_region * multi).sum() / max(b * n_multi, 1)
    return {"msd_sample": sample, "msd_feature": feature}


class RegionEmbedding(nn.Module):
    """A network's region embeddings for MSDCRD: pooled last map -> (projection) -> unit vectors.

    `projection` maps the student's channels to the teacher's; it trains with the student and is
    not part of the exported model.
    """

    def __init__(self, scales: tuple[int, ...], window: float, space: str, in_channels: int | None = None,
                 out_channels: int | None = None) -> None:
        super().__init__()
        self.scales, self.window, self.space = tuple(scales), float(window), space
        needs_projection = space == "features" and in_channels is not None and in_channels != out_channels
        self.projection = nn.Linear(in_channels, out_channels) if needs_projection else None

    def forward(self, feature: torch.Tensor, head) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embeddings (B, N, D), region logits (B, N, K)) from a (B, C, H, W) map and the model's head."""
        regions = pool_regions(feature, self.scales, self.window)  # (B, C, N)
        region_logits = head(regions).transpose(1, 2)  # (B, N, K)
        if self.space == "logits":
            vectors = region_logits
        else:
            vectors = regions.transpose(1, 2)
            if self.projection is not None:
                vectors = self.projection(vectors)
        return F.normalize(vectors.float(), dim=2), region_logits


@register
class MSDCRD(Method):
    """MSDCRD-style (reconstructed) sample-wise and feature-wise InfoNCE over multi-scale region embeddings,
    ramped over `msd_ramp_epochs`."""

    name = "msdcrd"
    summary = "MSDCRD-style multi-scale contrastive feature distillation (options --msd-*)"
    defaults = dict(ce_weight=1.0, kd_weight=0.0)
    options = ("ce_weight", "gamma", "msd_scales", "msd_window", "msd_tau", "msd_space", "msd_categorise",
               "msd_sample_weight", "msd_feature_weight", "msd_ramp_epochs")
    needs_msd = True

    def loss(self, config, outputs: Outputs):
        m, labels = config, outputs.labels
        teacher_msd, student_msd = outputs.teacher_msd, outputs.student_msd
        if m.msd_categorise == "sdd":
            weights = category_weights(teacher_msd["region_logits"].float(), outputs.teacher_logits.float(), labels,
                                       m.gamma)
        else:
            weights = torch.ones_like(teacher_msd["region_logits"][:, :, 0], dtype=torch.float32)
        parts = msdcrd_loss(student_msd["embedding"], teacher_msd["embedding"], weights, m.msd_tau, m.msd_scales)
        msd = m.msd_sample_weight * parts["msd_sample"] + m.msd_feature_weight * parts["msd_feature"]
        return ramp(m.msd_ramp_epochs, outputs.epoch_progress) * msd, parts


__all__ = ["CATEGORISE", "MSDCRD", "SPACES", "RegionEmbedding", "category_weights", "feature_wise", "msdcrd_loss",
           "pool_matrix", "pool_regions", "sample_wise", "scale_index"]
