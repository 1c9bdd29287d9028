"""Run configuration: defaults, YAML config files and the command line (command line wins)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


@dataclass
class TrainConfig:
    """Everything a `train` or `distill` run needs; field names are the CLI option names."""

    model: str = "resnet8x4"
    teacher: str | None = None
    teacher_ckpt: str | None = None
    teacher_pretrained: bool = False
    method: str = "ce"
    scales: str = "1,2,4"
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    ce_weight: float | None = None
    kd_weight: float | None = None
    warmup_epochs: float | None = None
    data: str = "cifar100"
    data_dir: str | None = None
    download: bool = False
    input_size: int | None = None
    skip_bad_images: bool = False
    workers: int = 0
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1
    precision: str = "no"
    grad_accum: int = 1
    compile: bool = False
    cpu: bool = False
    sync_bn: bool = True
    seed: int = 0
    out: str | None = None
    resume: bool = False
    fresh: bool = False
    skip_nonfinite: int = 0
    max_train_batches: int = 0
    log_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIG_KEYS = {f.name for f in fields(TrainConfig)}
# keys that must match for a run to resume into an existing output folder
RESUME_KEYS = ("model", "teacher", "method", "scales", "data", "input_size", "batch_size", "seed")


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("sddcompress.configs").iterdir() if p.name.endswith(".yaml"))


def read_config_file(path_or_name: str) -> dict[str, Any]:
    """Parse a YAML config (a path, or the name of a shipped config); unknown keys are errors."""
    path = Path(path_or_name)
    if not path.is_file():
        shipped = resources.files("sddcompress.configs") / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise UserError(f"config '{path_or_name}' not found (shipped configs: {', '.join(shipped_configs())})")
        text = shipped.read_text()
    else:
        text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config '{path_or_name}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config '{path_or_name}' must be a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in raw.items()}
    if "student" in values:  # the distill spelling of `model`
        if "model" in values:
            raise UserError(f"config '{path_or_name}': give either student or model, not both")
        values["model"] = values.pop("student")
    unknown = sorted(set(values) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"config '{path_or_name}': unknown key(s) {', '.join(unknown)}; see --help for valid options")
    if isinstance(values.get("scales"), list):
        values["scales"] = ",".join(str(s) for s in values["scales"])
    return values


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any], cli_given: set[str]) -> TrainConfig:
    """Defaults < config file < options given on the command line."""
    merged = dict(file_values)
    for key, value in cli_values.items():
        if key in CONFIG_KEYS and (key in cli_given or key not in merged):
            merged[key] = value
    merged = {k: v for k, v in merged.items() if k in CONFIG_KEYS and (v is not None or k in cli_given)}
    if isinstance(merged.get("milestones"), str):
        merged["milestones"] = [int(m) for m in merged["milestones"].split(",") if m.strip()]
    cfg = TrainConfig(**merged)
    validate(cfg)
    if cfg.out is None:
        cfg.out = default_out(cfg)
    return cfg


def data_slug(data: str) -> str:
    if data.startswith("imagefolder:"):
        return "imagefolder-" + (Path(data.split(":", 1)[1]).resolve().name or "root")
    return data


def train_out(model: str, data: str) -> str:
    """Where `sddcompress train --model MODEL --data DATA` writes by default."""
    return str(Path("runs") / f"{model.replace('/', '_')}-{data_slug(data)}")


def default_out(cfg: TrainConfig) -> str:
    if cfg.method == "ce" and not cfg.teacher:
        return train_out(cfg.model, cfg.data)
    return str(Path("runs") / f"{cfg.model.replace('/', '_')}-from-{(cfg.teacher or 'none').replace('/', '_')}-"
                               f"{cfg.method}-{data_slug(cfg.data)}")


def validate(cfg: TrainConfig) -> None:
    for name in ("batch_size", "epochs", "grad_accum"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.precision not in ("no", "fp16", "bf16"):
        raise UserError(f"--precision must be no, fp16 or bf16, got '{cfg.precision}'")
    if cfg.schedule not in ("step", "cosine"):
        raise UserError(f"--schedule must be step or cosine, got '{cfg.schedule}'")
    if cfg.workers < 0 or cfg.skip_nonfinite < 0 or cfg.max_train_batches < 0:
        raise UserError("--workers, --skip-nonfinite and --max-train-batches must be >= 0")
    if cfg.resume and cfg.fresh:
        raise UserError("--resume and --fresh contradict each other; pick one")
