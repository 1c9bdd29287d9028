"""The training objective: CE on the student's global logits plus a (ramped) distillation term."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch.nn import functional as F

from ..errors import UserError
from .dkd import dkd_per_sample
from .kd import kd_per_sample
from .sdd import sdd_loss

METHODS = ("sdd-dkd", "sdd-kd", "dkd", "kd", "ce")


@dataclass(frozen=True)
class MethodConfig:
    """A distillation method and its hyper-parameters (paper defaults per method)."""

    name: str
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 8.0
    warmup_epochs: float = 0.0
    gamma: float = 2.0
    scales: tuple[int, ...] = field(default=(1, 2, 4))

    @property
    def uses_teacher(self) -> bool:
        return self.name != "ce"

    @property
    def uses_local_logits(self) -> bool:
        return self.name.startswith("sdd-")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d


_DEFAULTS = {
    "ce": dict(ce_weight=1.0, kd_weight=0.0),
    "kd": dict(ce_weight=0.1, kd_weight=0.9),
    "sdd-kd": dict(ce_weight=0.1, kd_weight=0.9),
    "dkd": dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0),
    "sdd-dkd": dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0),
}


def make_method(name: str, **overrides) -> MethodConfig:
    """Method `name` with its defaults; any override whose value is None keeps the default."""
    if name not in _DEFAULTS:
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    valid = {f.name for f in fields(MethodConfig)} - {"name"}
    unknown = set(overrides) - valid
    if unknown:
        raise UserError(f"unknown method option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    cfg = replace(MethodConfig(name), **_DEFAULTS[name])
    given = {k: v for k, v in overrides.items() if v is not None}
    if "scales" in given:
        given["scales"] = parse_scales(given["scales"])
    cfg = replace(cfg, **given)
    if cfg.temperature <= 0:
        raise UserError(f"temperature must be > 0, got {cfg.temperature}")
    return cfg


def parse_scales(value) -> tuple[int, ...]:
    """'1,2,4' or [1, 2, 4] -> (1, 2, 4); anything else is a UserError."""
    items = value.split(",") if isinstance(value, str) else list(value)
    ok = bool(items) and all(
        (isinstance(s, int) and not isinstance(s, bool)) or (isinstance(s, str) and s.strip().isdigit())
        for s in items
    )
    scales = tuple(int(s) for s in items) if ok else ()
    if not scales or min(scales) < 1:
        raise UserError(f"--scales must be positive integers like 1,2,4; got '{value}'")
    return scales


def ramp(method: MethodConfig, epoch_progress: float) -> float:
    """Linear 0 -> 1 over `warmup_epochs` (epoch_progress counts finished epochs, fractional)."""
    if method.warmup_epochs <= 0:
        return 1.0
    return min(max(epoch_progress, 0.0) / method.warmup_epochs, 1.0)


class Objective:
    """Callable: logits in, dict of named terms out ("loss" is what is minimised)."""

    def __init__(self, method: MethodConfig) -> None:
        self.method = method
        m = method
        if m.name.endswith("dkd"):
            self._per_sample = lambda s, t, y: dkd_per_sample(s, t, y, m.temperature, m.alpha, m.beta)
        else:
            self._per_sample = lambda s, t, y: kd_per_sample(s, t, m.temperature)

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor, *,
                 teacher_logits: torch.Tensor | None = None, student_local: torch.Tensor | None = None,
                 teacher_local: torch.Tensor | None = None, epoch_progress: float = 0.0) -> dict[str, torch.Tensor]:
        m = self.method
        ce = F.cross_entropy(student_logits.float(), labels)
        terms: dict[str, torch.Tensor] = {"ce": ce}
        total = m.ce_weight * ce
        if m.uses_teacher:
            if m.uses_local_logits:
                parts = sdd_loss(student_local.float(), teacher_local.float(), labels, self._per_sample, m.gamma)
            else:
                per = self._per_sample(student_logits.float(), teacher_logits.float(), labels)
                parts = {k: v.mean() for k, v in per.items()}
            distill = sum(parts.values())
            weight = m.kd_weight * ramp(m, epoch_progress)
            terms.update(parts)
            terms["distill"] = distill
            total = total + weight * distill
        terms["loss"] = total
        return terms


__all__ = ["METHODS", "MethodConfig", "Objective", "make_method", "parse_scales", "ramp"]
