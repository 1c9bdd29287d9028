"""Batch norm synchronised across processes on any device (torch's SyncBatchNorm is GPU-only).

With per-process batch statistics, N processes of batch B/N train a different model than one
process of batch B. Summing the statistics with a differentiable all-reduce makes them the same.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

# torch 2.13 marks this (the only public autograd-aware all-reduce) deprecated in favour of a private
# module; it still works, so keep users' logs clean.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        # two passes (mean, then the mean squared deviation): E[x^2] - E[x]^2 in float32 cancels
        # catastrophically when |mean| >> std and makes N processes drift from one
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:c] / n
        var = all_reduce(((x - mean.view(1, c, 1, 1)) ** 2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_((var * n / (n - 1)).detach(), m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, cuda: bool = False) -> nn.Module:
    """Replace every BatchNorm2d with a cross-process one (torch's SyncBatchNorm on CUDA)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, cuda)
    return module
