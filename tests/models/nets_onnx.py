"""Well-known networks written out as ONNX with onnx.helper and seeded random weights (no downloads).

Used by the profiler tests and by ``scripts/make_reference_models.py``. The CNNs are built the way an
inference export looks (torch.onnx.export in eval mode): batch normalisation folded into each
convolution's bias, ReLU6 as Clip. Published parameter counts include BatchNorm's two per-channel
parameters where these nets carry one bias, so they differ from the published figure by the number of
BatchNorm channels (MobileNetV2: 17,056; ResNet-18: 4,800).

Every builder takes a ``weights`` mode: ``initializer`` (plain), ``fp16`` (every float weight stored as
float16 with a Cast to float32 before its consumer), ``int8`` (every weight matrix or kernel stored as
int8 with a scale and zero point, dequantized by a DequantizeLinear), ``constant`` (weights in Constant
nodes instead of initializers) or ``graph_input`` (initializers also listed as graph inputs, as old
exporters did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Weights = Literal["initializer", "fp16", "int8", "constant", "graph_input"]

# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al. 2018, table 2)
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
)  # fmt: skip
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, first stride), two BasicBlocks each


class GraphBuilder:
    """Appends nodes and seeded random initializers; names are generated, so builders stay short."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def weight(self, prefix: str, shape: tuple[int, ...], fan_in: int = 0) -> str:
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.05  # He init keeps activations finite through depth
        return self.const(prefix, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> str:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attrs))
        return names[0]

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: str = "") -> str:
        w = self.weight("w", (cout, cin // group, k, k), fan_in=cin // group * k * k)
        b = self.const("b", np.zeros(cout, np.float32))
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
        if act == "relu6":
            return self.op("Clip", [y, self.shared("relu6_min", 0.0), self.shared("relu6_max", 6.0)])
        return self.op("Relu", [y]) if act == "relu" else y

    def shared(self, name: str, value: float) -> str:
        if all(t.name != name for t in self.initializers):
            self.initializers.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def classifier(self, x: str, features: int, classes: int) -> str:
        pooled = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        w = self.weight("fc_w", (classes, features), fan_in=features)
        return self.op("Gemm", [pooled, w, self.const("fc_b", np.zeros(classes, np.float32))], transB=1)

    def save(self, path: Path, inputs: list[onnx.ValueInfoProto], output: str, opset: int, weights: Weights) -> Path:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, path.stem, inputs, [out], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        store_weights(model, weights)
        onnx.save(model, path)
        return path


def store_weights(model: onnx.ModelProto, weights: Weights) -> None:
    """Rewrite how the initializers of ``model`` are stored, in place (see the module docstring)."""
    graph = model.graph
    if weights == "fp16":
        casts = []
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.FLOAT:
                name, half = tensor.name, numpy_helper.to_array(tensor).astype(np.float16)
                tensor.CopyFrom(numpy_helper.from_array(half, f"{name}_fp16"))
                casts.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
        _prepend(graph, casts)
    elif weights == "int8":
        dequantize, extra = [], []
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) >= 2:  # weights; biases stay float
                name, values = tensor.name, numpy_helper.to_array(tensor)
                scale = np.float32(max(float(np.abs(values).max()), 1e-8) / 127)
                tensor.CopyFrom(numpy_helper.from_array(np.round(values / scale).astype(np.int8), f"{name}_q"))
                extra += [
                    numpy_helper.from_array(scale, f"{name}_scale"),
                    numpy_helper.from_array(np.int8(0), f"{name}_zp"),
                ]
                dequantize.append(
                    helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [name])
                )
        graph.initializer.extend(extra)
        _prepend(graph, dequantize)
    elif weights == "constant":
        constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
        del graph.initializer[:]
        _prepend(graph, constants)
    elif weights == "graph_input":
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer)


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    everything = [*nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(everything)


def image_input(name: str = "input", size: int = 224) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, size, size])


def build_mobilenet_v2(path: Path, fp16: bool = False, weights: Weights = "initializer") -> Path:
    """MobileNetV2 1.0 at 224x224 with 1000 classes (published: 300M MACs, 3.5M parameters)."""
    g = GraphBuilder(seed=1)
    x = g.conv("input", 3, 32, 3, stride=2, act="relu6")
    cin = 32
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for i in range(n):
            hidden = cin * t
            y = g.conv(x, cin, hidden, 1, act="relu6") if t != 1 else x  # expand
            y = g.conv(y, hidden, hidden, 3, stride=s if i == 0 else 1, group=hidden, act="relu6")  # depthwise
            y = g.conv(y, hidden, c, 1)  # linear bottleneck
            x = g.op("Add", [x, y]) if i > 0 else y  # residual when shapes match: stride 1, same channels
            cin = c
    x = g.conv(x, cin, 1280, 1, act="relu6")
    return g.save(path, [image_input()], g.classifier(x, 1280, 1000), 13, "fp16" if fp16 else weights)


def build_resnet18(path: Path, weights: Weights = "initializer") -> Path:
    """ResNet-18 at 224x224 with 1000 classes (published: 1.82G MACs, 11.69M parameters)."""
    g = GraphBuilder(seed=2)
    x = g.conv("input", 3, 64, 7, stride=2, act="relu")
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for channels, stride in RESNET18_STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            y = g.conv(x, cin, channels, 3, stride=s, act="relu")
            y = g.conv(y, channels, channels, 3)
            shortcut = g.conv(x, cin, channels, 1, stride=s) if (s != 1 or cin != channels) else x
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            cin = channels
    return g.save(path, [image_input()], g.classifier(x, 512, 1000), 13, weights)


def build_small_convnet(path: Path, weights: Weights = "initializer") -> Path:
    """3x3 conv 3->8, 1x1 conv 8->16, 3x3 depthwise 16, pool, fc 16->10 on a 32x32 image."""
    g = GraphBuilder(seed=3)
    x = g.conv("input", 3, 8, 3, act="relu")
    x = g.conv(x, 8, 16, 1, act="relu")
    x = g.conv(x, 16, 16, 3, group=16, act="relu")
    return g.save(path, [image_input(size=32)], g.classifier(x, 16, 10), 13, weights)


def build_transformer_block(path: Path, dim: int = 64, heads: int = 4, ff: int = 256) -> Path:
    """A pre-norm encoder block on (batch, tokens, dim): attention with MatMuls of two activations."""
    g = GraphBuilder(seed=4)
    head_dim = dim // heads
    split = g.const("split_heads", np.array([0, 0, heads, head_dim], np.int64))  # 0: copy batch and tokens
    merge = g.const("merge_heads", np.array([0, 0, dim], np.int64))

    def norm(x: str) -> str:
        gamma, beta = g.const("gamma", np.ones(dim, np.float32)), g.const("beta", np.zeros(dim, np.float32))
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1)

    def linear(x: str, fan_in: int, fan_out: int) -> str:
        y = g.op("MatMul", [x, g.weight("w", (fan_in, fan_out), fan_in)])
        return g.op("Add", [y, g.const("b", np.zeros(fan_out, np.float32))])

    h = norm("tokens")
    q, k, v = (g.op("Reshape", [linear(h, dim, dim), split]) for _ in range(3))  # (B, T, H, D)
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])  # (B, H, T, D)
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])  # (B, H, D, T)
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])  # (B, H, T, D)
    scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const("scale", np.array(head_dim**-0.5, np.float32))])
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # (B, H, T, D)
    context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])  # (B, T, dim)
    x = g.op("Add", ["tokens", linear(context, dim, dim)])
    y = linear(g.op("Relu", [linear(norm(x), dim, ff)]), ff, dim)
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq", dim])]
    return g.save(path, inputs, g.op("Add", [x, y]), 17, "initializer")


def build_recurrent(
    path: Path, cell: str = "LSTM", seq: int = 16, features: int = 32, hidden: int = 64, bidirectional: bool = False
) -> Path:
    """A recurrent cell over (seq, batch, features), then a linear layer on the last hidden state."""
    g = GraphBuilder(seed=5)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    dirs = 2 if bidirectional else 1
    w = g.weight("W", (dirs, gates * hidden, features), features)
    r = g.weight("R", (dirs, gates * hidden, hidden), hidden)
    b = g.const("B", np.zeros((dirs, 2 * gates * hidden), np.float32))
    direction = "bidirectional" if bidirectional else "forward"
    names = [g.name("y"), g.name("y_h")] + ([g.name("y_c")] if cell == "LSTM" else [])
    g.nodes.append(helper.make_node(cell, ["x", w, r, b], names, hidden_size=hidden, direction=direction))
    last = g.op("Reshape", [names[1], g.const("flat", np.array([-1, dirs * hidden], np.int64))])  # (B, dirs*H)
    logits = g.op("MatMul", [last, g.weight("w_out", (dirs * hidden, 10), hidden)])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", features])]
    return g.save(path, inputs, logits, 14, "initializer")


BUILDERS = {
    "mobilenet_v2.onnx": build_mobilenet_v2,
    "mobilenet_v2_fp16.onnx": lambda p: build_mobilenet_v2(p, fp16=True),
    "resnet18.onnx": build_resnet18,
    "small_convnet.onnx": build_small_convnet,
    "small_convnet_constants.onnx": lambda p: build_small_convnet(p, "constant"),
    "transformer_block.onnx": build_transformer_block,
    "lstm.onnx": build_recurrent,
}
