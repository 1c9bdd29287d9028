"""What the INT8 accuracy pass measures one at a time, and what it keeps in float together.

ONNX Runtime's QDQ quantiser decides per node, but the error of an INT8 model lives in tensors: an
activation tensor gets a QuantizeLinear/DequantizeLinear pair only when the node that writes it or a node
that reads it is quantised. Two consequences shape the accuracy pass:

- **A unit** is a node the quantiser handles, together with the Relu or Clip that is the only reader of its
  output. The quantiser gives a layer's output the activation's range only when the activation is quantised
  as well (`adjust_tensor_ranges`); a conv quantised without its ReLU has its pre-activation quantised on
  that tensor's own range, which can reach -6000 where the ReLU output stays below 25, so measuring the conv
  alone measures that artefact and not the conv. The sensitivity pass quantises units one at a time, those
  that are quantised on their own (`measured`): reshapes, transposes, pools and a lone ReLU pass 8-bit
  values through and get Q/DQ only where their input already has them.
- **A float region** is a unit with every unit that writes or reads one of its tensors. Excluding only the
  unit leaves its input and output quantised by its neighbours; excluding the region keeps every tensor the
  unit touches in float. It is how error that sits in the activations around residual sums and
  concatenations (ShuffleNet, ResNet) is taken out, not only error in weights.
"""

from __future__ import annotations

from collections import defaultdict

FUSED_ACTIVATIONS = ("Relu", "Clip")


def quantised_op_types() -> set[str]:
    """Op types ONNX Runtime's QDQ quantiser puts Q/DQ around (its two operator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


def quantised_alone(op_type: str) -> bool:
    """Whether the QDQ quantiser puts Q/DQ around a node of this type when nothing next to it is quantised;
    the ops it handles as 8-bit pass-throughs (and a ReLU or Clip on its own) only follow a quantised input."""
    from onnxruntime.quantization.registry import QDQRegistry

    try:
        from onnxruntime.quantization.operators.activation import QDQRemovableActivation
        from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp
    except ImportError:  # another layout of ONNX Runtime's internals: measure every unit
        return True
    handler = QDQRegistry.get(op_type)
    return handler is None or not issubclass(handler, (QDQDirect8BitOp, QDQRemovableActivation))


class FloatRegions:
    """The units of `model` (an ONNX ModelProto as the quantiser sees it, its node names unique) and each
    unit's float region."""

    def __init__(self, model, op_types: set[str] | None = None) -> None:
        op_types = quantised_op_types() if op_types is None else op_types
        names = [n.name for n in model.graph.node if n.name]
        if len(set(names)) != len(names):
            raise ValueError("node names repeat; name the graph's nodes uniquely (prepared_model does)")
        weights = {init.name for init in model.graph.initializer}
        readers: dict[str, list] = defaultdict(list)  # every reader, named or not, as the quantiser counts them
        self._writer: dict[str, str] = {}
        self._tensors: dict[str, list[str]] = {}
        for n in model.graph.node:
            for t in n.input:
                readers[t].append(n)
            if n.name:
                self._tensors[n.name] = [t for t in list(n.input) + list(n.output) if t and t not in weights]
                self._writer.update((t, n.name) for t in n.output)
        self._readers = {t: [n.name for n in nodes if n.name] for t, nodes in readers.items()}
        self.units: list[list[str]] = []
        self.measured: list[int] = []  # the units quantised on their own, in graph order
        self._unit_of: dict[str, int] = {}
        for n in model.graph.node:
            if not n.name or n.name in self._unit_of or n.op_type not in op_types:
                continue  # a node without a name cannot be excluded, so it belongs to no unit
            unit = [n.name]
            after = readers.get(n.output[0], []) if n.output else []
            if (n.op_type not in FUSED_ACTIVATIONS and len(after) == 1 and after[0].name
                    and after[0].op_type in FUSED_ACTIVATIONS and after[0].name not in self._unit_of):
                unit.append(after[0].name)
            for name in unit:
                self._unit_of[name] = len(self.units)
            if quantised_alone(n.op_type):
                self.measured.append(len(self.units))
            self.units.append(unit)

    def region(self, index: int) -> list[str]:
        """Node names to keep in float so that every tensor unit `index` reads or writes stays float: the
        unit and each unit writing or reading one of those tensors (whole units, so that no layer is
        quantised without its activation)."""
        members = {index}
        for name in self.units[index]:
            for tensor in self._tensors[name]:
                neighbours = self._readers.get(tensor, []) + ([self._writer[tensor]] if tensor in self._writer else [])
                members.update(self._unit_of[n] for n in neighbours if n in self._unit_of)
        return [name for k in sorted(members) for name in self.units[k]]
