"""Builds small TFLite models from Python with the schema's object API (calibration layers, test nets).

``ModelBuilder`` collects tensors, constant buffers and operators of one subgraph and serialises them
(buffer 0 is the empty sentinel, schema version 3, file identifier "TFL3"). The layer helpers below it
compute output shapes and, for int8 inputs, quantize weights per channel and biases to int32 the way
the TFLite converter does, so LiteRT runs the result with its optimised kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from accelerators.tflite_file import SCHEMA_VERSION, schema

_TENSOR_TYPES = {
    "float32": "FLOAT32", "float16": "FLOAT16", "int32": "INT32", "uint8": "UINT8", "int64": "INT64",
    "bool": "BOOL", "int16": "INT16", "int8": "INT8",
}  # fmt: skip
_ALIGN = 16  # schema.fbs asks for buffer data aligned to 16 bytes (force_align); the generated Pack ignores it


@dataclass(frozen=True)
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor or per channel along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int = 0) -> Quant:
        return cls((float(scale),), (int(zero_point),))


def enum(name: str, member: str) -> int:
    """A schema enum value by name, e.g. ``enum("Padding", "SAME")``."""
    return int(getattr(getattr(schema(), name), member))


def quantize_weights(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, Quant]:
    """Symmetric int8 weights (zero point 0): per channel along ``axis``, or per tensor when it is None."""
    reduce = tuple(i for i in range(values.ndim) if i != axis) if axis is not None else None
    peak = np.max(np.abs(values), axis=reduce, keepdims=True)
    scale = np.maximum(peak, 1e-8) / 127.0  # (channels,) broadcastable against values
    q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    scales = tuple(float(s) for s in scale.ravel())
    return q, Quant(scales, (0,) * len(scales), axis or 0)


class _AlignedBuffer:
    """Duck-types BufferT for ModelT.Pack, padding so the data starts on a 16-byte boundary."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data  # (bytes,) uint8

    def Pack(self, builder: Any) -> int:  # the object API's method name
        buffer = schema().BufferT()
        buffer.data = self.data
        builder.Prep(_ALIGN, self.data.size)  # flatbuffers align from the end; Finish pads to the same boundary
        return int(buffer.Pack(builder))


class ModelBuilder:
    """One subgraph under construction; tensor arguments and results are tensor indices."""

    def __init__(self, description: str = "edge-agent") -> None:
        self._s = schema()
        self._description = description
        self._buffers: list[Any] = [self._s.BufferT()]  # buffer 0: the sentinel every activation points at
        self._tensors: list[Any] = []
        self._operators: list[Any] = []
        self._opcodes: dict[int, int] = {}  # builtin code -> index into the opcode table
        self._names: set[str] = set()

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: str = "float32",
        quant: Quant | None = None,
        signature: Sequence[int] | None = None,
        variable: bool = False,
    ) -> int:
        """An activation tensor (no data); ``signature`` marks dynamic dimensions with -1."""
        return self._add(name, shape, dtype, 0, quant, signature, variable)

    def constant(self, name: str, values: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor holding ``values`` (stored little-endian in their own dtype)."""
        data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        self._buffers.append(_AlignedBuffer(np.frombuffer(data.tobytes(), np.uint8)))
        return self._add(name, values.shape, values.dtype.name, len(self._buffers) - 1, quant, None, False)

    def weight(self, name: str, values: np.ndarray, storage: str = "float32") -> int:
        """A float32 weight, stored as float32, or as float16 and dequantized at load (as converters do)."""
        if storage == "float32":
            return self.constant(name, values.astype(np.float32))
        if storage != "float16":
            raise ValueError(f"weight storage {storage!r}: expected float32 or float16")
        stored = self.constant(name + "_fp16", values.astype(np.float16))
        out = self.tensor(name, values.shape)
        self.op("DEQUANTIZE", [stored], [out])
        return out

    def op(self, op: str, inputs: Sequence[int], outputs: Sequence[int], options: str = "", **fields: Any) -> None:
        """Append operator ``op`` (a BuiltinOperator name) with its options table (e.g. "Conv2DOptions")."""
        code = enum("BuiltinOperator", op)
        opcode = self._opcodes.setdefault(code, len(self._opcodes))
        operator = self._s.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = opcode, list(inputs), list(outputs)
        if options:
            table = getattr(self._s, options + "T")()
            for key, value in fields.items():
                if not hasattr(table, key):
                    raise ValueError(f"{options} has no field {key!r}")
                setattr(table, key, value)
            operator.builtinOptionsType, operator.builtinOptions = enum("BuiltinOptions", options), table
        self._operators.append(operator)

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self._tensors[index].shape)

    def dtype(self, index: int) -> str:
        return next(k for k, v in _TENSOR_TYPES.items() if enum("TensorType", v) == self._tensors[index].type)

    def quant(self, index: int) -> Quant | None:
        q = self._tensors[index].quantization
        return None if q is None else Quant(tuple(q.scale), tuple(q.zeroPoint), q.quantizedDimension)

    def build(self, inputs: Sequence[int], outputs: Sequence[int], name: str = "main") -> bytes:
        """The serialised model, with ``inputs``/``outputs`` as its subgraph's inputs and outputs."""
        import flatbuffers  # type: ignore[import-untyped]  # installed with ai-edge-litert, untyped

        s = self._s
        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.operators = self._tensors, self._operators
        subgraph.inputs, subgraph.outputs, subgraph.name = list(inputs), list(outputs), name
        codes = []
        for code in self._opcodes:  # dicts keep insertion order, which is the opcode index order
            opcode = s.OperatorCodeT()
            # old readers only see the int8 deprecated field; 127 there means "look at builtin_code"
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
            codes.append(opcode)
        model = s.ModelT()
        model.version, model.description = SCHEMA_VERSION, self._description
        model.operatorCodes, model.subgraphs, model.buffers = codes, [subgraph], self._buffers
        builder = flatbuffers.Builder(1024 + sum(b.data.size for b in self._buffers[1:]))
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _add(
        self,
        name: str,
        shape: Sequence[int],
        dtype: str,
        buffer: int,
        quant: Quant | None,
        signature: Sequence[int] | None,
        variable: bool,
    ) -> int:
        if name in self._names:
            raise ValueError(f"tensor name {name!r} used twice")
        self._names.add(name)
        tensor = self._s.TensorT()
        tensor.name, tensor.shape, tensor.buffer, tensor.isVariable = name, [int(d) for d in shape], buffer, variable
        tensor.type = enum("TensorType", _TENSOR_TYPES[dtype])
        if signature is not None:
            tensor.shapeSignature = [int(d) for d in signature]
        if quant is not None:
            params = self._s.QuantizationParametersT()
            params.scale, params.zeroPoint = list(quant.scale), list(quant.zero_point)
            params.quantizedDimension = quant.axis
            tensor.quantization = params
        self._tensors.append(tensor)
        return len(self._tensors) - 1


# --- layers: each takes an input tensor and float32 weights, adds its operator(s), returns the output


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else -(-(size - kernel + 1) // stride)


def _weights_and_bias(
    b: ModelBuilder, x: int, name: str, weights: np.ndarray, bias: np.ndarray, axis: int | None, storage: str
) -> tuple[int, int]:
    """Constant (weights, bias) tensors: float (optionally fp16-stored), or int8/int32 for an int8 input."""
    x_quant = b.quant(x)
    if b.dtype(x) != "int8" or x_quant is None:
        return b.weight(name + "/weights", weights, storage), b.weight(name + "/bias", bias, storage)
    q, w_quant = quantize_weights(weights, axis)
    bias_scale = np.array(w_quant.scale) * x_quant.scale[0]  # (channels,) or (1,)
    q_bias = np.round(bias / bias_scale).astype(np.int32)
    bias_quant = Quant(tuple(float(v) for v in bias_scale), (0,) * bias_scale.size, 0)
    return b.constant(name + "/weights", q, w_quant), b.constant(name + "/bias", q_bias, bias_quant)


def _output(b: ModelBuilder, x: int, name: str, shape: Sequence[int], out_quant: Quant | None) -> int:
    return b.tensor(name, shape, b.dtype(x), out_quant if b.dtype(x) == "int8" else None)


def conv2d(
    b: ModelBuilder,
    x: int,
    weights: np.ndarray,  # (Cout, kh, kw, Cin)
    bias: np.ndarray,  # (Cout,)
    name: str,
    stride: int = 1,
    padding: str = "SAME",
    activation: str = "NONE",
    storage: str = "float32",
    out_quant: Quant | None = None,
) -> int:
    n, h, w, _ = b.shape(x)  # (N, H, W, Cin)
    cout, kh, kw, _ = weights.shape
    wt, bt = _weights_and_bias(b, x, name, weights, bias, 0, storage)
    shape = (n, _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding), cout)
    y = _output(b, x, name, shape, out_quant)
    b.op("CONV_2D", [x, wt, bt], [y], "Conv2DOptions", padding=enum("Padding", padding), strideW=stride,
         strideH=stride, fusedActivationFunction=enum("ActivationFunctionType", activation))  # fmt: skip
    return y


def depthwise_conv2d(
    b: ModelBuilder,
    x: int,
    weights: np.ndarray,  # (1, kh, kw, C)
    bias: np.ndarray,  # (C,)
    name: str,
    stride: int = 1,
    padding: str = "SAME",
    activation: str = "NONE",
    storage: str = "float32",
    out_quant: Quant | None = None,
) -> int:
    n, h, w, c = b.shape(x)  # (N, H, W, C)
    _, kh, kw, _ = weights.shape
    wt, bt = _weights_and_bias(b, x, name, weights, bias, 3, storage)
    y = _output(b, x, name, (n, _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding), c), out_quant)
    b.op("DEPTHWISE_CONV_2D", [x, wt, bt], [y], "DepthwiseConv2DOptions", padding=enum("Padding", padding),
         strideW=stride, strideH=stride, depthMultiplier=1,
         fusedActivationFunction=enum("ActivationFunctionType", activation))  # fmt: skip
    return y


def transpose_conv(
    b: ModelBuilder,
    x: int,
    weights: np.ndarray,  # (Cout, kh, kw, Cin)
    bias: np.ndarray,  # (Cout,)
    name: str,
    stride: int = 2,
    out_quant: Quant | None = None,
) -> int:
    n, h, w, _ = b.shape(x)  # (N, H, W, Cin)
    shape = (n, h * stride, w * stride, weights.shape[0])  # SAME padding: each side grows by the stride
    wt, bt = _weights_and_bias(b, x, name, weights, bias, 0, "float32")
    out_shape = b.constant(name + "/output_shape", np.array(shape, np.int32))
    y = _output(b, x, name, shape, out_quant)
    b.op("TRANSPOSE_CONV", [out_shape, wt, x, bt], [y], "TransposeConvOptions", padding=enum("Padding", "SAME"),
         strideW=stride, strideH=stride)  # fmt: skip
    return y


def fully_connected(
    b: ModelBuilder,
    x: int,
    weights: np.ndarray,  # (out, in)
    bias: np.ndarray,  # (out,)
    name: str,
    activation: str = "NONE",
    storage: str = "float32",
    out_quant: Quant | None = None,
) -> int:
    batch = int(np.prod(b.shape(x))) // weights.shape[1]  # FC flattens everything but the features
    wt, bt = _weights_and_bias(b, x, name, weights, bias, None, storage)
    y = _output(b, x, name, (batch, weights.shape[0]), out_quant)
    b.op("FULLY_CONNECTED", [x, wt, bt], [y], "FullyConnectedOptions",
         fusedActivationFunction=enum("ActivationFunctionType", activation))  # fmt: skip
    return y


def average_pool(b: ModelBuilder, x: int, kernel: int, stride: int, name: str, padding: str = "VALID") -> int:
    n, h, w, c = b.shape(x)  # (N, H, W, C)
    shape = (n, _out_size(h, kernel, stride, padding), _out_size(w, kernel, stride, padding), c)
    y = b.tensor(name, shape, b.dtype(x), b.quant(x))  # pooling keeps the input's quantization
    b.op("AVERAGE_POOL_2D", [x], [y], "Pool2DOptions", padding=enum("Padding", padding), strideW=stride,
         strideH=stride, filterWidth=kernel, filterHeight=kernel)  # fmt: skip
    return y


def add(b: ModelBuilder, x: int, y: int, name: str, out_quant: Quant | None = None) -> int:
    out = _output(b, x, name, b.shape(x), out_quant)
    b.op("ADD", [x, y], [out], "AddOptions")
    return out


def softmax(b: ModelBuilder, x: int, name: str) -> int:
    # int8 softmax must output scale 1/256, zero point -128: the range [0, 1) in 256 steps
    y = _output(b, x, name, b.shape(x), Quant.per_tensor(1 / 256, -128))
    b.op("SOFTMAX", [x], [y], "SoftmaxOptions", beta=1.0)
    return y
