"""The student and teacher as a method sees them: plain logits, SDD local logits, MSDCRD region embeddings."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..losses import MethodConfig
from ..losses.msdcrd import RegionEmbedding
from ..models import LocalLogits


class MSDNet(nn.Module):
    """`forward(x) -> (logits, local logits or None, {"embedding", "region_logits"})`.

    Holds the model (inside its LocalLogits split) and, for a student whose width differs from the
    teacher's, the training-only projection; `model_state` is just the model's, for export.
    """

    def __init__(self, model: nn.Module, input_size: int, method: MethodConfig, name: str,
                 target_channels: int | None = None) -> None:
        super().__init__()
        self.sdd = method.uses_local_logits
        checked = tuple(sorted(set(method.msd_scales) | (set(method.scales) if self.sdd else set())))
        options = {"--scales": tuple(method.scales)} if self.sdd else {}
        options["--msd-scales"] = tuple(method.msd_scales)
        self.split = LocalLogits(model, input_size, checked, name, options)  # checks the map is large enough
        channels = self.split.feature_channels
        self.msd = RegionEmbedding(method.msd_scales, method.msd_window, method.msd_space, channels,
                                   target_channels if target_channels is not None else channels)
        self.local_scales = method.scales

    @property
    def feature_channels(self) -> int:
        return self.split.feature_channels

    def forward(self, x: torch.Tensor):
        logits, feature = self.split.logits_and_feature(x)
        local = None
        if self.sdd:
            logits, local = self.split.global_and_local(logits, feature, self.local_scales)
        embedding, region_logits = self.msd(feature, self.split.apply_head)
        return logits, local, {"embedding": embedding, "region_logits": region_logits}

    def train_only_state(self) -> dict[str, torch.Tensor]:
        """Parameters that train with the student but are not part of it (the projection)."""
        return {k: v.detach().clone() for k, v in self.msd.state_dict().items()}

    def load_train_only_state(self, state: dict | None) -> None:
        if state:
            self.msd.load_state_dict(state)


def method_networks(student: nn.Module, teacher: nn.Module | None, input_size: int, method: MethodConfig,
                    student_name: str, teacher_name: str | None) -> tuple[nn.Module, nn.Module | None]:
    """(student_net, teacher_net) wrapped for `method`; the teacher's is None for CE."""
    if method.uses_msd:
        teacher_net = MSDNet(teacher, input_size, method, teacher_name or "teacher")
        student_net = MSDNet(student, input_size, method, student_name, teacher_net.feature_channels)
        return student_net, teacher_net
    if method.uses_local_logits:
        student_net = LocalLogits(student, input_size, method.scales, student_name)
        teacher_net = LocalLogits(teacher, input_size, method.scales, teacher_name) if teacher is not None else None
        return student_net, teacher_net
    return student, teacher


def split_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """A wrapped network's output as (logits, local logits or None, MSD dict or None)."""
    if not isinstance(out, tuple):
        return out, None, None
    if len(out) == 2:
        return out[0], out[1], None
    return out


def detach_outputs(out: tuple) -> tuple:
    """Clone a teacher's inference-mode outputs that autograd may save: the logits and MSD's regions.

    The local logits go only to the fused SDD losses, which save tensors of their own, never an input."""
    logits, local, msd = out
    return logits.clone(), local, {k: v.clone() for k, v in msd.items()} if msd is not None else None


def distillation_terms(objective, student_net: nn.Module, teacher_net: nn.Module | None, images: torch.Tensor,
                       labels: torch.Tensor, epoch_progress: float,
                       teacher_context: contextlib.AbstractContextManager | None = None) -> tuple[dict, torch.Tensor]:
    """One batch through the student, then the teacher (inference mode, under `teacher_context`; its outputs
    cloned so autograd may save them), then the objective. Returns (the objective's terms, student logits)."""
    s_logits, s_local, s_msd = split_outputs(student_net(images))
    t_logits = t_local = t_msd = None
    if teacher_net is not None:
        with torch.inference_mode(), teacher_context or contextlib.nullcontext():
            out_t = split_outputs(teacher_net(images))
        t_logits, t_local, t_msd = detach_outputs(out_t)
    terms = objective(s_logits, labels, teacher_logits=t_logits, student_local=s_local, teacher_local=t_local,
                      epoch_progress=epoch_progress, student_msd=s_msd, teacher_msd=t_msd)
    return terms, s_logits


def train_only_state(student_net: nn.Module) -> dict | None:
    net = getattr(student_net, "module", student_net)  # unwrap DDP
    return net.train_only_state() if isinstance(net, MSDNet) else None


def load_train_only_state(student_net: nn.Module, state: dict | None) -> None:
    net = getattr(student_net, "module", student_net)
    if isinstance(net, MSDNet):
        net.load_train_only_state(state)
