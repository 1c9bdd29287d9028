"""Top-1 / top-5 / loss of a classifier over a data loader (sharded across processes if any)."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn
from torch.nn import functional as F


@torch.inference_mode()
def evaluate(model: nn.Module, loader, accelerator=None,
             autocast: Callable[[], ContextManager] | None = None) -> dict[str, float]:
    """Returns {"top1", "top5" (percent), "loss", "count"}; `model` returns logits (or (logits, local)).

    The one evaluation used by training (each epoch) and by `sddcompress eval`; batches are moved to
    the model's device, the forward runs under `autocast()` (the training precision) when given, and the
    counts stay on the device until the end: one host-device sync per evaluation, not per batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(images)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices.eq(labels[:, None])
        stats += torch.stack([hit[:, 0].sum().double(), hit.any(1).sum().double(),
                              F.cross_entropy(logits, labels, reduction="sum").double()])
        count += labels.numel()
    model.train(was_training)
    top1, top5, loss = stats.tolist()
    n = max(count, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "count": int(count)}
