"""One validation layer for every train/distill option, from the command line or a config file.

Each option has a rule: its type (values are coerced where that is unambiguous, e.g. YAML 1.1 reads
`1e-3` as a string, which becomes the float 0.001), finiteness, and its range or choices. A value
that breaks its rule is a one-line UserError naming the option, where it came from and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


def option(default: Any = None, help: str = "", rule: Rule | None = None, *,
           commands: tuple[str, ...] = ("train", "distill"), flags: dict[str, str] | None = None,
           cli_default: Any = None, shown_default: str | None = None, resume: str = "fixed",
           method: bool = False, default_factory: Any = None) -> Any:
    """A training option, declared once as a `TrainConfig` field: its default, its `--help` text, its
    rule, the commands that take it and everything the command line, the config files, validation,
    resuming and the method read from it.

    `flags`: the option's spelling per command where it is not `--NAME` (train's --model is distill's
    --student); `cli_default`: the command line's default where it differs from the field's (distill's
    --method); `shown_default`: the "[default: ...]" of an option whose None means "the method's or the
    dataset's default"; `resume`: identity (a run resumes only with the same value), free (may change
    on resume), fixed (refused if changed), or method (compared as the method resolved it); `method`:
    a hyper-parameter of the distillation method (passed to `make_method`)."""
    metadata = dict(help=help, rule=rule, commands=commands, flags=flags or {}, cli_default=cli_default,
                    shown_default=shown_default, resume=resume, method=method)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


POS_INT = Rule("int", 0, low_open=True)
NONNEG_INT = Rule("int", 0)
NONNEG_FLOAT = Rule("float", 0, optional=True)
FLAG = Rule("bool", optional=True)


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
    from .config import RULES  # declared with the options themselves

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
