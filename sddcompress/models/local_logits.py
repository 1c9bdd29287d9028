"""Multi-scale local logits (the SDD head) for any CNN classifier, without editing its code.

The wrapped model runs its own forward (so the global logits *are* the model's output); a hook
keeps the last spatial feature map, which is average-pooled at each scale and pushed region by
region through the model's own head (whatever follows global pooling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError

DEFAULT_SCALES = (1, 2, 4)


@dataclass
class _Split:
    hook_module: nn.Module  # its input (pool) or output (feature block) is the feature map
    take_input: bool
    head: nn.Module
    head_name: str


def _contains_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _find_split(model: nn.Module) -> _Split:
    children = list(model.named_children())
    head_idx = max((i for i, (_, m) in enumerate(children) if _contains_linear(m)), default=None)
    if head_idx is None or head_idx == 0:
        raise UserError(
            f"{type(model).__name__}: no classifier (a module with a Linear layer after the "
            "feature extractor) found; SDD needs a CNN with global pooling and a classifier"
        )
    head_name, head = children[head_idx]
    for _, child in reversed(children[:head_idx]):
        pools = [m for m in child.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
        if pools:
            return _Split(pools[-1], True, head, head_name)
        if any(p.requires_grad for p in child.parameters()) or len(list(child.modules())) > 1:
            return _Split(child, False, head, head_name)
    raise UserError(f"{type(model).__name__}: cannot find the feature map before the classifier")


def _bounds(size: int, cells: int, window: float) -> list[tuple[int, int]]:
    """[start, end) of each cell's window along one axis of length `size`."""
    if window == 1.0:  # exactly adaptive_avg_pool2d's bins
        return [((i * size) // cells, -((-(i + 1) * size) // cells)) for i in range(cells)]
    out = []
    for i in range(cells):
        centre, half = (i + 0.5) * size / cells, window * size / (2 * cells)
        out.append((max(0, math.floor(centre - half + 1e-9)), min(size, math.ceil(centre + half - 1e-9))))
    return out


@lru_cache(maxsize=32)
def _pool_matrix_cpu(height: int, width: int, scales: tuple[int, ...], window: float) -> torch.Tensor:
    """(N, H*W) averaging weights of every region (built once per map size, on the host)."""
    with torch.inference_mode(False):
        return _build_pool_matrix(height, width, scales, window)


def _build_pool_matrix(height: int, width: int, scales: tuple[int, ...], window: float) -> torch.Tensor:
    blocks = []
    for s in scales:  # a handful of scales; regions are built as a tensor outer product
        rows, cols = torch.zeros(s, height), torch.zeros(s, width)
        for i, (a, b) in enumerate(_bounds(height, s, window)):
            rows[i, a:b] = 1.0 / (b - a)
        for j, (a, b) in enumerate(_bounds(width, s, window)):
            cols[j, a:b] = 1.0 / (b - a)
        blocks.append(torch.einsum("ih,jw->ijhw", rows, cols).reshape(s * s, height * width))
    return torch.cat(blocks)


@lru_cache(maxsize=64)
def _pool_matrix_on(height: int, width: int, scales: tuple[int, ...], window: float, device: torch.device,
                    dtype: torch.dtype, transposed: bool) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: it must also serve steps that autograd records
        matrix = _pool_matrix_cpu(height, width, scales, window)
        return (matrix.t().contiguous() if transposed else matrix).to(device=device, dtype=dtype)


def pool_matrix(height: int, width: int, scales: tuple[int, ...], window: float = 1.0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                transposed: bool = False) -> torch.Tensor:
    """(N, H*W) region averaging weights, or (H*W, N) if `transposed`, cached per device and dtype (no host
    copy per step)."""
    return _pool_matrix_on(height, width, tuple(scales), float(window), torch.device(device), dtype, transposed)


class _PoolRegions(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, N): one product with the (H*W, N) averaging matrix. The gradient is the
    product with the cached (N, H*W) matrix, written out so that no transpose is dispatched per step."""

    @staticmethod
    def forward(ctx, feature, scales, window):
        b, c, h, w = feature.shape
        ctx.geometry = (b, c, h, w, scales, window)
        matrix = pool_matrix(h, w, scales, window, feature.device, feature.dtype, transposed=True)
        return feature.reshape(b * c, h * w).mm(matrix).view(b, c, -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        b, c, h, w, scales, window = ctx.geometry
        # in grad's dtype: under autocast the forward product ran in bf16 (autograd casts the result back)
        matrix = pool_matrix(h, w, scales, window, grad.device, grad.dtype)
        return grad.reshape(b * c, -1).mm(matrix).view(b, c, h, w), None, None


def pool_regions(feature: torch.Tensor, scales: tuple[int, ...], window: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N): scale 1 first, each scale's regions row-major (as SDD's region_pool);
    one matrix product (B*C, H*W) x (H*W, N)."""
    return _PoolRegions.apply(feature, tuple(scales), float(window))


def region_pool(feature: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N): scale 1 first, each scale's regions row-major; one matrix product."""
    return pool_regions(feature, scales)


def head_on_regions(head, regions: torch.Tensor, input_4d: bool = False) -> torch.Tensor:
    """Any classifier `head` on every pooled region vector, as one (B*N, C) batch: (B, C, N) -> (B, K, N).
    `input_4d`: the head takes (B*N, C, 1, 1)."""
    b, c, n = regions.shape
    flat = regions.permute(0, 2, 1).reshape(b * n, c)
    if input_4d:
        flat = flat[:, :, None, None]
    return head(flat).reshape(b, n, -1).permute(0, 2, 1)


#: The regions each scale option is for, as its error names them.
_SCALE_KINDS = {"--scales": "SDD", "--msd-scales": "MSD"}


class LocalLogits(nn.Module):
    """`forward(x) -> (global_logits (B, K), local_logits (B, K, N))`, N = sum(s*s).

    `input_size` is used once, for a probe forward that checks the split is exact: the head
    applied to the globally pooled captured map must reproduce the model's own logits.
    """

    def __init__(self, model: nn.Module, input_size: int, scales: tuple[int, ...] = DEFAULT_SCALES,
                 name: str | None = None, options: dict[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        if not scales or any((not isinstance(s, int)) or s < 1 for s in scales):
            raise UserError(f"scales must be positive integers, got {scales}")
        self.model = model
        self.scales = tuple(scales)
        # which option asked for which scales, to name the one a too-small feature map cannot serve
        self._options = options or {"--scales": self.scales}
        self.num_regions = sum(s * s for s in self.scales)
        label = name or type(model).__name__
        split = _find_split(model)
        self._head_name = split.head_name
        self._feature: torch.Tensor | None = None
        self._head_input_4d = False
        if split.take_input:
            split.hook_module.register_forward_hook(lambda m, i, o: self._keep(i[0]))
        else:
            split.hook_module.register_forward_hook(lambda m, i, o: self._keep(o))
        self._probe(input_size, label)

    def _keep(self, t: torch.Tensor) -> None:
        self._feature = t

    @property
    def head(self) -> nn.Module:
        return getattr(self.model, self._head_name)

    @torch.no_grad()
    def _probe(self, input_size: int, label: str) -> None:
        was_training = self.model.training
        self.model.eval()
        seen: dict[str, torch.Tensor] = {}
        handle = self.head.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
        try:
            param = next(self.model.parameters())
            x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
            out = self.model(x.to(param.device, param.dtype))
            self._check_split(out, seen, input_size, label)  # in eval mode: a head with dropout is deterministic
        finally:
            handle.remove()
            self.model.train(was_training)
            self._feature = None

    def _check_split(self, out: torch.Tensor, seen: dict[str, torch.Tensor], input_size: int, label: str) -> None:
        feat = self._feature
        if feat is None or feat.dim() != 4:
            raise UserError(f"{label}: could not capture a 4-D feature map before the classifier")
        h, w = feat.shape[-2:]
        if min(h, w) < max(self.scales):
            failing = [(option, scales) for option, scales in self._options.items()
                       if scales and max(scales) > min(h, w)]
            option, scales = failing[0]
            kind = _SCALE_KINDS.get(option, "SDD")
            raise UserError(
                f"{label}: last feature map is {h}x{w} at {input_size} px input, smaller than the "
                f"largest {kind} scale {max(scales)} ({option} {','.join(map(str, scales))}); use a larger "
                f"--input-size, smaller {' and '.join(o for o, _ in failing)}, or a small-input model "
                "(see `sddcompress models`)"
            )
        self._head_input_4d = seen["x"].dim() == 4
        self.feature_channels = int(feat.shape[1])
        rebuilt = self.apply_head(region_pool(feat, (1,)))[:, :, 0]
        if rebuilt.shape != out.shape or not torch.allclose(rebuilt, out, rtol=1e-3, atol=1e-4):
            raise UserError(
                f"{label}: its classifier applied to the pooled last feature map does not reproduce "
                "its logits (extra ops between features and head); SDD cannot split this model"
            )

    def apply_head(self, regions: torch.Tensor) -> torch.Tensor:
        """The model's own classifier on pooled region vectors: (B, C, N) -> (B, K, N)."""
        head = self.head
        if type(head) is nn.Linear:  # one 1x1 convolution over the regions: (B, C, N) in, (B, K, N) out
            return F.conv1d(regions, head.weight.unsqueeze(-1), head.bias)
        return head_on_regions(head, regions, self._head_input_4d)

    def local_logits(self, feature: torch.Tensor, scales: tuple[int, ...] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> local logits (B, K, N): every region of every scale pooled by one matrix product
        and classified by one call of the head (a Linear head: one 1x1 convolution over the regions)."""
        return self.apply_head(region_pool(feature, scales or self.scales))

    def logits_and_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits (B, K) and the last feature map (B, C, H, W) they were computed from."""
        self._feature = None
        logits = self.model(x)
        feature, self._feature = self._feature, None
        return logits, feature

    def global_and_local(self, logits: torch.Tensor, feature: torch.Tensor,
                         scales: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The global and local logits of the model's `logits` and last `feature` map. In training with scale
        1 first, the global logits are region 0 of the local ones (the same head on the same average, to
        rounding), so the backward runs through the head once, not twice."""
        scales = scales or self.scales
        local = self.local_logits(feature, scales)
        if self.model.training and scales[0] == 1:
            return local[:, :, 0], local
        return logits, local

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_and_local(*self.logits_and_feature(x))
