"""Model zoo, the SDD local-logit head and weight loading."""

from .local_logits import DEFAULT_SCALES, LocalLogits, region_pool
from .registry import ModelEntry, build_model, list_models

__all__ = ["DEFAULT_SCALES", "LocalLogits", "ModelEntry", "build_model", "list_models", "region_pool"]
