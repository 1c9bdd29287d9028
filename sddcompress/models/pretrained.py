"""ImageNet-pretrained starting points: torchvision weights through torch hub, `timm/NAME` through timm.

Weights are downloaded once into the usual caches (torch hub: `$TORCH_HOME/hub/checkpoints`,
Hugging Face: `$HF_HOME/hub`) and read from there afterwards. Offline (no network, or
`HF_HUB_OFFLINE=1`, which this module also honours for torch hub) a missing file is a one-line
error naming the file and where to put it.

The classifier is replaced for the dataset's class count (kept when it already fits); every other
tensor must be in the weights with the same shape, or the load is refused naming the first that is
not. The network keeps the stem its weights were trained with at every input size: a small-input
variant would have a re-initialised stem, which is never swapped in silently (at 32 px a torchvision
ResNet then ends on a 1x1 map, and SDD says so when asked for regions).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from ..data.preprocessing import ValidationPreprocessing, at_input_size
from ..errors import UserError
from ..torchvision_compat import torchvision
from .foreign_checkpoints import head_keys
from .registry import REGISTRY, build_model, torchvision_name


@dataclass
class PretrainedResult:
    source: str  # e.g. "torchvision:ResNet50_Weights.IMAGENET1K_V2" or "timm:resnet18.a1_in1k"
    preprocessing: ValidationPreprocessing  # what the weights expect, at the run's input size
    loaded_tensors: int
    head: str  # "replaced" or "kept"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _torchvision_weights(name: str):
    tv = torchvision_name(name)
    if tv is None:
        family = REGISTRY[name].family if name in REGISTRY else "unknown"
        hint = (" (a CIFAR model: start from a teacher-zoo file with --teacher-ckpt/--ckpt instead)"
                if family in ("cifar-resnet", "wrn", "vgg", "shufflenet", "paper-cifar") else "")
        raise UserError(f"'{name}' has no ImageNet weights{hint}; pretrained models are torchvision classifiers "
                        "(`sddcompress models --all`) and timm/NAME")
    try:
        return tv, torchvision.models.get_model_weights(tv).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"torchvision has no pretrained weights for '{tv}'") from None


def expected_preprocessing(name: str) -> ValidationPreprocessing:
    """The preprocessing record `name`'s pretrained weights expect at their own size (known without
    downloading them): torchvision's weights transforms, or timm's pretrained_cfg."""
    if name.startswith("timm/"):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(_timm_module()._default_tag(name[5:]))
        if cfg is None:
            raise UserError(f"timm has no pretrained weights for '{name}'")
        crop = int(cfg.input_size[-1])
        return ValidationPreprocessing(round(crop / (cfg.crop_pct or 0.875)), crop, cfg.interpolation or "bilinear",
                                       tuple(cfg.mean), tuple(cfg.std))
    _, weights = _torchvision_weights(name)
    t = weights.transforms()
    return ValidationPreprocessing(int(t.resize_size[0]), int(t.crop_size[0]), t.interpolation.value,
                                   tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std))


def pretrained_num_classes(name: str) -> int | None:
    """The class count of `name`'s pretrained classifier, known without downloading the weights (None if
    the weights' description does not say)."""
    if name.startswith("timm/"):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(_timm_module()._default_tag(name[5:]))
        return int(cfg.num_classes) if cfg is not None and getattr(cfg, "num_classes", None) else None
    _, weights = _torchvision_weights(name)
    categories = weights.meta.get("categories")
    return len(categories) if categories else None


def _timm_module():
    try:
        import timm  # noqa: F401  (torchvision_compat is imported above)

        from . import timm_models
        return timm_models
    except ImportError:
        raise UserError("timm models need timm: pip install 'sddcompress[timm]'") from None


def torchvision_state_dict(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the ImageNet state dict of `name` from the torch hub cache, downloading it when online; its source)."""
    tv, weights = _torchvision_weights(name)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(urlparse(weights.url).path).name
    where = (f"put {file.name} (from {weights.url}) in {folder} (the torch hub cache; $TORCH_HOME moves it), "
             "or run once with network access")
    if not file.is_file() and offline():
        raise UserError(f"ImageNet weights for '{name}' are not cached and HF_HUB_OFFLINE is set: {where}")
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, model_dir=str(folder), map_location="cpu",
                                                   progress=False, check_hash=True, weights_only=True)
    except (URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"ImageNet weights for '{name}' are not cached and could not be downloaded ({reason}): "
                        f"{where}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cached ImageNet weights {file} are unreadable ({text}); delete the file to download it "
                        "again") from None
    return state, f"torchvision:{type(weights).__name__}.{weights.name}"


def transfer_backbone(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> tuple[int, str]:
    """Load every tensor but the classifier from `state` (checked); the classifier too where it fits.
    Returns (tensors loaded, "replaced" | "kept")."""
    own = model.state_dict()
    head = set(head_keys(model))
    problems = [f"missing tensor '{k}'" for k in own if k not in head and k not in state]
    problems += [f"tensor '{k}' is {tuple(state[k].shape)} in the weights but {tuple(v.shape)} in the model"
                 for k, v in own.items() if k not in head and k in state and state[k].shape != v.shape]
    problems += [f"unexpected tensor '{k}'" for k in state if k not in own]
    if problems:
        raise UserError(f"the ImageNet weights do not fit '{name}' ({len(problems)} problems, first: {problems[0]})")
    keep_head = all(k in state and state[k].shape == own[k].shape for k in head)
    chosen = {k: v for k, v in state.items() if keep_head or k not in head}
    model.load_state_dict(chosen, strict=False)
    return len(chosen), "kept" if keep_head else "replaced"


def build_pretrained(name: str, num_classes: int, input_size: int) -> tuple[nn.Module, PretrainedResult]:
    """`name` with ImageNet weights and a classifier for `num_classes`, and what the weights expect."""
    prep = at_input_size(expected_preprocessing(name), input_size)
    if name.startswith("timm/"):
        model, source, loaded, head = _timm_pretrained(name[5:], num_classes)
        return model, PretrainedResult(source, prep, loaded, head)
    model = build_model(name, num_classes, input_size, imagenet_stem=True)
    state, source = torchvision_state_dict(name)
    loaded, head = transfer_backbone(model, state, name)
    return model, PretrainedResult(source, prep, loaded, head)


def _timm_pretrained(name: str, num_classes: int) -> tuple[nn.Module, str, int, str]:
    """timm downloads into the Hugging Face cache; it loads every tensor but the classifier it resets."""
    timm_models = _timm_module()
    import timm

    tag = timm_models._default_tag(name)
    try:
        reference = timm.create_model(tag, pretrained=True)
    except (OSError, ConnectionError, TimeoutError) as exc:  # LocalEntryNotFoundError is an OSError
        from huggingface_hub import constants

        cfg = timm.models.get_pretrained_cfg(tag)
        repo = getattr(cfg, "hf_hub_id", None) or f"timm/{tag}"
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        raise UserError(f"timm weights for 'timm/{name}' (model.safetensors of {repo}) are not in the Hugging Face "
                        f"cache and could not be downloaded ({type(exc).__name__}): put {folder} in place (`hf "
                        f"download {repo}` on a connected machine writes it; $HF_HOME moves it), or run once "
                        "online") from None
    model = timm.create_model(tag, pretrained=False, num_classes=num_classes)
    loaded, head = transfer_backbone(model, reference.state_dict(), f"timm/{name}")
    return model, f"timm:{tag}", loaded, head
