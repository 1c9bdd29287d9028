"""Distillation losses and the registry of methods (KD, DKD, SDD, MSDCRD-style, CE) behind the objective."""

from .dkd import dkd_per_sample
from .kd import kd_per_sample
from .objective import MethodConfig, Objective, make_method, method_names, parse_scales, ramp
from .registry import Method, Outputs, combine, register
from .sdd import flatten_regions, region_weights, sdd_dkd_loss, sdd_kd_loss, sdd_loss

__all__ = [
    "Method", "MethodConfig", "Objective", "Outputs", "combine", "dkd_per_sample", "flatten_regions",
    "kd_per_sample", "make_method", "method_names", "parse_scales", "ramp", "region_weights", "register",
    "sdd_dkd_loss", "sdd_kd_loss", "sdd_loss",
]
