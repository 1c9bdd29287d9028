"""timm models as `timm/NAME`, only where timm is installed (imported lazily)."""

from __future__ import annotations

from torch import nn

from ..errors import UserError


def build_timm(name: str, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(f"model 'timm/{name}' needs timm: pip install 'sddcompress[timm]'") from None
    if name not in timm.list_models():
        raise UserError(f"timm has no model '{name}'; see timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)
