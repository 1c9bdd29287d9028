"""The Q/DQ model that ONNX Runtime and TensorRT run, as a trainable torch module (`QdqNet`).

`sddcompress_export.ort_quantization` writes model.int8.onnx: the float graph (BatchNorm folded into the
convolutions) with QuantizeLinear/DequantizeLinear pairs on the tensors it quantises, per-output-channel
symmetric int8 weights (scale max |w| / 127, range -127..127), int32 biases (scale = input scale x weight
scale) and the layers the precision plan keeps in float. `QdqNet` runs that graph node by node in torch:

- an activation QuantizeLinear is fake quantisation (`FakeQuantize`: ONNX Runtime's arithmetic, torch's
  straight-through gradient) with the model's own scale and zero point (fixed: the ranges the INT8 stage
  calibrated); its DequantizeLinear passes the value on;
- a quantised weight is a trainable float parameter, started from the float graph's weight and fake
  quantised per output channel with the scale ONNX Runtime would give it now (max |w| / 127); its bias is
  rounded to its int32 step (input scale x weight scale) the same way;
- float layers keep plain float parameters.

Gradients pass through the rounding as through the identity inside the clipping range. `float_weights()` gives the trained weights back under their float graph names, for the INT8
stage to quantise again with the same ranges and float layers: that file is the model trained here, to
rounding. `features_and_head` exposes the map before the global pooling and the rest of the graph after it,
so SDD's local logits are computed through the quantised classifier as well.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

WEIGHT_SUFFIX = "_quantized"  # ONNX Runtime names a quantised initializer after its float source
INT_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int32): (-2**31, 2**31 - 1)}
WEIGHT_RANGE = (-127, 127)  # symmetric int8 weights, as ONNX Runtime writes them


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: dict, dims: int) -> list[int]:
    """ONNX begin/end pads -> F.pad order (last axis first)."""
    pads = list(attrs.get("pads", [0] * 2 * dims))
    out: list[int] = []
    for axis in reversed(range(dims)):
        out += [pads[axis], pads[axis + dims]]
    return out


def _conv(x, w, b, a):
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UserError("quantization-aware training: Conv with auto_pad is not supported; export with torch's "
                        "exporter (explicit pads)")
    pads = _pads(a, w.dim() - 2)
    if any(pads):
        x = F.pad(x, pads)
    return F.conv2d(x, w, b, stride=a.get("strides", 1), dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _gemm(x, w, b, a):
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else y + a.get("beta", 1.0) * b


def _pool(kind: str):
    def run(x, a):
        kernel, strides = a["kernel_shape"], a.get("strides", a["kernel_shape"])
        pads = _pads(a, len(kernel))
        if kind == "max":
            if any(pads):
                x = F.pad(x, pads, value=float("-inf"))
            return F.max_pool2d(x, kernel, strides, ceil_mode=bool(a.get("ceil_mode", 0)))
        if any(pads) and not a.get("count_include_pad", 0):
            raise UserError("quantization-aware training: AveragePool with padding excluded is not supported")
        return F.avg_pool2d(F.pad(x, pads) if any(pads) else x, kernel, strides,
                            ceil_mode=bool(a.get("ceil_mode", 0)))
    return run


def _reduce_mean(x, axes, a):
    axes = a.get("axes") if axes is None else [int(v) for v in axes.tolist()]
    return x.mean(dim=tuple(axes), keepdim=bool(a.get("keepdims", 1)))


def _split(x, split, a, n_out):
    axis = a.get("axis", 0)
    sizes = [int(v) for v in split.tolist()] if split is not None else a.get("split")
    if sizes is None:
        sizes = [x.shape[axis] // n_out] * n_out
    return torch.split(x, sizes, dim=axis)


def _slice(x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.dim()
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        index[ax] = slice(int(s), int(e) if abs(e) < 2**62 else None, int(st))
    return x[tuple(index)]


# op -> f(inputs, attributes, number of outputs); a missing optional input is None
OPS = {
    "Conv": lambda i, a, n: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "Gemm": lambda i, a, n: _gemm(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "MatMul": lambda i, a, n: i[0] @ i[1],
    "Relu": lambda i, a, n: F.relu(i[0]),
    "Clip": lambda i, a, n: torch.clamp(i[0], *(float(v) if v is not None else None for v in
                                                (i + [None, None])[1:3])),
    "Sigmoid": lambda i, a, n: torch.sigmoid(i[0]),
    "HardSigmoid": lambda i, a, n: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda i, a, n: F.hardswish(i[0]),
    "Add": lambda i, a, n: i[0] + i[1],
    "Sub": lambda i, a, n: i[0] - i[1],
    "Mul": lambda i, a, n: i[0] * i[1],
    "Div": lambda i, a, n: i[0] / i[1],
    "MaxPool": lambda i, a, n: _pool("max")(i[0], a),
    "AveragePool": lambda i, a, n: _pool("avg")(i[0], a),
    "GlobalAveragePool": lambda i, a, n: i[0].mean(dim=(2, 3), keepdim=True),
    "ReduceMean": lambda i, a, n: _reduce_mean(i[0], i[1] if len(i) > 1 else None, a),
    "Flatten": lambda i, a, n: i[0].flatten(a.get("axis", 1)),
    "Reshape": lambda i, a, n: i[0].reshape([int(v) for v in i[1].tolist()]),
    "Transpose": lambda i, a, n: i[0].permute(*a["perm"]),
    "Concat": lambda i, a, n: torch.cat(i, dim=a["axis"]),
    "Split": lambda i, a, n: _split(i[0], i[1] if len(i) > 1 else None, a, n),
    "Slice": lambda i, a, n: _slice(*i),
    "BatchNormalization": lambda i, a, n: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0,
                                                       a.get("epsilon", 1e-5)),
    "Identity": lambda i, a, n: i[0],
    "Dropout": lambda i, a, n: i[0],
}
POOL_OPS = ("GlobalAveragePool", "ReduceMean")


class FakeQuantize(torch.autograd.Function):
    """x -> (clamp(round(x / scale) + zero_point, lo, hi) - zero_point) * scale, as ONNX Runtime's
    QuantizeLinear + DequantizeLinear compute it: a float32 division and rounding half to even. (torch's
    fake_quantize ops multiply by 1 / scale instead, which rounds a value lying within an ulp of a half
    step the other way, and then a weight or activation differs from the deployed one by a whole step.)
    The gradient passes straight through where the rounded value is inside lo..hi, and is 0 outside, as
    torch's fake quantisation does. `scale` and `zero_point` broadcast against x (per channel or tensor)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, lo: int, hi: int):
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= lo) & (q <= hi))
        return (q.clamp(lo, hi) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """Per output channel: max |w| / 127 (ONNX Runtime's symmetric int8 weight scale; 1 for an all-zero row)."""
    amax = w.detach().abs().flatten(1).amax(dim=1)
    return torch.where(amax > 0, amax / WEIGHT_RANGE[1], torch.ones_like(amax)).float()


def fake_weight(w: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """The weight as its int8 per-channel values dequantized (scales from the weight as it is now)."""
    scales = weight_scales(w if axis == 0 else w.transpose(0, axis))
    shape = [1] * w.dim()
    shape[axis] = -1
    return FakeQuantize.apply(w, scales.reshape(shape), 0.0, *WEIGHT_RANGE)


class QdqNet(nn.Module):
    """model.int8.onnx's graph as a torch module whose quantised weights train (see the module text)."""

    def __init__(self, qdq_model, float_model) -> None:
        from onnx import numpy_helper

        super().__init__()
        graph = qdq_model.graph
        float_inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
        consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.input_name, self.output_name = graph.input[0].name, graph.output[0].name
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        unsupported = sorted({op for op, *_ in self.nodes if op not in OPS and op not in ("QuantizeLinear",
                                                                                          "DequantizeLinear")})
        if unsupported:
            raise UserError(f"quantization-aware training: the model uses ONNX ops {', '.join(unsupported)}, which "
                            "it cannot run; export without --qat-epochs")
        producer = {out: (op, ins) for op, ins, outs, _ in self.nodes for out in outs}
        trained = {name for op, ins, _, _ in self.nodes if op in ("Conv", "Gemm", "MatMul") for name in ins[1:]}
        # trainable: the weights and biases of weighted ops, in float or behind a DequantizeLinear
        self.param_names: list[str] = []
        self.params = nn.ParameterList()
        self._param_index: dict[str, int] = {}
        self.weight_of: dict[str, tuple[str, int]] = {}  # DQ output -> (float name, axis)
        self.bias_of: dict[str, tuple[str, str, str]] = {}  # DQ output -> (bias, weight DQ output, act. scale)
        self.act_q: dict[str, tuple[float, int, tuple[int, int]]] = {}  # Q output -> (scale, zero point, range)
        self.constants: dict[str, torch.Tensor] = {}
        for op, ins, outs, attrs in self.nodes:
            if op == "DequantizeLinear" and ins[0] in consts:
                source = ins[0][: -len(WEIGHT_SUFFIX)] if ins[0].endswith(WEIGHT_SUFFIX) else None
                if source in float_inits and outs[0] in trained:
                    self._add_param(source, float_inits[source])
                    if consts[ins[0]].dtype == np.int32:
                        self.bias_of[outs[0]] = (source, "", "")
                    else:
                        self.weight_of[outs[0]] = (source, int(attrs.get("axis", 1)) if consts[ins[1]].size > 1
                                                   else 0)
                    continue
            if op == "QuantizeLinear":
                zp = consts[ins[2]] if len(ins) > 2 else np.zeros((), np.uint8)
                if consts[ins[1]].size != 1:
                    raise UserError("quantization-aware training: per-channel activation quantisation is not "
                                    "supported")
                self.act_q[outs[0]] = (float(consts[ins[1]]), int(zp), INT_RANGES[zp.dtype])
        for op, ins, outs, _ in self.nodes:  # float weights of layers the plan keeps float
            if op in ("Conv", "Gemm", "MatMul"):
                for name in ins[1:]:
                    if name in float_inits and name in consts and name not in self._param_index:
                        self._add_param(name, float_inits[name])
        for op, ins, outs, _ in self.nodes:  # a bias's step: the scale of its node's input x its weight's
            if op in ("Conv", "Gemm") and len(ins) > 2 and ins[2] in self.bias_of:
                act = producer.get(ins[0])
                act_scale = act[1][1] if act and act[0] == "DequantizeLinear" else ""
                self.bias_of[ins[2]] = (self.bias_of[ins[2]][0], ins[1] if ins[1] in self.weight_of else "",
                                        act_scale)
        for name, value in consts.items():
            if name not in self._param_index:
                self.constants[name] = torch.from_numpy(np.array(value))
        pools = [k for k, (op, *_rest) in enumerate(self.nodes) if op in POOL_OPS]
        self.pool_index = pools[-1] if pools else None
        # every tensor computed from the last global pooling on (the head recomputes them)
        self._after_pool = {name for _, _, outs, _ in self.nodes[self.pool_index or len(self.nodes):]
                            for name in outs}

    def _add_param(self, name: str, value: np.ndarray) -> None:
        self._param_index[name] = len(self.param_names)
        self.param_names.append(name)
        self.params.append(nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32))))

    def param(self, name: str) -> torch.Tensor:
        return self.params[self._param_index[name]]

    def float_weights(self) -> dict[str, np.ndarray]:
        """The trainable weights by their float graph names, as float32 arrays."""
        return {name: p.detach().cpu().numpy().astype(np.float32) for name, p in zip(self.param_names, self.params)}

    def _value(self, name: str, env: dict, device) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self._param_index:
            return self.param(name)
        const = self.constants[name]
        env[name] = const.to(device) if const.is_floating_point() else const
        return env[name]

    def _run(self, nodes, env: dict, device) -> None:
        for op, ins, outs, attrs in nodes:
            if op == "DequantizeLinear":
                out = outs[0]
                if out in self.weight_of:
                    name, axis = self.weight_of[out]
                    env[out] = fake_weight(self.param(name), axis)
                elif out in self.bias_of:
                    env[out] = self._bias(out, env, device)
                elif ins[0] in self.act_q:
                    env[out] = env[ins[0]]  # fake quantised already by its QuantizeLinear
                else:  # a quantised constant kept as it is
                    q, s = self._value(ins[0], env, device), self._value(ins[1], env, device)
                    zp = self._value(ins[2], env, device) if len(ins) > 2 else torch.zeros((), dtype=q.dtype)
                    env[out] = (q.float() - zp.float()).to(device) * s
                continue
            if op == "QuantizeLinear":
                scale, zp, qrange = self.act_q[outs[0]]
                env[outs[0]] = FakeQuantize.apply(env[ins[0]], scale, float(zp), *qrange)
                continue
            inputs = [self._value(name, env, device) for name in ins]
            result = OPS[op](inputs, attrs, len(outs))
            for name, value in zip(outs, result if isinstance(result, (tuple, list)) else (result,)):
                env[name] = value

    def _bias(self, out: str, env: dict, device) -> torch.Tensor:
        name, weight_out, act_scale = self.bias_of[out]
        b = self.param(name)
        if not weight_out or not act_scale:
            return b
        w_name, axis = self.weight_of[weight_out]
        w = self.param(w_name)
        step = float(self.constants[act_scale]) * weight_scales(w if axis == 0 else w.transpose(0, axis)).to(b.device)
        return b + (torch.round(b / step) * step - b).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        self._run(self.nodes, env, x.device)
        return env[self.output_name]

    def features_and_head(self, x: torch.Tensor):
        """(logits, the map the last global pooling reads, head) where head(pooled) runs the graph after that
        pooling on pooled vectors (N, C) and returns their logits; None for a graph without a global pool."""
        if self.pool_index is None:
            raise UserError("quantization-aware training: the model has no global pooling before its classifier")
        env = {self.input_name: x}
        self._run(self.nodes, env, x.device)
        op, ins, outs, attrs = self.nodes[self.pool_index]
        feature = env[ins[0]]
        keep = attrs.get("keepdims", 1) if op == "ReduceMean" else 1
        base = {k: v for k, v in env.items() if k not in self._after_pool}

        def head(pooled: torch.Tensor) -> torch.Tensor:
            local = dict(base)
            local[outs[0]] = pooled[:, :, None, None] if keep else pooled
            self._run(self.nodes[self.pool_index + 1:], local, pooled.device)
            return local[self.output_name]

        return env[self.output_name], feature, head
