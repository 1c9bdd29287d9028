"""What the INT8 accuracy pass measures one at a time, and what it keeps in float together.

ONNX Runtime's QDQ quantiser decides per node, but the error of an INT8 model lives in tensors: an
activation tensor gets a QuantizeLinear/DequantizeLinear pair when the node that writes it or any node that
reads it is quantised. Two consequences shape the accuracy pass:

- **A unit** is a node the quantiser handles, together with the Relu or Clip that is the only reader of its
  output. The quantiser gives a layer's output the activation's range only when the activation is quantised
  as well (`adjust_tensor_ranges`); a conv quantised without its ReLU has its pre-activation quantised on
  that tensor's own range, which can reach -6000 where the ReLU output stays below 25, so measuring the conv
  alone measures that artefact and not the conv. Units are what the sensitivity pass quantises one at a time.
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


class FloatRegions:
    """The units of `model` (an ONNX ModelProto as the quantiser sees it) and each unit's float region; a node
    without a name cannot be excluded, so it belongs to none."""

    def __init__(self, model, op_types: set[str] | None = None) -> None:
        op_types = quantised_op_types() if op_types is None else op_types
        nodes = [n for n in model.graph.node if n.name]  # the quantiser excludes nodes by name
        weights = {init.name for init in model.graph.initializer}
        self._readers: dict[str, list[str]] = defaultdict(list)
        self._writer: dict[str, str] = {}
        self._tensors: dict[str, list[str]] = {}
        kind = {n.name: n.op_type for n in nodes}
        for n in nodes:
            self._tensors[n.name] = [t for t in list(n.input) + list(n.output) if t and t not in weights]
            for t in n.input:
                self._readers[t].append(n.name)
            for t in n.output:
                self._writer[t] = n.name
        self.units: list[list[str]] = []
        self._unit_of: dict[str, int] = {}
        for n in nodes:
            if n.name in self._unit_of or n.op_type not in op_types:
                continue
            unit = [n.name]
            readers = self._readers.get(n.output[0], []) if n.output else []
            if (n.op_type not in FUSED_ACTIVATIONS and len(readers) == 1
                    and kind[readers[0]] in FUSED_ACTIVATIONS and readers[0] not in self._unit_of):
                unit.append(readers[0])
            for name in unit:
                self._unit_of[name] = len(self.units)
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
