"""Teacher weights: from our checkpoints, or torchvision weights already in the local hub cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..torchvision_compat import torchvision
from .torchvision_models import SMALL_INPUT_MAX

# registry aliases whose large-input form is a torchvision model
TORCHVISION_ALIASES = {"mobilenetv2": "mobilenet_v2", "shufflenetv2": "shufflenet_v2_x1_0"}


def torchvision_weights_path(name: str) -> tuple[Path, object]:
    """Where torch hub would keep `name`'s default ImageNet weights, and the weights enum entry."""
    tv_name = TORCHVISION_ALIASES.get(name, name)
    try:
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
    except (ValueError, KeyError):
        raise UserError(f"torchvision has no pretrained weights for '{name}'") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name, weights


def load_torchvision_pretrained(model: nn.Module, name: str, num_classes: int, input_size: int) -> None:
    """Load ImageNet weights from the local cache only (nothing is downloaded)."""
    path, weights = torchvision_weights_path(name)
    classes = len(weights.meta["categories"])
    if num_classes != classes:
        raise UserError(f"pretrained '{name}' has {classes} classes but the data has {num_classes}; "
                        "fine-tune it first with `sddcompress train` and pass --teacher-ckpt")
    if input_size <= SMALL_INPUT_MAX:
        raise UserError(f"pretrained '{name}' is for large inputs; use --input-size 224")
    if not path.is_file():
        raise UserError(f"pretrained weights for '{name}' are not in the local cache ({path}); nothing is "
                        f"downloaded at run time: fetch {weights.url} on a connected machine and copy it there")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
