"""Click options of `train` and `distill`, generated from the training options' declarations (TrainConfig).

Each option's flag, type, default, help and the commands that take it come from its one declaration
in engine/config.py; values are checked there too (option_rules), for the command line and config
files alike, so nothing here restates a default or a range."""

from __future__ import annotations

from typing import Callable

import click

from ..engine.config import TrainConfig, option_fields
from ..losses.registry import help_text as method_help

D = TrainConfig()
_TYPES = {"int": int, "float": float}


def _click_option(f, command: str) -> Callable:
    """The click option of the training option `f` (a TrainConfig field) for `command`."""
    meta = f.metadata
    flag = meta["flags"].get(command, "--" + f.name.replace("_", "-"))
    rule = meta["rule"]
    help_text = meta["help"] + (" " + method_help() if f.name == "method" else "")
    default = meta["cli_default"] if meta["cli_default"] is not None else getattr(D, f.name)
    if rule.kind == "bool" and not rule.optional:  # a switch with both spellings: --sync-bn/--no-sync-bn
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, show_default=True, help=help_text)
    if rule.kind == "bool":  # a flag: None unless given, so a config file's value is kept
        return click.option(flag, f.name, is_flag=True, default=None, help=help_text)
    if meta["shown_default"] is not None or default is None:
        shown = f" [default: {meta['shown_default']}]" if meta["shown_default"] else ""
        return click.option(flag, f.name, type=_TYPES.get(rule.kind), default=None, help=help_text + shown)
    if isinstance(default, list):
        default = ",".join(map(str, default))
    return click.option(flag, f.name, type=_TYPES.get(rule.kind), default=default, show_default=True,
                        help=help_text)


def _command_options(command: str, fn: Callable) -> Callable:
    options = [_click_option(f, command) for f in option_fields() if command in f.metadata["commands"]]
    options.insert(0, click.option("--config", default=None,
                                   help="YAML file (or shipped config name, e.g. cifar100_resnet32x4_resnet8x4) with "
                                        "any of these options; the command line wins."))
    for option in reversed(options):
        fn = option(fn)
    return fn


def train_options(fn: Callable) -> Callable:
    """Every training option that `sddcompress train` takes."""
    return _command_options("train", fn)


def distill_options(fn: Callable) -> Callable:
    """Every training option that `sddcompress distill` takes."""
    return _command_options("distill", fn)


__all__ = ["distill_options", "train_options"]
