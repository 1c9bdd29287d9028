"""The registry of distillation methods: one class per method, with its defaults beside it.

A method declares its name, a one-line summary (the `--method` help), the hyper-parameter defaults
it changes from `MethodConfig`'s, the options its loss reads, what it needs from the networks (a teacher, SDD local logits,
MSDCRD region embeddings) and its loss term. `--method` choices and help, the method's defaults,
the wrapping of student and teacher and the objective all come from here, so a method is added by
registering one class: `@register class MyMethod(Method): ...`.

Combinations are composed from registered parts (`combine("sdd-dkd+msdcrd", "sdd-dkd", "msdcrd")`):
the parts' terms add up, their needs join, and their defaults merge with the earlier part winning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import UserError


@dataclass
class Outputs:
    """What the networks gave for one batch: student and teacher logits, SDD local logits (B, K, N) and
    MSDCRD region embeddings, where the method asked for them; the labels and the training progress."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_local: torch.Tensor | None = None
    teacher_local: torch.Tensor | None = None
    student_msd: dict | None = None
    teacher_msd: dict | None = None
    epoch_progress: float | torch.Tensor = 0.0


class Method:
    """A distillation method. `loss(config, outputs)` returns (its weighted contribution to the loss, or None,
    and its named terms for the logs); the objective adds the contributions to the weighted cross-entropy,
    a combination's part by part, in order."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    options: ClassVar[tuple[str, ...]] = ("ce_weight",)  # the MethodConfig fields its loss reads
    needs_teacher: ClassVar[bool] = True
    needs_local_logits: ClassVar[bool] = False
    needs_msd: ClassVar[bool] = False
    parts: ClassVar[tuple["Method", ...]] = ()

    def loss(self, config, outputs: Outputs) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        return None, {}


def ramp(length: float, epoch_progress: float | torch.Tensor):
    """Linear 0 -> 1 over `length` epochs (epoch_progress counts finished epochs); 1 when `length` <= 0.

    A float for a float `epoch_progress`; a tensor for a tensor one (a captured step reads its progress
    from a device tensor, so the ramp must stay on the device)."""
    if isinstance(epoch_progress, torch.Tensor):
        return (epoch_progress / length).clamp(0.0, 1.0) if length > 0 else 1.0
    if length <= 0:
        return 1.0
    return min(max(epoch_progress, 0.0) / length, 1.0)


def logit_term(config, outputs: Outputs, parts: dict[str, torch.Tensor]):
    """A logit-distillation method's contribution: its parts summed ("distill"), times `kd_weight` and the
    warm-up ramp over `warmup_epochs`."""
    distill = sum(parts.values())
    weight = config.kd_weight * ramp(config.warmup_epochs, outputs.epoch_progress)
    return weight * distill, {**parts, "distill": distill}


_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` a `--method` choice under `cls.name`."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def combine(name: str, *part_names: str, summary: str = "") -> None:
    """Register `name` as the sum of the registered methods `part_names`."""
    parts = tuple(get(p) for p in part_names)
    defaults: dict[str, Any] = {}
    for part in reversed(parts):  # the earlier part wins
        defaults.update(part.defaults)
    options = tuple(dict.fromkeys(o for p in parts for o in p.options))
    attrs = dict(name=name, summary=summary or " + ".join(part_names), defaults=defaults, parts=parts, options=options,
                 needs_teacher=any(p.needs_teacher for p in parts),
                 needs_local_logits=any(p.needs_local_logits for p in parts),
                 needs_msd=any(p.needs_msd for p in parts))
    register(type(f"Combination_{name}", (Method,), attrs))


def get(name: str) -> Method:
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def help_text() -> str:
    """The `--method` help: every registered method with its summary."""
    return "; ".join(f"{m.name}: {m.summary}" if m.summary else m.name for m in _REGISTRY.values()) + "."
