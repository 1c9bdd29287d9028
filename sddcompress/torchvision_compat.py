"""Import torchvision on a CPU-only torch when its compiled operators cannot load.

The registry's torchvision wheel is a CUDA build. Paired with the CPU torch wheel its C++
extension does not load, and ``import torchvision`` then fails while registering fake kernels
for ``torchvision::nms`` ("operator torchvision::nms does not exist"). Defining the schemas of
the two operators it registers at import time (``nms`` and ``qnms``) lets the pure-Python parts
(models, transforms, datasets) import normally. Detection ops stay unavailable, which this
project never uses. A working install is left untouched: the schemas are only defined after a
first import attempt failed for exactly this reason.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the life of the process
shim_active = False


def _define_missing_ops() -> None:
    global _library, shim_active
    import torch

    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            _library.define(schema)
    shim_active = True


def import_torchvision() -> ModuleType:
    """Return the torchvision module, defining the missing op schemas only if needed."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _define_missing_ops()
    return importlib.import_module("torchvision")


torchvision = import_torchvision()
