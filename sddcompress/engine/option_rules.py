"""One validation layer for every train/distill option, from the command line or a config file.

Each option has a rule: its type (values are coerced where that is unambiguous, e.g. YAML 1.1 reads
`1e-3` as a string, which becomes the float 0.001), finiteness, and its range or choices. A value
that breaks its rule is a one-line UserError naming the option, where it came from and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

SEED_MAX = 2**32 - 1  # numpy's seed range is 0..2**32-1
INPUT_SIZE_MIN, INPUT_SIZE_MAX = 8, 1024


@dataclass(frozen=True)
class Rule:
    """What one option accepts: `kind` is bool, int, float, str, ints (a list of integers) or scales
    (pooling scales: positive integers, kept as the comma-separated string '1,2,4')."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, not >= low
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (the method's or dataset's default applies)
    ascending_from_1: bool = False  # scales: the first is 1 and each is larger than the one before
    hint: str = ""

    def requirement(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if self.kind in ("int", "ints") else f"{v:g}"

        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return (f"{'>' if self.low_open else '>='} {num(self.low)} and {'<' if self.high_open else '<='} "
                    f"{num(self.high)}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"
        return ""


_POS_INT = Rule("int", 0, low_open=True)
_NONNEG_INT = Rule("int", 0)
_NONNEG_FLOAT = Rule("float", 0, optional=True)
_FLAG = Rule("bool", optional=True)

RULES: dict[str, Rule] = {
    "model": Rule("str"), "teacher": Rule("str", optional=True), "teacher_ckpt": Rule("str", optional=True),
    "teacher_pretrained": _FLAG, "pretrained": _FLAG, "method": Rule("str"),
    # SDD's weighting reads region 0 as the global prediction: its scales start at 1
    "scales": Rule("scales", 1, ascending_from_1=True),
    "temperature": Rule("float", 0, low_open=True, optional=True),
    "alpha": _NONNEG_FLOAT, "beta": _NONNEG_FLOAT, "gamma": _NONNEG_FLOAT, "ce_weight": _NONNEG_FLOAT,
    "kd_weight": _NONNEG_FLOAT, "warmup_epochs": _NONNEG_FLOAT,
    "msd_scales": Rule("scales", 1, optional=True),
    "msd_window": Rule("float", 1, optional=True, hint="the window side in grid cells; 1 = the cell itself"),
    "msd_tau": Rule("float", 0, low_open=True, optional=True),
    "msd_space": Rule("str", choices=("features", "logits"), optional=True),  # losses.msdcrd.SPACES
    "msd_categorise": Rule("str", choices=("sdd", "none"), optional=True),  # losses.msdcrd.CATEGORISE
    "msd_sample_weight": _NONNEG_FLOAT, "msd_feature_weight": _NONNEG_FLOAT, "msd_ramp_epochs": _NONNEG_FLOAT,
    "data": Rule("str"), "data_dir": Rule("str", optional=True), "download": _FLAG,
    "input_size": Rule("int", INPUT_SIZE_MIN, INPUT_SIZE_MAX, optional=True,
                       hint="larger inputs need more memory than a training host has; 224 is the ImageNet size"),
    "skip_bad_images": _FLAG,
    "labelled_fraction": Rule("float", 0, 1, low_open=True,
                              hint="the share of each class's training images whose labels the run sees"),
    "unlabelled": Rule("str", optional=True), "workers": Rule("int", 0, optional=True, hint="or auto in a config file"),
    "pipeline": Rule("str", choices=("auto", "device", "loader")), "epochs": _POS_INT, "batch_size": _POS_INT,
    "lr": Rule("float", 0, low_open=True), "momentum": Rule("float", 0, 1, high_open=True),
    "weight_decay": Rule("float", 0), "schedule": Rule("str", choices=("step", "cosine")),
    "milestones": Rule("ints", 1, hint="comma-separated epoch numbers, e.g. 150,180,210"),
    "lr_decay": Rule("float", 0, low_open=True), "precision": Rule("str", choices=("auto", "no", "fp16", "bf16")),
    "grad_accum": _POS_INT, "clip_grad_norm": Rule("float", 0, hint="0 = off; the paper configs use 40"),
    "compile": _FLAG, "step": Rule("str", choices=("auto", "graph", "eager")), "cpu": _FLAG, "sync_bn": Rule("bool"),
    "seed": Rule("int", 0, SEED_MAX, hint="numpy's seed range"), "out": Rule("str", optional=True),
    "resume": _FLAG, "fresh": _FLAG, "skip_nonfinite": _NONNEG_INT, "max_train_batches": _NONNEG_INT,
    "log_every": _POS_INT,
}


def option_label(name: str, source: str | None = None) -> str:
    """'--lr' for the command line, "lr in config 'x.yaml'" for a config file."""
    return f"{name} in {source}" if source else f"--{name.replace('_', '-')}"


def _fail(label: str, what: str, value: Any, rule: Rule) -> UserError:
    hint = f" ({rule.hint})" if rule.hint else ""
    return UserError(f"{label} must be {what}{hint}, got {value!r}")


def _number(value: Any, kind: str, label: str, rule: Rule) -> int | float:
    what = "an integer" if kind == "int" else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(label, what, value, rule)
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind == "float" else int(value.strip())
        except ValueError:
            try:  # "1e3" for an integer option
                value = float(value.strip())
            except ValueError:
                raise _fail(label, what, value, rule) from None
    if not math.isfinite(value):
        raise _fail(label, "a finite number", value, rule)
    if kind == "int":
        if float(value) != int(value):
            raise _fail(label, what, value, rule)
        value = int(value)
    else:
        value = float(value)
    return value


def _in_range(value: float, rule: Rule) -> bool:
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        return False
    if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
        return False
    return True


def _ints(value: Any, label: str, rule: Rule) -> list[int]:
    if isinstance(value, str):
        items: list[Any] = [s for s in value.split(",") if s.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]  # `milestones: 5` in YAML
    try:
        return [int(_number(v, "int", label, rule)) for v in items]
    except UserError:
        raise _fail(label, "a list of integers", value, rule) from None


def _scales(value: Any, label: str, rule: Rule) -> str:
    what = "positive integers like 1,2,4"
    try:
        values = _ints(value, label, rule)
    except UserError:
        raise _fail(label, what, value, rule) from None
    if not values or not all(_in_range(v, rule) for v in values):
        raise _fail(label, what, value, rule)
    if rule.ascending_from_1 and (values[0] != 1 or any(b <= a for a, b in zip(values, values[1:]))):
        raise UserError(f"{label} must start with 1 and be strictly ascending, like 1,2,4; got {value!r}")
    return ",".join(map(str, values))


def check_option(name: str, value: Any, source: str | None = None) -> Any:
    """The value of option `name`, coerced to its type; a UserError if it breaks the option's rule."""
    rule = RULES.get(name)
    if rule is None:
        return value
    label = option_label(name, source)
    if value is None:
        if rule.optional:
            return None
        raise _fail(label, f"given ({rule.kind})", value, rule)
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(label, "true or false", value, rule)
        return value
    if rule.kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _fail(label, "a string", value, rule)
        value = str(value)
        if rule.choices and value not in rule.choices:
            raise _fail(label, rule.requirement(), value, rule)
        return value
    if rule.kind == "ints":
        values = _ints(value, label, rule)
        bad = [v for v in values if not _in_range(v, rule)]
        if bad:
            raise _fail(label, f"epochs {rule.requirement()}", value, rule)
        return values
    if rule.kind == "scales":
        return _scales(value, label, rule)
    number = _number(value, rule.kind, label, rule)
    if not _in_range(number, rule):
        raise _fail(label, rule.requirement(), value, rule)
    return number


def check_options(values: dict[str, Any], sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Every option of `values` checked and coerced; `sources` names where non-CLI values came from."""
    sources = sources or {}
    return {name: check_option(name, value, sources.get(name)) for name, value in values.items()}
