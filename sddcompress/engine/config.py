"""Run configuration: defaults, YAML config files and the command line (command line wins)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..run_paths import require_out_given
from .option_rules import check_options


@dataclass
class TrainConfig:
    """Everything a `train` or `distill` run needs; field names are the CLI option names."""

    model: str = "resnet8x4"
    pretrained: bool = False  # start the model (train) / student (distill) from ImageNet weights
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
    msd_scales: str | None = None
    msd_window: float | None = None
    msd_tau: float | None = None
    msd_space: str | None = None
    msd_categorise: str | None = None
    msd_sample_weight: float | None = None
    msd_feature_weight: float | None = None
    msd_ramp_epochs: float | None = None
    data: str = "cifar100"
    data_dir: str | None = None
    download: bool = False
    input_size: int | None = None
    skip_bad_images: bool = False
    train_fraction: float = 1.0
    labelled_fraction: float = 1.0  # of each class's training images keeping their labels (data/label_scarce.py)
    unlabelled: str | None = None  # a folder of images without labels, for the distillation terms only
    workers: int | None = None  # None: from the CPU count (resolve_workers)
    pipeline: str = "auto"  # training input: device (in-memory uint8, batched augmentation), loader (PIL), auto
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1
    precision: str = "auto"
    grad_accum: int = 1
    clip_grad_norm: float = 0.0
    compile: bool = False
    step: str = "auto"  # the training step on CUDA: graph (captured, replayed), eager, auto
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
MSD_OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.name.startswith("msd_"))
# keys that must match for a run to resume into an existing output folder
RESUME_KEYS = ("model", "teacher", "method", "scales", "data", "input_size", "batch_size", "seed")


class DuplicateKey(yaml.YAMLError):
    """A mapping in a config file gives the same key twice."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        where = f"line {first_line}" if first_line == second_line else f"lines {first_line} and {second_line}"
        super().__init__(f"{key!r} is given twice ({where})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping giving one key twice (YAML would keep the last silently).
    Keys brought in by a merge (`<<: *base`) may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                continue
        return super().construct_mapping(node, deep=deep)


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("sddcompress.configs").iterdir() if p.name.endswith(".yaml"))


def read_config_file(path_or_name: str) -> dict[str, Any]:
    """Parse a YAML config (a path, or the name of a shipped config); unknown keys are errors."""
    path = Path(path_or_name)
    if path.is_dir():
        raise UserError(f"config '{path}' is a directory; pass a YAML file or a shipped config name")
    if not path.is_file():
        shipped = resources.files("sddcompress.configs") / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise UserError(f"config '{path_or_name}' not found (shipped configs: {', '.join(shipped_configs())})")
        text = shipped.read_text()
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UserError(f"config '{path}' cannot be read ({why}); pass a readable YAML file") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except DuplicateKey as exc:
        raise UserError(f"config '{path_or_name}': {exc}; keep one") from None
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


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any], cli_given: set[str],
                 config_name: str | None = None) -> TrainConfig:
    """Defaults < config file < options given on the command line; every value checked (option_rules)."""
    merged = dict(file_values)
    for key, value in cli_values.items():
        if key in CONFIG_KEYS and (key in cli_given or key not in merged):
            merged[key] = value
    merged = {k: v for k, v in merged.items() if k in CONFIG_KEYS and (v is not None or k in cli_given)}
    if merged.get("workers") == "auto":  # shipped configs: workers from the CPU count
        merged["workers"] = None
    where = f"config '{config_name}'" if config_name else "the config file"
    sources = {k: where for k in file_values if k in merged and k not in cli_given}
    cfg = TrainConfig(**check_options(merged, sources))
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


def resolve_workers(workers: int | None, processes: int = 1) -> int:
    """Data-loader workers: as given, or (None) the CPUs this process may use, shared by the local
    processes, at most 8 and leaving one for the training loop."""
    if workers is not None:
        return workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(processes, 1) - 1))


def validate(cfg: TrainConfig) -> None:
    """Check (and coerce in place) every option, then the rules that involve several options."""
    for name, value in check_options(cfg.to_dict()).items():
        setattr(cfg, name, value)
    require_out_given(cfg.out)
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise UserError(f"--train-fraction must be in (0, 1], got {cfg.train_fraction}")
    if cfg.unlabelled is not None:
        _check_unlabelled(cfg)
    if cfg.resume and cfg.fresh:
        raise UserError("--resume and --fresh contradict each other; pick one")
    if cfg.precision == "fp16" and (cfg.cpu or not _cuda_available()):
        # Accelerate would train in fp32 on a CPU while the checkpoint records fp16
        raise UserError("--precision fp16 needs a CUDA GPU" + (" and --cpu was given" if cfg.cpu else ", and there "
                        "is none here") + "; use --precision bf16 (CPU autocast) or --precision no")


def _check_unlabelled(cfg: TrainConfig) -> None:
    """--unlabelled: given, meaningful for the method, an existing folder (kept as an absolute path, so a
    run resumed from another working folder compares equal)."""
    if not str(cfg.unlabelled).strip():
        raise UserError("--unlabelled is empty (an unset shell variable?); pass a folder of images, or leave it out")
    if cfg.method == "ce":
        raise UserError("--unlabelled images feed the distillation terms only, and --method ce has none: distil "
                        "(e.g. --method sdd-dkd with --teacher) or leave --unlabelled out")
    folder = Path(cfg.unlabelled).expanduser()
    if not folder.exists():
        raise UserError(f"--unlabelled '{cfg.unlabelled}' does not exist; pass a folder of images")
    if not folder.is_dir():
        raise UserError(f"--unlabelled '{cfg.unlabelled}' is a file; pass the folder that holds the images")
    cfg.unlabelled = str(folder.resolve())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# options that may differ when a run resumes: they do not change what the run computes
RESUME_FREE_KEYS = ("teacher_ckpt", "teacher_pretrained", "data_dir", "download", "skip_bad_images", "workers",
                    "pipeline",
                    "compile", "step", "cpu", "out", "resume", "fresh", "skip_nonfinite", "log_every", "epochs")
METHOD_KEYS = ("temperature", "alpha", "beta", "gamma", "ce_weight", "kd_weight", "warmup_epochs", "scales")


def resume_changes(saved: dict, saved_method: dict | None, cfg: TrainConfig,
                   method: dict | None) -> dict[str, tuple[Any, Any]]:
    """{option: (saved value, requested value)} for options a resumed run cannot change.

    Loss options compare as the method resolved them (an explicit `--temperature 4` equals the default 4).
    """
    changed = {}
    for key in CONFIG_KEYS - set(RESUME_FREE_KEYS) - set(RESUME_KEYS):
        if key in METHOD_KEYS and saved_method and method and key in saved_method:
            old, new = saved_method[key], method.get(key)
        else:
            old, new = saved.get(key), getattr(cfg, key)
        if key in saved or key in METHOD_KEYS:
            if old != new:
                changed[key] = (old, new)
    return dict(sorted(changed.items()))


def check_resume(out: Path, saved: dict, saved_method: dict | None, cfg: TrainConfig, method: dict | None,
                 say) -> None:
    """Refuse to resume a run under different options; say what a longer/shorter --epochs does."""
    for key in RESUME_KEYS:
        if saved.get(key) != getattr(cfg, key):
            raise UserError(f"'{out}' holds a run with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}; "
                            "use another --out, or --fresh to start over")
    changes = resume_changes(saved, saved_method, cfg, method)
    if changes:
        was = ", ".join(f"{k}={old!r}" for k, (old, _) in changes.items())
        now = ", ".join(f"{k}={new!r}" for k, (_, new) in changes.items())
        raise UserError(f"'{out}' holds a run started with {was}; this command asks for {now}, which a resumed "
                        "run cannot apply: repeat the run's options to resume, --fresh to start over, or use "
                        "another --out")
    old_epochs = saved.get("epochs")
    if old_epochs is not None and old_epochs != cfg.epochs:
        if cfg.schedule == "cosine":
            raise UserError(f"'{out}' holds a cosine-schedule run of {old_epochs} epochs; its schedule cannot "
                            f"stretch to --epochs {cfg.epochs}: pass --epochs {old_epochs}, or --fresh")
        say(f"resuming with --epochs {cfg.epochs} (the run was started with {old_epochs}); the step "
            "schedule's milestones are unchanged")
