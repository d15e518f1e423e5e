"""One-layer ONNX models for calibration, built from ``calibration_layers.SPECS`` (weights seeded)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accelerators.base import Family
from accelerators.calibration_layers import LayerSpec

_OPSET = 17
_F32 = TensorProto.FLOAT


def _nchw(shape: tuple[int, ...]) -> list[int]:
    n, h, w, c = shape
    return [n, c, h, w]


def _weight(name: str, shape: list[int], rng: np.random.Generator) -> TensorProto:
    fan_in = int(np.prod(shape[1:])) or 1
    values = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _conv(
    spec: LayerSpec, rng: np.random.Generator
) -> tuple[list[onnx.NodeProto], list[TensorProto], list[int], list[int]]:
    x = _nchw(spec.input_shape)  # (1, C, H, W)
    cin, cout, k = x[1], spec.out_channels, spec.kernel
    group = cin if spec.family is Family.DEPTHWISE_CONV else 1
    pad = k // 2
    inits = [_weight("w", [cout, cin // group, k, k], rng), _weight("b", [cout], rng)]
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], pads=[pad] * 4, strides=[spec.stride] * 2, group=group
    )
    out = [x[0], cout, (x[2] + spec.stride - 1) // spec.stride, (x[3] + spec.stride - 1) // spec.stride]
    return [node], inits, x, out


def _conv_transpose(
    spec: LayerSpec, rng: np.random.Generator
) -> tuple[list[onnx.NodeProto], list[TensorProto], list[int], list[int]]:
    x = _nchw(spec.input_shape)
    cin, cout, k, s = x[1], spec.out_channels, spec.kernel, spec.stride
    inits = [_weight("w", [cin, cout, k, k], rng), _weight("b", [cout], rng)]
    # output = (in - 1) * s + k - pads + output_padding; pads 1,1 and output_padding 1 give exactly in * s
    node = helper.make_node(
        "ConvTranspose",
        ["x", "w", "b"],
        ["y"],
        kernel_shape=[k, k],
        strides=[s, s],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
    return [node], inits, x, [x[0], cout, x[2] * s, x[3] * s]


_Parts = tuple[list[onnx.NodeProto], list[TensorProto], list[onnx.ValueInfoProto], list[int], list[int]]


def _mac_layer(spec: LayerSpec, rng: np.random.Generator) -> _Parts | None:
    """Nodes, initializers, extra inputs, input and output shape of a MAC-family layer (None: not one)."""
    family = spec.family
    if family in {Family.CONV, Family.DEPTHWISE_CONV, Family.POINTWISE_CONV}:
        nodes, inits, in_shape, out_shape = _conv(spec, rng)
        return nodes, inits, [], in_shape, out_shape
    if family is Family.CONV_TRANSPOSE:
        nodes, inits, in_shape, out_shape = _conv_transpose(spec, rng)
        return nodes, inits, [], in_shape, out_shape
    if family is Family.FULLY_CONNECTED:
        batch, features = spec.input_shape
        inits = [_weight("w", [spec.out_channels, features], rng), _weight("b", [spec.out_channels], rng)]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
        return nodes, inits, [], [batch, features], [batch, spec.out_channels]
    if family is Family.MATMUL:
        heads, tokens, dim = spec.input_shape  # (4, 128, 64) x (4, 64, 128) -> (4, 128, 128)
        extra = [helper.make_tensor_value_info("k", _F32, [heads, dim, tokens])]
        return [helper.make_node("MatMul", ["x", "k"], ["y"])], [], extra, [heads, tokens, dim], [heads, tokens, tokens]
    if family is Family.RECURRENT:
        seq, batch, features = spec.input_shape
        hidden = spec.out_channels
        inits = [
            _weight("w", [1, 4 * hidden, features], rng),
            _weight("r", [1, 4 * hidden, hidden], rng),
            _weight("b", [1, 8 * hidden], rng),
        ]
        nodes = [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], hidden_size=hidden)]
        return nodes, inits, [], [seq, batch, features], [seq, 1, batch, hidden]
    return None


def _memory_layer(spec: LayerSpec) -> _Parts:
    family = spec.family
    if family is Family.ELEMENTWISE:
        shape = _nchw(spec.input_shape)
        extra = [helper.make_tensor_value_info("x2", _F32, shape)]
        return [helper.make_node("Add", ["x", "x2"], ["y"])], [], extra, shape, shape
    if family is Family.NORMALIZATION:
        shape = list(spec.input_shape)
        return [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [], [], shape, shape
    if family is Family.POOLING:
        shape = _nchw(spec.input_shape)
        k, s = spec.kernel, spec.stride
        out = [shape[0], shape[1], shape[2] // s, shape[3] // s]
        return [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s])], [], [], shape, out
    if family is Family.RESIZE:
        shape = _nchw(spec.input_shape)
        out = [shape[0], shape[1], shape[2] * 2, shape[3] * 2]
        scales = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
        return [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")], scales, [], shape, out
    if family is Family.RESHAPE:
        shape = list(spec.input_shape)  # NHWC -> NCHW
        out = [shape[0], shape[3], shape[1], shape[2]]
        return [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])], [], [], shape, out
    raise NotImplementedError(f"no ONNX calibration layer for family {family.value}")


def build_layer(spec: LayerSpec, seed: int = 0) -> bytes:
    """A serialised one-layer ONNX model for ``spec``; raises NotImplementedError for families without one."""
    parts = _mac_layer(spec, np.random.default_rng(seed)) or _memory_layer(spec)
    nodes, inits, extra_inputs, in_shape, out_shape = parts
    graph = helper.make_graph(
        nodes,
        f"calibrate_{spec.family.value}",
        [helper.make_tensor_value_info("x", _F32, in_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", _F32, out_shape)],
        initializer=inits,
    )
    return _serialise(graph)


def _serialise(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="edge-agent")
    model.ir_version = 8  # readable by every onnxruntime and OpenVINO release we support
    data: bytes = model.SerializeToString()
    return data


def build_overhead_probe() -> bytes:
    """The smallest useful model (an 8-element Add): its run time is the per-dispatch overhead."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "calibrate_dispatch",
        [helper.make_tensor_value_info("x", _F32, [1, 8])],
        [helper.make_tensor_value_info("y", _F32, [1, 8])],
    )
    return _serialise(graph)
