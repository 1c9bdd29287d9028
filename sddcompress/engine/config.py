"""Run configuration: defaults, YAML config files and the command line (command line wins)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..run_paths import require_out_given
from .option_rules import (FLAG, INPUT_SIZE_MAX, INPUT_SIZE_MIN, NONNEG_FLOAT, NONNEG_INT, POS_INT, SEED_MAX, Rule,
                           check_options, option)


DISTILL = ("distill",)


@dataclass
class TrainConfig:
    """Everything a `train` or `distill` run needs, each option declared once (`option`): its default, help,
    rule and commands. The command line (cli/options.py), config files, validation (option_rules.py), the
    resume checks and the run record all read these declarations; field names are the option names."""

    model: str = option("resnet8x4", "Model to train (see `sddcompress models`).", Rule("str"),
                        flags={"train": "--model", "distill": "--student"}, resume="identity")
    pretrained: bool = option(False, "Start from ImageNet weights (torchvision via torch hub, timm/NAME via Hugging "
                              "Face; downloaded once, then cached) with a new classifier for the data's classes; the "
                              "data is normalised as the weights expect.", FLAG,
                              flags={"train": "--pretrained", "distill": "--student-pretrained"})
    teacher: str | None = option(None, "Teacher model name (see `sddcompress models`).", Rule("str", optional=True),
                                 commands=DISTILL, resume="identity")
    teacher_ckpt: str | None = option(None, "Teacher checkpoint.", Rule("str", optional=True), commands=DISTILL,
                                      shown_default="runs/TEACHER-DATA/checkpoints/best.pt if `sddcompress train` "
                                                    "wrote it", resume="free")
    teacher_pretrained: bool = option(False, "Teacher from ImageNet weights (torchvision via torch hub, timm/NAME via "
                                      "Hugging Face; downloaded once, then cached); only for 1000-class data, "
                                      "otherwise fine-tune it first with `sddcompress train --pretrained`.", FLAG,
                                      commands=DISTILL, resume="free")
    method: str = option("ce", "Distillation method, one of the registered ones:", Rule("str"), commands=DISTILL,
                         cli_default="sdd-dkd", resume="identity")
    # SDD's weighting reads region 0 as the global prediction: its scales start at 1
    scales: str = option("1,2,4", "SDD pooling scales, comma separated (1,2,4 = 1+4+16 regions).",
                         Rule("scales", 1, ascending_from_1=True), commands=DISTILL, resume="identity", method=True)
    temperature: float | None = option(None, "Softmax temperature T.", Rule("float", 0, low_open=True, optional=True),
                                       commands=DISTILL, shown_default="4", resume="method", method=True)
    alpha: float | None = option(None, "DKD target-class weight.", NONNEG_FLOAT, commands=DISTILL, shown_default="1",
                                 resume="method", method=True)
    beta: float | None = option(None, "DKD non-target-class weight.", NONNEG_FLOAT, commands=DISTILL,
                                shown_default="8", resume="method", method=True)
    gamma: float | None = option(None, "SDD weight of complementary regions.", NONNEG_FLOAT, commands=DISTILL,
                                 shown_default="2", resume="method", method=True)
    ce_weight: float | None = option(None, "Cross-entropy weight.", NONNEG_FLOAT, commands=DISTILL,
                                     shown_default="0.1 for (sdd-)kd, 1 for (sdd-)dkd", resume="method", method=True)
    kd_weight: float | None = option(None, "Distillation weight.", NONNEG_FLOAT, commands=DISTILL,
                                     shown_default="0.9 for (sdd-)kd, 1 for (sdd-)dkd", resume="method", method=True)
    warmup_epochs: float | None = option(None, "Epochs over which the distillation term ramps 0 -> 1.", NONNEG_FLOAT,
                                         commands=DISTILL, shown_default="20 for (sdd-)dkd, 0 else", resume="method",
                                         method=True)
    msd_scales: str | None = option(None, "MSDCRD pooling scales, comma separated.", Rule("scales", 1, optional=True),
                                    commands=DISTILL, shown_default="1,2,4", method=True)
    msd_window: float | None = option(None, "MSDCRD window side in grid cells; > 1 overlaps neighbouring windows.",
                                      Rule("float", 1, optional=True,
                                           hint="the window side in grid cells; 1 = the cell itself"),
                                      commands=DISTILL, shown_default="1", method=True)
    msd_tau: float | None = option(None, "MSDCRD InfoNCE temperature.", Rule("float", 0, low_open=True, optional=True),
                                   commands=DISTILL, shown_default="0.07", method=True)
    msd_space: str | None = option(None, "MSDCRD embedding: features (student projected to the teacher's width) or "
                                   "logits (each model's own head).",
                                   Rule("str", choices=("features", "logits"), optional=True),  # msdcrd.SPACES
                                   commands=DISTILL, shown_default="features", method=True)
    msd_categorise: str | None = option(None, "MSDCRD region weights: sdd (complementary regions x gamma) or none.",
                                        Rule("str", choices=("sdd", "none"), optional=True),  # msdcrd.CATEGORISE
                                        commands=DISTILL, shown_default="sdd", method=True)
    msd_sample_weight: float | None = option(None, "Weight of the sample-wise contrastive term.", NONNEG_FLOAT,
                                             commands=DISTILL, shown_default="0.8", method=True)
    msd_feature_weight: float | None = option(None, "Weight of the feature-wise contrastive term.", NONNEG_FLOAT,
                                              commands=DISTILL, shown_default="0.8", method=True)
    msd_ramp_epochs: float | None = option(None, "Epochs over which the MSDCRD terms ramp 0 -> 1.", NONNEG_FLOAT,
                                           commands=DISTILL, shown_default="20", method=True)
    data: str = option("cifar100", "Dataset: cifar10, cifar100, digits (offline, ships with scikit-learn) or "
                       "imagefolder:PATH.", Rule("str"), resume="identity")
    data_dir: str | None = option(None, "Dataset folder for cifar10/cifar100.", Rule("str", optional=True),
                                  shown_default="data/NAME", resume="free")
    download: bool = option(False, "Download CIFAR if it is missing.", FLAG, resume="free")
    input_size: int | None = option(None, "Input size in px.",
                                    Rule("int", INPUT_SIZE_MIN, INPUT_SIZE_MAX, optional=True,
                                         hint="larger inputs need more memory than a training host has; 224 is the "
                                              "ImageNet size"),
                                    shown_default="32, 224 for imagefolder", resume="identity")
    skip_bad_images: bool = option(False, "Skip unreadable images in an image folder (counted) instead of failing.",
                                   FLAG, resume="free")
    train_fraction: float = option(1.0, "Train on this fraction of each class's training images (fixed subset; val "
                                   "untouched).", Rule("float", 0, 1, low_open=True))
    # label-scarce training (data/label_scarce.py): unlabelled images carry label -1 to the objective
    labelled_fraction: float = option(1.0, "Cross-entropy sees the labels of this fraction of each class's training "
                                      "images (of those --train-fraction keeps; a fixed subset drawn with --seed); the "
                                      "distillation terms use every image. With --method ce the run trains on the "
                                      "labelled images only.",
                                      Rule("float", 0, 1, low_open=True,
                                           hint="the share of each class's training images whose labels the run "
                                                "sees"))
    unlabelled: str | None = option(None, "A folder of images without labels (any layout, any size; searched "
                                    "recursively) added to the training set for the distillation terms only.",
                                    Rule("str", optional=True))
    workers: int | None = option(None, "Data loader workers.",
                                 Rule("int", 0, optional=True, hint="or auto in a config file"),
                                 shown_default="from the CPU count, at most 8", resume="free")
    pipeline: str = option("auto", "Training input: device (small images held once on the training device, augmented "
                           "per batch there), jpeg (a folder of JPEGs above 64 px decoded per batch on the training "
                           "device, cropped, resized and flipped there), loader (PIL per image, DataLoader workers), "
                           "auto (on a GPU: device when the images are <= 64 px and fit in 4 GiB, jpeg for a large "
                           "JPEG folder; else loader).",
                           Rule("str", choices=("auto", "device", "jpeg", "loader")), resume="free")
    epochs: int = option(240, "Training epochs.", POS_INT, resume="free")
    batch_size: int = option(64, "Global batch per optimiser step (split across processes and --grad-accum).", POS_INT,
                             resume="identity")
    lr: float = option(0.05, "Initial SGD learning rate.", Rule("float", 0, low_open=True))
    momentum: float = option(0.9, "SGD momentum.", Rule("float", 0, 1, high_open=True))
    weight_decay: float = option(5e-4, "Weight decay.", Rule("float", 0))
    schedule: str = option("step", "LR schedule: step (x lr-decay at --milestones) or cosine.",
                           Rule("str", choices=("step", "cosine")))
    milestones: list[int] = option(help="Epochs at which the step schedule decays the LR.",
                                   rule=Rule("ints", 1, hint="comma-separated epoch numbers, e.g. 150,180,210"),
                                   default_factory=lambda: [150, 180, 210])
    lr_decay: float = option(0.1, "Step schedule factor.", Rule("float", 0, low_open=True))
    precision: str = option("auto", "Mixed precision: auto (bf16 on a GPU that supports it, else none), no, fp16, "
                            "bf16.", Rule("str", choices=("auto", "no", "fp16", "bf16")))
    grad_accum: int = option(1, "Gradient accumulation steps.", POS_INT)
    clip_grad_norm: float = option(0.0, "Clip the gradient norm to this value (0 = off; the paper configs use 40).",
                                   Rule("float", 0, hint="0 = off; the paper configs use 40"))
    compile: bool = option(False, "torch.compile the student and the teacher.", FLAG, resume="free")
    step: str = option("auto", "Training step on a CUDA GPU: graph (the whole step recorded once as a CUDA graph and "
                       "replayed per batch), eager (op by op), auto (graph on one GPU; eager with several processes, "
                       "--grad-accum > 1, --skip-nonfinite or fp16, saying why).",
                       Rule("str", choices=("auto", "graph", "eager")), resume="free")
    cpu: bool = option(False, "Train on CPU even if a GPU is present.", FLAG, resume="free")
    sync_bn: bool = option(True, "Sum batch-norm statistics across processes (multi-process runs).", Rule("bool"))
    seed: int = option(0, "Random seed.", Rule("int", 0, SEED_MAX, hint="numpy's seed range"), resume="identity")
    out: str | None = option(None, "Output folder (checkpoints/, metrics.jsonl, metrics.csv): new, empty, or a run of "
                             "sddcompress; any other folder is refused.",
                             Rule("str", optional=True),
                             shown_default="runs/MODEL-DATA for train, runs/STUDENT-from-TEACHER-METHOD-DATA for "
                                           "distill", resume="free")
    resume: bool = option(False, "Require a run to resume in --out (re-running into a non-empty --out resumes "
                          "anyway).", FLAG, resume="free")
    fresh: bool = option(False, "Discard the run in --out (its checkpoints and metrics; any other file stays) and "
                         "start over.", FLAG, resume="free")
    skip_nonfinite: int = option(0, "Skip up to N steps with a NaN/inf loss instead of stopping. N > 0 checks the loss "
                                 "every step (one host-device sync per step); with 0 the check runs at log points and "
                                 "before every checkpoint.", NONNEG_INT, resume="free")
    max_train_batches: int = option(0, "Cap batches per epoch (0 = all); for smoke tests.", NONNEG_INT)
    log_every: int = option(50, "Progress line every N batches when not on a terminal.", POS_INT, resume="free")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
CONFIG_KEYS = set(_FIELDS)
RULES: dict[str, Rule] = {name: f.metadata["rule"] for name, f in _FIELDS.items()}
# options that must match for a run to resume into an existing output folder
RESUME_KEYS = tuple(n for n, f in _FIELDS.items() if f.metadata["resume"] == "identity")
# options that may differ when a run resumes: they do not change what the run computes
RESUME_FREE_KEYS = tuple(n for n, f in _FIELDS.items() if f.metadata["resume"] == "free")
# options compared on resume as the method resolved them (an explicit --temperature 4 equals the default 4)
METHOD_KEYS = tuple(n for n, f in _FIELDS.items() if f.metadata["resume"] == "method")
# the distillation method's hyper-parameters, passed to make_method
METHOD_OPTIONS = tuple(n for n, f in _FIELDS.items() if f.metadata["method"])


def declaration(name: str) -> dict[str, Any]:
    """The declaration of training option `name`: help, rule, commands, flags, defaults, resume class."""
    return dict(_FIELDS[name].metadata)


def option_fields() -> list:
    """The dataclass fields of every training option, in declaration order."""
    return list(_FIELDS.values())


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
    cfg = TrainConfig(**merged)
    validate(cfg, sources)
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


def validate(cfg: TrainConfig, sources: dict[str, str] | None = None) -> None:
    """Check (and coerce in place) every option, then the rules that involve several options; once per config
    (`is_validated`). `sources` names where values other than the command line's came from."""
    for name, value in check_options(cfg.to_dict(), sources).items():
        setattr(cfg, name, value)
    require_out_given(cfg.out)
    if cfg.unlabelled is not None:
        _check_unlabelled(cfg)
    if cfg.resume and cfg.fresh:
        raise UserError("--resume and --fresh contradict each other; pick one")
    if cfg.precision == "fp16" and (cfg.cpu or not _cuda_available()):
        # Accelerate would train in fp32 on a CPU while the checkpoint records fp16
        raise UserError("--precision fp16 needs a CUDA GPU" + (" and --cpu was given" if cfg.cpu else ", and there "
                        "is none here") + "; use --precision bf16 (CPU autocast) or --precision no")
    cfg.__dict__["_validated"] = True


def is_validated(cfg: TrainConfig) -> bool:
    return bool(cfg.__dict__.get("_validated"))


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
