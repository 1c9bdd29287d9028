"""Each training option is declared once (a TrainConfig field); the CLI, config files and validation read it."""

from __future__ import annotations

import math

import click
import pytest
import yaml

from sddcompress.cli.main import cli as sddcompress_cli
from sddcompress.engine.config import (METHOD_OPTIONS, RULES, TrainConfig, build_config, declaration, option_fields,
                                       read_config_file)
from sddcompress.errors import UserError

FIELDS = option_fields()


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in sddcompress_cli.commands[command].params}


def test_every_field_is_declared_with_help_a_rule_and_its_commands():
    assert FIELDS and {f.name for f in FIELDS} == set(RULES)
    for f in FIELDS:
        meta = declaration(f.name)
        assert meta["help"] and meta["rule"] is RULES[f.name] and set(meta["commands"]) <= {"train", "distill"}


@pytest.mark.parametrize("command", ["train", "distill"])
def test_the_command_line_is_generated_from_the_declarations(command):
    params = _params(command)
    declared = {f.name for f in FIELDS if command in declaration(f.name)["commands"]}
    assert set(params) - {"config"} == declared
    defaults = TrainConfig()
    for name in declared:
        meta, param = declaration(name), params[name]
        assert param.help.startswith(meta["help"]), name
        flag = meta["flags"].get(command, "--" + name.replace("_", "-"))
        assert flag in param.opts, (name, param.opts)
        if meta["rule"].kind == "bool" or meta["shown_default"] is not None:
            if meta["rule"].optional:
                assert param.default is None, name  # unset unless given: a config file's value is kept
            continue
        expected = meta["cli_default"] if meta["cli_default"] is not None else getattr(defaults, name)
        if isinstance(expected, list):
            expected = ",".join(map(str, expected))
        assert param.default == expected, name


def test_a_config_file_takes_every_declared_option(tmp_path):
    values = TrainConfig(model="resnet20", data="digits", epochs=3, method="kd", teacher="resnet20").to_dict()
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(values))
    read = read_config_file(str(path))
    assert set(read) == {f.name for f in FIELDS}
    cfg = build_config(read, {}, set())
    assert (cfg.model, cfg.epochs, cfg.method, cfg.milestones) == ("resnet20", 3, "kd", [150, 180, 210])


@pytest.mark.parametrize("name", [f.name for f in FIELDS if RULES[f.name].low is not None
                                  and RULES[f.name].kind in ("int", "float")])
def test_validation_reads_each_declared_range(name, tmp_path):
    """A value just outside the declared range, in a config file, is refused naming the option."""
    rule = RULES[name]
    below = rule.low if rule.low_open else (rule.low - 1 if rule.kind == "int" else rule.low - 0.5)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({name: below}))
    with pytest.raises(UserError, match=rf"^{name} in config '{path}' must be "):
        build_config(read_config_file(str(path)), {}, set(), str(path))
    if rule.kind == "float":
        path.write_text(f"{name}: .nan\n")
        with pytest.raises(UserError, match=r"must be a finite number"):
            build_config(read_config_file(str(path)), {}, set(), str(path))


def test_the_method_reads_its_declared_hyper_parameters():
    from sddcompress.engine.trainer import method_from_config
    from sddcompress.losses import MethodConfig
    from dataclasses import fields

    method_fields = {f.name for f in fields(MethodConfig)} - {"name"}
    assert set(METHOD_OPTIONS) == method_fields
    cfg = TrainConfig(method="sdd-dkd+msdcrd", temperature=3.0, msd_tau=0.5, scales="1,2")
    method = method_from_config(cfg)
    assert (method.temperature, method.msd_tau, method.scales) == (3.0, 0.5, (1, 2))
    assert not math.isnan(method.beta)
