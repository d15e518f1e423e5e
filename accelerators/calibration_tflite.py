"""One-layer TFLite models for calibration, built from ``calibration_layers.SPECS`` (weights seeded).

Every family of SPECS has a float32 layer. int8 layers (per-channel int8 weights, int32 biases, int8
activations, as the TFLite converter writes them) exist for every family but recurrent: LiteRT's
fully-integer LSTM needs a dozen intermediate scales that only a converter with real data can choose,
so ``build_layer(SPECS[Family.RECURRENT], "int8")`` raises NotImplementedError, as do families
without a layer; calibration catches it and reports the family as skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from accelerators.base import Family
from accelerators.calibration_layers import LayerSpec
from accelerators.tflite_build import (
    ModelBuilder,
    Quant,
    add,
    average_pool,
    conv2d,
    depthwise_conv2d,
    enum,
    fully_connected,
    softmax,
    transpose_conv,
)

DTYPES = ("float32", "int8")
# int8 activations: raw values -128..127 stand for -4..4, outputs for -8..8 (unit-variance data, weights
# scaled by 1/sqrt(fan_in), so outputs have roughly unit variance too)
IN_QUANT = Quant.per_tensor(1 / 32)
OUT_QUANT = Quant.per_tensor(1 / 16)


def build_layer(spec: LayerSpec, dtype: str = "float32", seed: int = 0) -> bytes:
    """A serialised one-layer TFLite model for ``spec`` in ``dtype`` (float32 or int8).

    Raises NotImplementedError for a family (or dtype of it) that has no TFLite layer here.
    """
    if dtype not in DTYPES:
        raise NotImplementedError(f"no TFLite calibration layers in {dtype}; built: {', '.join(DTYPES)}")
    if spec.family is Family.RECURRENT and dtype != "float32":
        raise NotImplementedError("no int8 TFLite LSTM layer: its intermediate scales need a converter")
    layer = _LAYERS.get(spec.family)
    if layer is None:
        raise NotImplementedError(f"no TFLite calibration layer for family {spec.family.value}")
    b = ModelBuilder(f"edge-agent calibration: {spec.family.value} {dtype}")
    x = b.tensor("x", spec.input_shape, dtype, IN_QUANT if dtype == "int8" else None)
    inputs = [x]
    y = layer(_Layer(b, spec, np.random.default_rng(seed), inputs))
    return b.build(inputs, [y])


class _Layer:
    """What one family's builder gets: the model so far, the spec, seeded weights, the input list."""

    def __init__(self, b: ModelBuilder, spec: LayerSpec, rng: np.random.Generator, inputs: list[int]) -> None:
        self.b, self.spec, self.rng, self.inputs = b, spec, rng, inputs
        self.x = inputs[0]

    def weights(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        values: np.ndarray = (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return values

    def extra_input(self, name: str, shape: tuple[int, ...]) -> int:
        """A second activation input, typed and quantized like the first."""
        index = self.b.tensor(name, shape, self.b.dtype(self.x), self.b.quant(self.x))
        self.inputs.append(index)
        return index

    def like_input(self, name: str, shape: tuple[int, ...], quant: Quant | None = None) -> int:
        int8 = self.b.dtype(self.x) == "int8"
        return self.b.tensor(name, shape, self.b.dtype(self.x), (quant or self.b.quant(self.x)) if int8 else None)


def _conv(c: _Layer) -> int:
    k, cout, cin = c.spec.kernel, c.spec.out_channels, c.spec.input_shape[-1]  # input (N, H, W, Cin)
    weights = c.weights((cout, k, k, cin), cin * k * k)  # (Cout, kh, kw, Cin)
    return conv2d(c.b, c.x, weights, c.weights((cout,), 1), "y", c.spec.stride, out_quant=OUT_QUANT)


def _depthwise(c: _Layer) -> int:
    k, channels = c.spec.kernel, c.spec.input_shape[-1]
    weights = c.weights((1, k, k, channels), k * k)  # (1, kh, kw, C)
    return depthwise_conv2d(c.b, c.x, weights, c.weights((channels,), 1), "y", c.spec.stride, out_quant=OUT_QUANT)


def _transpose_conv(c: _Layer) -> int:
    k, cout, cin, s = c.spec.kernel, c.spec.out_channels, c.spec.input_shape[-1], c.spec.stride
    weights = c.weights((cout, k, k, cin), cin * k * k // (s * s))  # (Cout, kh, kw, Cin)
    return transpose_conv(c.b, c.x, weights, c.weights((cout,), 1), "y", s, out_quant=OUT_QUANT)


def _fully_connected(c: _Layer) -> int:
    features, out = c.spec.input_shape[-1], c.spec.out_channels  # input (batch, features)
    weights = c.weights((out, features), features)  # (out, in)
    return fully_connected(c.b, c.x, weights, c.weights((out,), 1), "y", out_quant=OUT_QUANT)


def _matmul(c: _Layer) -> int:
    heads, tokens, dim = c.spec.input_shape  # (4, 128, 64) x (4, 64, 128) -> (4, 128, 128)
    keys = c.extra_input("k", (heads, dim, tokens))
    y = c.like_input("y", (heads, tokens, tokens), Quant.per_tensor(8 / 16))  # sums of 64 products: wider range
    c.b.op("BATCH_MATMUL", [c.x, keys], [y], "BatchMatMulOptions")
    return y


def _add(c: _Layer) -> int:
    return add(c.b, c.x, c.extra_input("x2", c.spec.input_shape), "y", out_quant=OUT_QUANT)


def _resize(c: _Layer) -> int:
    n, h, w, channels = c.spec.input_shape  # bilinear x2 -> (N, 2H, 2W, C)
    size = c.b.constant("size", np.array([2 * h, 2 * w], np.int32))
    y = c.like_input("y", (n, 2 * h, 2 * w, channels))
    c.b.op("RESIZE_BILINEAR", [c.x, size], [y], "ResizeBilinearOptions", halfPixelCenters=True)
    return y


def _transpose(c: _Layer) -> int:
    n, h, w, channels = c.spec.input_shape  # NHWC -> NCHW
    perm = c.b.constant("perm", np.array([0, 3, 1, 2], np.int32))
    y = c.like_input("y", (n, channels, h, w))
    c.b.op("TRANSPOSE", [c.x, perm], [y], "TransposeOptions")
    return y


def _lstm(c: _Layer) -> int:
    """UNIDIRECTIONAL_SEQUENCE_LSTM, time-major, no peepholes, projection or layer norm."""
    b, x = c.b, c.x
    seq, batch, features = c.spec.input_shape  # (seq, batch, features)
    hidden = c.spec.out_channels
    gates = ("input", "forget", "cell", "output")
    w_in = [b.constant(f"w_{g}", c.weights((hidden, features), features)) for g in gates]  # (hidden, features)
    w_rec = [b.constant(f"r_{g}", c.weights((hidden, hidden), hidden)) for g in gates]  # (hidden, hidden)
    bias = [b.constant(f"b_{g}", np.zeros(hidden, np.float32)) for g in gates]
    # the recurrent state lives in variable tensors the interpreter keeps between steps
    h_state = b.tensor("h_state", (batch, hidden), variable=True)
    c_state = b.tensor("c_state", (batch, hidden), variable=True)
    y = b.tensor("y", (seq, batch, hidden))
    none = [-1] * 3
    inputs = [x, *w_in, *w_rec, *none, *bias, -1, -1, h_state, c_state, *([-1] * 4)]  # the schema's 24 slots
    b.op("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs, [y], "UnidirectionalSequenceLSTMOptions",
         fusedActivationFunction=enum("ActivationFunctionType", "TANH"), timeMajor=True)  # fmt: skip
    return y


_LAYERS: dict[Family, Callable[[_Layer], int]] = {
    Family.CONV: _conv,
    Family.POINTWISE_CONV: _conv,
    Family.DEPTHWISE_CONV: _depthwise,
    Family.CONV_TRANSPOSE: _transpose_conv,
    Family.FULLY_CONNECTED: _fully_connected,
    Family.MATMUL: _matmul,
    Family.RECURRENT: _lstm,
    Family.ELEMENTWISE: _add,
    Family.NORMALIZATION: lambda c: softmax(c.b, c.x, "y"),
    Family.POOLING: lambda c: average_pool(c.b, c.x, c.spec.kernel, c.spec.stride, "y"),
    Family.RESIZE: _resize,
    Family.RESHAPE: _transpose,
}


def build_overhead_probe() -> bytes:
    """The smallest useful model (an 8-element ADD of a tensor to itself): its run time is the dispatch overhead."""
    b = ModelBuilder("edge-agent calibration: dispatch overhead")
    x = b.tensor("x", (1, 8))
    y = b.tensor("y", (1, 8))
    b.op("ADD", [x, x], [y], "AddOptions")
    return b.build([x], [y])
