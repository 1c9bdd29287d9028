"""Top-1 / top-5 / loss of a classifier over a data loader (sharded across processes if any)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


@torch.inference_mode()
def evaluate(model: nn.Module, loader, accelerator=None) -> dict[str, float]:
    """Returns {"top1", "top5" (percent), "loss", "count"}; `model` returns logits (or (logits, local)).

    The one evaluation used by training (each epoch) and by `sddcompress eval`; batches are moved to
    the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stats = torch.zeros(4, dtype=torch.float64)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(labels[:, None])
        stats += torch.tensor([hit[:, 0].sum().item(), hit.any(1).sum().item(),
                               F.cross_entropy(logits, labels, reduction="sum").item(), labels.numel()],
                              dtype=torch.float64)
    model.train(was_training)
    n = max(stats[3].item(), 1.0)
    return {"top1": 100.0 * stats[0].item() / n, "top5": 100.0 * stats[1].item() / n,
            "loss": stats[2].item() / n, "count": int(stats[3].item())}
