"""timm models as `timm/NAME`, only where timm is installed (imported lazily)."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..torchvision_compat import torchvision  # noqa: F401  (timm imports torchvision)


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm models need timm: pip install 'sddcompress[timm]'") from None
    return timm


def _default_tag(name: str) -> str:
    """`name` with timm's default pretrained tag (resnet18 -> resnet18.a1_in1k); unchanged if tagged."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or "." in name:
        return name
    tagged = [n for n in timm.list_pretrained(f"{name}.*")]
    return tagged[0] if tagged else name


def build_timm(name: str, num_classes: int) -> nn.Module:
    timm = _timm()
    if name.split(".")[0] not in timm.list_models():
        raise UserError(f"timm has no model '{name}'; see timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)
