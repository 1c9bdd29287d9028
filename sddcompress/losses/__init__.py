"""Logit-distillation losses: KD, DKD, the SDD wrapper and the training objective."""

from .dkd import dkd_per_sample
from .kd import kd_per_sample
from .objective import METHODS, MethodConfig, Objective, make_method, parse_scales, ramp
from .sdd import flatten_regions, region_weights, sdd_dkd_loss, sdd_kd_loss, sdd_loss

__all__ = [
    "METHODS", "MethodConfig", "Objective", "dkd_per_sample", "flatten_regions", "kd_per_sample",
    "make_method", "parse_scales", "ramp", "region_weights", "sdd_dkd_loss", "sdd_kd_loss", "sdd_loss",
]
