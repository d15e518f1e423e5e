"""The layer-profile IR: what each layer of a model costs, the same for ONNX and TFLite.

Conventions (so totals match published figures):
- ``macs`` counts multiply-accumulates of convolutions, fully connected layers, matmuls and
  recurrent cells only; biases, activations, normalisation, pooling and additions count 0 MACs
  (their cost is in the bytes they move).
- ``params``/``param_bytes`` count every constant a layer reads: initializers, Constant nodes, and
  weights stored in another dtype and dequantized at load time (e.g. fp16 or int8 weights feeding a
  Dequantize/Cast): those count as the consuming layer's parameters, in their stored size.
- ``input_bytes``/``output_bytes`` count activations (non-constant tensors) in and out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerators.base import Family


@dataclass(frozen=True)
class TensorInfo:
    """An activation tensor between layers (or a model input/output)."""

    name: str
    shape: tuple[int, ...]  # dynamic dimensions already pinned
    dtype: str  # numpy dtype name

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def bytes(self) -> int:
        return self.elements * dtype_size(self.dtype)


@dataclass(frozen=True)
class Layer:
    index: int  # position in execution (topological) order
    name: str
    op: str  # the format's own op name: "Conv" (ONNX), "CONV_2D" (TFLite)
    family: Family
    inputs: tuple[str, ...]  # activation tensors read (constants excluded)
    outputs: tuple[str, ...]  # activation tensors written
    macs: int
    params: int  # number of constant elements read
    param_bytes: int
    input_bytes: int
    output_bytes: int
    dtype: str  # compute dtype: the dtype of its main activation input, e.g. "float32", "int8"

    @property
    def activation_bytes(self) -> int:
        return self.input_bytes + self.output_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """MACs per byte moved (params + activations); 0 for layers without MACs."""
        moved = self.param_bytes + self.activation_bytes
        return self.macs / moved if moved else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "op": self.op,
            "family": self.family.value,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "macs": self.macs,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "activation_bytes": self.activation_bytes,
            "dtype": self.dtype,
            "arithmetic_intensity": round(self.arithmetic_intensity, 3),
        }


@dataclass(frozen=True)
class ModelProfile:
    path: str
    format: str  # "onnx" or "tflite"
    digest: str  # sha256 of the file
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    layers: tuple[Layer, ...]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # every activation tensor by name
    pinned: dict[str, str] = field(default_factory=dict)  # "input:dim" -> "value (from where)"
    notes: tuple[str, ...] = ()  # things the user should know (unknown ops, shapes not inferred ...)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self.layers)

    @property
    def total_activation_bytes(self) -> int:
        return sum(layer.activation_bytes for layer in self.layers)

    def by_family(self) -> dict[str, tuple[int, int]]:
        """family -> (layer count, MACs)."""
        out: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            count, macs = out.get(layer.family.value, (0, 0))
            out[layer.family.value] = (count + 1, macs + layer.macs)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "digest": self.digest,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.outputs],
            "pinned": dict(self.pinned),
            "layers": [layer.to_json() for layer in self.layers],
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "total_param_bytes": self.total_param_bytes,
            "total_activation_bytes": self.total_activation_bytes,
            "notes": list(self.notes),
        }


_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "uint64": 8, "int32": 4, "uint32": 4, "int16": 2, "uint16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "int4": 1, "uint4": 1, "complex64": 8, "complex128": 16,
    "float8": 1, "string": 8,
}  # fmt: skip


def dtype_size(dtype: str) -> int:
    """Bytes per element (int4 rounded up to 1: packed storage is accounted by the format reader)."""
    return _SIZES.get(dtype, 4)
