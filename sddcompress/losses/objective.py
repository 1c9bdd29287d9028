"""The training objective: CE on the student's global logits plus the method's (ramped) terms.

The methods themselves are registered classes (registry.py), each in its loss's module; this module
adds cross-entropy alone (`ce`) and the registered combination of SDD-DKD and the MSDCRD-style term."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch.nn import functional as F

from ..errors import UserError
from . import registry
from .msdcrd import CATEGORISE, SPACES
from .registry import Method, Outputs, register
from .sdd import SDDDKD  # noqa: F401 - registers sdd-kd and sdd-dkd (and, through its imports, kd and dkd)


@register
class CrossEntropy(Method):
    """The student alone: cross-entropy on the labels, no teacher."""

    name = "ce"
    summary = "the student alone (cross-entropy, no teacher)"
    defaults = dict(ce_weight=1.0, kd_weight=0.0)
    needs_teacher = False


registry.combine("sdd-dkd+msdcrd", "sdd-dkd", "msdcrd", summary="SDD-DKD plus the MSDCRD-style term")


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
    def spec(self) -> Method:
        """The registered method: its needs and its loss."""
        return registry.get(self.name)

    @property
    def uses_teacher(self) -> bool:
        return self.spec.needs_teacher

    @property
    def uses_local_logits(self) -> bool:
        return self.spec.needs_local_logits

    @property
    def uses_msd(self) -> bool:
        return self.spec.needs_msd

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["msd_scales"] = list(self.msd_scales)
        return d


def make_method(name: str, **overrides) -> MethodConfig:
    """Method `name` with its registered defaults; any override whose value is None keeps the default."""
    spec = registry.get(name)
    valid = {f.name for f in fields(MethodConfig)} - {"name"}
    unknown = set(overrides) - valid
    if unknown:
        raise UserError(f"unknown method option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    cfg = replace(MethodConfig(name), **spec.defaults)
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
    """Linear 0 -> 1 over `epochs` (default: `warmup_epochs`; epoch_progress counts finished epochs)."""
    return registry.ramp(method.warmup_epochs if epochs is None else epochs, epoch_progress)


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
        spec = method.spec
        self.parts = spec.parts or (spec,)

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
        outputs = Outputs(student_logits, labels, teacher_logits, student_local, teacher_local, student_msd,
                          teacher_msd, epoch_progress)
        for part in self.parts:
            contribution, part_terms = part.loss(m, outputs)
            terms.update(part_terms)
            if contribution is not None:
                total = total + contribution
        terms["loss"] = total
        return terms


def method_names() -> tuple[str, ...]:
    """Every registered `--method` choice."""
    return registry.names()


__all__ = ["MethodConfig", "Objective", "make_method", "method_names", "parse_scales", "ramp"]
