"""The training objective: CE on the student's global logits plus a (ramped) distillation term."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch.nn import functional as F

from ..errors import UserError
from .dkd import dkd_per_sample
from .kd import kd_per_sample
from .msdcrd import CATEGORISE, SPACES, category_weights, msdcrd_loss
from .sdd import sdd_loss

METHODS = ("sdd-dkd", "sdd-kd", "dkd", "kd", "ce", "msdcrd", "sdd-dkd+msdcrd")


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
    # MSDCRD-style (reconstructed) contrastive term; see losses/msdcrd.py
    msd_scales: tuple[int, ...] = field(default=(1, 2, 4))
    msd_window: float = 1.0
    msd_tau: float = 0.07
    msd_space: str = "features"
    msd_categorise: str = "sdd"
    msd_sample_weight: float = 0.8
    msd_feature_weight: float = 0.8
    msd_ramp_epochs: float = 20.0

    @property
    def logit_method(self) -> str:
        """The logit-distillation part: 'sdd-dkd+msdcrd' -> 'sdd-dkd', 'msdcrd' -> 'ce'."""
        base = self.name.split("+")[0]
        return "ce" if base == "msdcrd" else base

    @property
    def uses_teacher(self) -> bool:
        return self.name != "ce"

    @property
    def uses_local_logits(self) -> bool:
        return self.logit_method.startswith("sdd-")

    @property
    def uses_msd(self) -> bool:
        return self.name.endswith("msdcrd")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["msd_scales"] = list(self.msd_scales)
        return d


_DEFAULTS = {
    "ce": dict(ce_weight=1.0, kd_weight=0.0),
    "kd": dict(ce_weight=0.1, kd_weight=0.9),
    "sdd-kd": dict(ce_weight=0.1, kd_weight=0.9),
    "dkd": dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0),
    "sdd-dkd": dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0),
    "msdcrd": dict(ce_weight=1.0, kd_weight=0.0),
    "sdd-dkd+msdcrd": dict(ce_weight=1.0, kd_weight=1.0, warmup_epochs=20.0),
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
    for key in ("scales", "msd_scales"):
        if key in given:
            given[key] = parse_scales(given[key], "--" + key.replace("_", "-"))
    cfg = replace(cfg, **given)
    if cfg.temperature <= 0:
        raise UserError(f"temperature must be > 0, got {cfg.temperature}")
    if cfg.msd_tau <= 0:
        raise UserError(f"--msd-tau must be > 0, got {cfg.msd_tau}")
    if cfg.msd_window < 1:
        raise UserError(f"--msd-window is the window side in grid cells and must be >= 1, got {cfg.msd_window}")
    if cfg.msd_space not in SPACES:
        raise UserError(f"--msd-space must be {' or '.join(SPACES)}, got '{cfg.msd_space}'")
    if cfg.msd_categorise not in CATEGORISE:
        raise UserError(f"--msd-categorise must be {' or '.join(CATEGORISE)}, got '{cfg.msd_categorise}'")
    return cfg


def parse_scales(value, flag: str = "--scales") -> tuple[int, ...]:
    """'1,2,4' or [1, 2, 4] -> (1, 2, 4); anything else is a UserError."""
    items = value.split(",") if isinstance(value, str) else list(value)
    ok = bool(items) and all(
        (isinstance(s, int) and not isinstance(s, bool)) or (isinstance(s, str) and s.strip().isdigit())
        for s in items
    )
    scales = tuple(int(s) for s in items) if ok else ()
    if not scales or min(scales) < 1:
        raise UserError(f"{flag} must be positive integers like 1,2,4; got '{value}'")
    if flag == "--scales" and (scales[0] != 1 or any(b <= a for a, b in zip(scales, scales[1:]))):
        # SDD's weighting reads region 0 as the global prediction
        raise UserError(f"--scales must start with 1 and be strictly ascending, like 1,2,4; got '{value}'")
    return scales


def ramp(method: MethodConfig, epoch_progress: float | torch.Tensor, epochs: float | None = None):
    """Linear 0 -> 1 over `epochs` (default: `warmup_epochs`; epoch_progress counts finished epochs).

    A float for a float `epoch_progress`; a tensor for a tensor one (a captured step reads its progress
    from a device tensor, so the ramp must stay on the device)."""
    length = method.warmup_epochs if epochs is None else epochs
    if isinstance(epoch_progress, torch.Tensor):
        return (epoch_progress / length).clamp(0.0, 1.0) if length > 0 else 1.0
    if length <= 0:
        return 1.0
    return min(max(epoch_progress, 0.0) / length, 1.0)


class Objective:
    """Callable: logits in, dict of named terms out ("loss" is what is minimised).

    Labels may mark unlabelled images with -1 (data/label_scarce.py). Cross-entropy then counts the
    labelled images only: the sum of their cross-entropies over B * `labelled_share`, where B is the batch
    size and `labelled_share` the training set's share of labelled images, i.e. the expected number of
    labelled images in a batch. That is an unbiased estimate of the mean cross-entropy over labelled
    images which, unlike a mean over each batch's own labelled images, does not depend on how a batch is
    split over processes or --grad-accum micro-batches; a batch without a labelled image adds 0 (never
    NaN). With every image labelled (`labelled_share` 1) it is the plain batch mean.

    The distillation terms use every image. DKD (target vs non-target classes), SDD's region weights and
    MSDCRD's categories need a label per image: an unlabelled image takes the teacher's own global
    prediction as its label there. Everything stays on the device (`torch.where`, no host sync), as a
    step recorded as a CUDA graph requires.
    """

    def __init__(self, method: MethodConfig, labelled_share: float = 1.0) -> None:
        if not 0.0 < labelled_share <= 1.0:
            raise ValueError(f"labelled_share must be in (0, 1], got {labelled_share}")
        self.method = method
        self.labelled_share = labelled_share
        m = method
        if m.logit_method.endswith("dkd"):
            self._per_sample = lambda s, t, y: dkd_per_sample(s, t, y, m.temperature, m.alpha, m.beta)
        else:
            self._per_sample = lambda s, t, y: kd_per_sample(s, t, m.temperature)

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor, *,
                 teacher_logits: torch.Tensor | None = None, student_local: torch.Tensor | None = None,
                 teacher_local: torch.Tensor | None = None, epoch_progress: float | torch.Tensor = 0.0,
                 student_msd: dict | None = None, teacher_msd: dict | None = None) -> dict[str, torch.Tensor]:
        """`student_msd`/`teacher_msd` (MSDCRD methods): {"embedding": (B, N, D) unit vectors, "region_logits":
        (B, N, K)} from `RegionEmbedding`."""
        m = self.method
        # label -1 (unlabelled) adds nothing; with no -1 this is bit for bit the batch mean
        ce = F.cross_entropy(student_logits.float(), labels, reduction="sum", ignore_index=-1) / (
            labels.shape[0] * self.labelled_share)
        terms: dict[str, torch.Tensor] = {"ce": ce}
        total = m.ce_weight * ce
        if m.uses_teacher and teacher_logits is not None:  # the teacher's prediction stands in for a missing label
            labels = torch.where(labels >= 0, labels, teacher_logits.argmax(dim=1))
        if m.uses_teacher and m.logit_method != "ce":
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
        if m.uses_msd:
            if m.msd_categorise == "sdd":
                weights = category_weights(teacher_msd["region_logits"].float(), teacher_logits.float(), labels,
                                           m.gamma)
            else:
                weights = torch.ones_like(teacher_msd["region_logits"][:, :, 0], dtype=torch.float32)
            parts = msdcrd_loss(student_msd["embedding"], teacher_msd["embedding"], weights, m.msd_tau, m.msd_scales)
            terms.update(parts)
            msd = m.msd_sample_weight * parts["msd_sample"] + m.msd_feature_weight * parts["msd_feature"]
            total = total + ramp(m, epoch_progress, m.msd_ramp_epochs) * msd
        terms["loss"] = total
        return terms


__all__ = ["METHODS", "MethodConfig", "Objective", "make_method", "parse_scales", "ramp"]
