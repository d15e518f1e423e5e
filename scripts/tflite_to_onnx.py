#!/usr/bin/env python3
"""Convert a float TFLite model (MediaPipe's vision models and the like) to an equivalent ONNX model.

    scripts/tflite_to_onnx.py MODEL.tflite OUT.onnx [--check]

The file is first validated by ``accelerators.tflite_file.read_tflite`` (a hostile file fails there
with one line), then read through the schema's object API for weights and options. Graph inputs and
outputs keep TFLite's names and NHWC layout, so one feed runs both models; inside, every 4-D
activation lives in NCHW, the layout ONNX's Conv, pooling and Resize are defined in. Each tensor is
emitted in whichever layout its consumer wants, once: layout-aware ops (convolutions, pooling, pad,
resize, concatenation, elementwise ops on 4-D tensors) take NCHW; the rest (reshape, fully connected,
softmax, slicing) take NHWC behind a Transpose. Constant DEQUANTIZE (fp16 or int8 weights) and
DENSIFY (sparse weights) are folded into float32 initializers.

Supported: the builtin ops in ``_Converter.HANDLERS`` plus MediaPipe's ``Convolution2DTransposeBias``
custom op. Anything else raises ``UnsupportedOp`` naming the op. ``--check`` runs both models on a
random input (LiteRT and onnxruntime) and prints the largest difference.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a file, not installed: make the repository importable

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from accelerators.tflite_file import read_tflite, schema  # noqa: E402

OPSET = 17
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8}
_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}  # NHWC axis -> where it sits in NCHW
_SAME, _VALID = 0, 1  # schema Padding
_CUSTOM_SAME = 1  # TfLitePadding in a custom op's raw options: unknown 0, same 1, valid 2


class UnsupportedOp(ValueError):
    """The model uses an op (or an op variant) this converter does not translate."""


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: the odd pixel goes after, not before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def densify(sparsity: Any, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A dense array from TFLite's sparse encoding (traversal order, block map, DENSE/CSR levels)."""
    rank = len(shape)
    order = list(sparsity.traversalOrder)
    block_map = list(sparsity.blockMap) if sparsity.blockMap is not None else []
    pos = np.zeros(1, np.int64)  # position in the stored values reached by each path so far
    coords: list[np.ndarray] = []  # per traversed level, the coordinate along it, one per path
    for level in sparsity.dimMetadata:
        if level.format == 0:  # DENSE
            size = level.denseSize
            pos = (pos[:, None] * size + np.arange(size)).ravel()
            coords = [np.repeat(c, size) for c in coords]
            coords.append(np.tile(np.arange(size), len(pos) // size))
        else:  # SPARSE_CSR: segments[p]..segments[p + 1] index this level's stored coordinates
            segments = np.asarray(level.arraySegments.values, np.int64)
            indices = np.asarray(level.arrayIndices.values, np.int64)
            counts = segments[pos + 1] - segments[pos]
            starts = np.repeat(segments[pos] - np.cumsum(counts) + counts, counts)
            new_pos = starts + np.arange(int(counts.sum()))
            coords = [np.repeat(c, counts) for c in coords]
            coords.append(indices[new_pos])
            pos = new_pos
    dense = np.zeros(shape, values.dtype)
    index = [np.zeros(len(pos), np.int64) for _ in range(rank)]
    for level, dim in enumerate(order):
        if dim < rank:
            index[dim] += coords[level] * (_block_size(sparsity, dim) if dim in block_map else 1)
        else:  # a block dimension: an offset inside the block of original dimension block_map[k]
            index[block_map[dim - rank]] += coords[level]
    dense[tuple(index)] = values.ravel()[pos]
    return dense


def _block_size(sparsity: Any, dim: int) -> int:
    block = list(sparsity.blockMap).index(dim)
    rank = len(sparsity.traversalOrder) - len(sparsity.blockMap)
    level = list(sparsity.traversalOrder).index(rank + block)
    return int(sparsity.dimMetadata[level].denseSize)


class _Converter:
    def __init__(self, path: Path) -> None:
        read_tflite(path)  # validates every offset and size before the object API trusts them
        raw = path.read_bytes()
        self.s = schema()
        model = self.s.ModelT.InitFromPackedBuf(raw, 0)
        self.raw, self.model = raw, model
        self.g = model.subgraphs[0]
        self.op_names = {v: k for k, v in vars(self.s.BuiltinOperator).items() if k.isupper() and isinstance(v, int)}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.values: dict[tuple[int, bool], str] = {}  # (tensor index, in NCHW) -> ONNX value name
        seen: dict[str, int] = {}
        self.names: list[str] = []
        for i, t in enumerate(self.g.tensors):
            name = (t.name or b"").decode() if isinstance(t.name, bytes) else str(t.name or f"t{i}")
            seen[name] = seen.get(name, 0) + 1
            self.names.append(name if seen[name] == 1 else f"{name}#{i}")
            data = self._buffer(t.buffer)
            if data is not None:
                flat: np.ndarray = np.frombuffer(data, _DTYPES[t.type])  # a sparse tensor keeps only its stored values
                self.consts[i] = flat if t.sparsity is not None else flat.reshape(self.shape(i))

    def _buffer(self, index: int) -> bytes | None:
        buf = self.model.buffers[index]
        if buf.offset > 1:
            return self.raw[buf.offset : buf.offset + buf.size]
        return None if buf.data is None or len(buf.data) == 0 else bytes(np.asarray(buf.data, np.uint8))

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(d) for d in (self.g.tensors[i].shape if self.g.tensors[i].shape is not None else ()))

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    # -- emitting ----------------------------------------------------------------------------------

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def init(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, i: int) -> np.ndarray:
        if i not in self.consts:
            raise UnsupportedOp(f"tensor {self.names[i]!r} must be a constant here")
        return self.consts[i]

    def get(self, i: int, nchw: bool) -> str:
        """Tensor ``i`` as an ONNX value, NCHW when asked (4-D only), else in TFLite's own layout."""
        nchw = nchw and self.rank(i) == 4
        if (i, nchw) in self.values:
            return self.values[(i, nchw)]
        name = f"{self.names[i]}:nchw" if nchw else self.names[i]
        if i in self.consts:
            array = self.consts[i].astype(np.float32) if self.consts[i].dtype == np.float16 else self.consts[i]
            self.values[(i, nchw)] = self.init(name, array.transpose(_TO_NCHW) if nchw else array)
        elif (i, not nchw) in self.values:
            perm = _TO_NCHW if nchw else _TO_NHWC
            self.values[(i, nchw)] = self.node("Transpose", [self.values[(i, not nchw)]], name, perm=list(perm))
        else:
            raise UnsupportedOp(f"tensor {self.names[i]!r} is used before any op produced it")
        return self.values[(i, nchw)]

    def put(self, i: int, nchw: bool, op: str, inputs: list[str], activation: int = 0, **attrs: Any) -> None:
        """Emit ``op`` producing tensor ``i`` (then its fused activation)."""
        name = f"{self.names[i]}:nchw" if nchw else self.names[i]
        if activation:
            inputs = [self.node(op, inputs, f"{name}:pre", **attrs)]
            op, attrs = self._activation(activation, inputs)
        self.values[(i, nchw)] = self.node(op, inputs, name, **attrs)

    def _activation(self, code: int, inputs: list[str]) -> tuple[str, dict[str, Any]]:
        """The ONNX op for a fused activation; Clip's bounds are appended to ``inputs``."""
        if code == 1:
            return "Relu", {}
        if code in (2, 3):  # RELU_N1_TO_1, RELU6
            lo, hi = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
            inputs += [
                self.init(f"clip:{lo}", np.array(lo, np.float32)),
                self.init(f"clip:{hi}", np.array(hi, np.float32)),
            ]
            return "Clip", {}
        if code == 4:
            return "Tanh", {}
        raise UnsupportedOp(f"fused activation {code}")

    # -- ops ---------------------------------------------------------------------------------------

    def convert(self) -> onnx.ModelProto:
        for i in self.g.inputs:
            self.values[(int(i), False)] = self.names[i]
        for op in self.g.operators:
            code = self.model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = self.op_names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = (code.customCode or b"").decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            handler = self.HANDLERS.get(name)
            if handler is None:
                raise UnsupportedOp(f"TFLite op {name} is not supported by this converter")
            ins = [int(i) for i in (op.inputs if op.inputs is not None else [])]
            outs = [int(o) for o in op.outputs]
            handler(self, ins, outs, op.builtinOptions, op)
        inputs = [self._value_info(i, self.names[i]) for i in self.g.inputs]
        outputs = [self._value_info(i, self.get(i, nchw=False)) for i in self.g.outputs]
        graph = helper.make_graph(self.nodes, "tflite", inputs, outputs, initializer=list(self.inits.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge-agent")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def _value_info(self, i: int, name: str) -> onnx.ValueInfoProto:
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(_DTYPES[self.g.tensors[i].type]))
        return helper.make_tensor_value_info(name, dtype, list(self.shape(i)))

    def _fold(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        """DEQUANTIZE / DENSIFY of constants: computed here, stored as float32."""
        t = self.g.tensors[ins[0]]
        if ins[0] not in self.consts:
            if t.type == 1:  # fp16 activations
                self.put(outs[0], False, "Cast", [self.get(ins[0], False)], to=TensorProto.FLOAT)
                return
            raise UnsupportedOp("DEQUANTIZE of an activation (a quantized model) is not supported")
        value = self.consts[ins[0]]
        if t.sparsity is not None:
            value = densify(t.sparsity, value, self.shape(outs[0]))
        if t.quantization is not None and t.quantization.scale is not None and value.dtype != np.float16:
            q = t.quantization
            axis = q.quantizedDimension
            bshape = [-1 if d == axis else 1 for d in range(value.ndim)] if len(q.scale) > 1 else [1] * value.ndim
            scale = np.asarray(q.scale, np.float32).reshape(bshape)
            zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32).reshape(bshape)
            value = (value.astype(np.float32) - zero) * scale
        self.consts[outs[0]] = value.astype(np.float32)

    def _conv(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        w = self.const(ins[1])  # (O, kH, kW, I) for CONV_2D, (1, kH, kW, C * multiplier) for depthwise
        depthwise = self._op_name(op) == "DEPTHWISE_CONV_2D"
        _, h, wd, c = self.shape(ins[0])
        kh, kw = w.shape[1], w.shape[2]
        dh, dw = opts.dilationHFactor, opts.dilationWFactor
        pads = [0, 0, 0, 0]
        if opts.padding == _SAME:
            (pt, pb), (pl, pr) = same_pads(h, kh, opts.strideH, dh), same_pads(wd, kw, opts.strideW, dw)
            pads = [pt, pl, pb, pr]
        weight = w.astype(np.float32).transpose(3, 0, 1, 2) if depthwise else w.astype(np.float32).transpose(_TO_NCHW)
        inputs = [self.get(ins[0], True), self.init(f"{self.names[ins[1]]}:oihw", weight)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.init(f"{self.names[ins[2]]}:f32", self.const(ins[2]).astype(np.float32)))
        attrs: dict[str, Any] = {"strides": [opts.strideH, opts.strideW], "dilations": [dh, dw], "pads": pads}
        self.put(outs[0], True, "Conv", inputs, opts.fusedActivationFunction, group=c if depthwise else 1, **attrs)

    def _pool(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        _, h, w, _ = self.shape(ins[0])
        pads = [0, 0, 0, 0]
        if opts.padding == _SAME:
            (pt, pb), (pl, pr) = (
                same_pads(h, opts.filterHeight, opts.strideH),
                same_pads(w, opts.filterWidth, opts.strideW),
            )
            pads = [pt, pl, pb, pr]
        kind = "MaxPool" if self._op_name(op) == "MAX_POOL_2D" else "AveragePool"
        attrs = {"kernel_shape": [opts.filterHeight, opts.filterWidth], "strides": [opts.strideH, opts.strideW]}
        self.put(outs[0], True, kind, [self.get(ins[0], True)], opts.fusedActivationFunction, pads=pads, **attrs)

    def _transpose_conv(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        if self._op_name(op) == "TRANSPOSE_CONV":
            x, w, b = ins[2], ins[1], (ins[3] if len(ins) > 3 and ins[3] >= 0 else None)
            padding, sh, sw, act = opts.padding, opts.strideH, opts.strideW, opts.fusedActivationFunction
        else:  # MediaPipe's Convolution2DTransposeBias: (input, weights, bias), raw TfLiteTransposeConvParams
            x, w, b = ins
            raw_padding, sw, sh = struct.unpack_from("<iii", bytes(np.asarray(op.customOptions, np.uint8)))
            padding, act = (_SAME if raw_padding == _CUSTOM_SAME else _VALID), 0
        weight = self.const(w).astype(np.float32)  # (O, kH, kW, I)
        _, h, wd, _ = self.shape(x)
        _, oh, ow, _ = self.shape(outs[0])
        pads = [0, 0, 0, 0]
        if padding == _SAME:  # the padding a forward conv from output to input would use, cut off here
            th, tw = (h - 1) * sh + weight.shape[1] - oh, (wd - 1) * sw + weight.shape[2] - ow
            pads = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
        inputs = [self.get(x, True), self.init(f"{self.names[w]}:iohw", weight.transpose(3, 0, 1, 2))]
        if b is not None:
            inputs.append(self.init(f"{self.names[b]}:f32", self.const(b).astype(np.float32)))
        self.put(outs[0], True, "ConvTranspose", inputs, act, strides=[sh, sw], pads=pads)

    def _elementwise(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        onnx_op = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max", "MINIMUM": "Min"}
        name = self._op_name(op)
        live = [i for i in ins if i not in self.consts]
        nchw = bool(live) and all(self.rank(i) == 4 for i in live) and all(self.rank(i) <= 4 for i in ins)
        inputs = [self._broadcast_operand(i, nchw) for i in ins]
        act = getattr(opts, "fusedActivationFunction", 0) if opts is not None else 0
        self.put(outs[0], nchw, onnx_op.get(name, "PRelu"), inputs, act)

    def _broadcast_operand(self, i: int, nchw: bool) -> str:
        if i not in self.consts or not nchw:
            return self.get(i, nchw)
        value = self.consts[i].astype(np.float32)
        value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(_TO_NCHW)
        return self.init(f"{self.names[i]}:nchw", value)

    def _unary(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        name = self._op_name(op)
        nchw = (ins[0], True) in self.values
        x = self.get(ins[0], nchw)
        if name in ("RELU6", "RELU_N1_TO_1"):
            op_type, _ = self._activation(3 if name == "RELU6" else 2, inputs := [x])
            self.put(outs[0], nchw, op_type, inputs)
            return
        simple = {"RELU": "Relu", "LOGISTIC": "Sigmoid", "TANH": "Tanh", "HARD_SWISH": "HardSwish", "EXP": "Exp"}
        if name == "LEAKY_RELU":
            self.put(outs[0], nchw, "LeakyRelu", [x], alpha=float(opts.alpha))
        else:
            self.put(outs[0], nchw, simple[name], [x])

    def _pad(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        pads = self.const(ins[1]).astype(np.int64)  # (rank, 2) before/after per NHWC axis
        nchw = self.rank(ins[0]) == 4
        if nchw:
            pads = pads[list(_TO_NCHW)]
        inputs = [self.get(ins[0], nchw), self.init(f"{self.names[ins[1]]}:onnx{int(nchw)}", pads.T.ravel())]
        if len(ins) > 2:
            inputs.append(self.get(ins[2], False))
        self.put(outs[0], nchw, "Pad", inputs)

    def _concat(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        rank = self.rank(outs[0])
        axis = opts.axis % rank
        nchw = rank == 4
        inputs = [self.get(i, nchw) for i in ins]
        self.put(outs[0], nchw, "Concat", inputs, opts.fusedActivationFunction, axis=_NCHW_AXIS[axis] if nchw else axis)

    def _reshape(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        shape = self.init(f"{self.names[outs[0]]}:shape", np.asarray(self.shape(outs[0]), np.int64))
        self.put(outs[0], False, "Reshape", [self.get(ins[0], False), shape])

    def _resize(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        n, h, w, c = self.shape(outs[0])
        mode = "align_corners" if opts.alignCorners else "half_pixel" if opts.halfPixelCenters else "asymmetric"
        sizes = self.init(f"{self.names[outs[0]]}:sizes", np.asarray([n, c, h, w], np.int64))
        inputs = [self.get(ins[0], True), "", "", sizes]
        self.put(outs[0], True, "Resize", inputs, mode="linear", coordinate_transformation_mode=mode)

    def _mean(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        axes = sorted(int(a) % self.rank(ins[0]) for a in np.atleast_1d(self.const(ins[1])))
        nchw = self.rank(ins[0]) == 4 and (opts.keepDims or axes == [1, 2])  # (N, C) is (N, C) either way
        mapped = sorted(_NCHW_AXIS[a] for a in axes) if nchw else axes
        x = self.get(ins[0], nchw)
        self.put(outs[0], nchw and opts.keepDims, "ReduceMean", [x], axes=mapped, keepdims=int(opts.keepDims))

    def _fully_connected(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        w = self.const(ins[1]).astype(np.float32)  # (O, I)
        flat = self.init(f"{self.names[ins[0]]}:flat", np.asarray([-1, w.shape[1]], np.int64))
        x = self.node("Reshape", [self.get(ins[0], False), flat], f"{self.names[outs[0]]}:in")
        inputs = [x, self.init(f"{self.names[ins[1]]}:f32", w)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.init(f"{self.names[ins[2]]}:f32", self.const(ins[2]).astype(np.float32)))
        out_shape = self.shape(outs[0])
        if len(out_shape) == 2:
            self.put(outs[0], False, "Gemm", inputs, opts.fusedActivationFunction, transB=1)
            return
        gemm = self.node("Gemm", inputs, f"{self.names[outs[0]]}:gemm", transB=1)
        shape = self.init(f"{self.names[outs[0]]}:shape", np.asarray(out_shape, np.int64))
        self.put(outs[0], False, "Reshape", [gemm, shape], opts.fusedActivationFunction)

    def _softmax(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        x = self.get(ins[0], False)
        if opts.beta != 1.0:
            x = self.node("Mul", [x, self.init(f"beta:{opts.beta}", np.array(opts.beta, np.float32))], f"{x}:beta")
        self.put(outs[0], False, "Softmax", [x], axis=-1)

    def _depth_to_space(self, ins: list[int], outs: list[int], opts: Any, op: Any) -> None:
        self.put(outs[0], True, "DepthToSpace", [self.get(ins[0], True)], blocksize=opts.blockSize, mode="DCR")

    def _op_name(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return str(self.op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"))

    HANDLERS: dict[str, Callable[[_Converter, list[int], list[int], Any, Any], None]] = {
        "DEQUANTIZE": _fold, "DENSIFY": _fold,
        "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv,
        "MAX_POOL_2D": _pool, "AVERAGE_POOL_2D": _pool,
        "TRANSPOSE_CONV": _transpose_conv, "Convolution2DTransposeBias": _transpose_conv,
        "ADD": _elementwise, "SUB": _elementwise, "MUL": _elementwise, "DIV": _elementwise,
        "MAXIMUM": _elementwise, "MINIMUM": _elementwise, "PRELU": _elementwise,
        "RELU": _unary, "RELU6": _unary, "RELU_N1_TO_1": _unary, "LOGISTIC": _unary, "TANH": _unary,
        "HARD_SWISH": _unary, "LEAKY_RELU": _unary, "EXP": _unary,
        "PAD": _pad, "PADV2": _pad, "CONCATENATION": _concat, "RESHAPE": _reshape,
        "RESIZE_BILINEAR": _resize, "MEAN": _mean, "FULLY_CONNECTED": _fully_connected,
        "SOFTMAX": _softmax, "DEPTH_TO_SPACE": _depth_to_space,
    }  # fmt: skip


def convert(tflite_path: Path, onnx_path: Path) -> onnx.ModelProto:
    """Convert subgraph 0 of ``tflite_path`` and save it to ``onnx_path``; returns the ONNX model."""
    model = _Converter(tflite_path).convert()
    model.doc_string = f"converted from {tflite_path.name} by edge-agent scripts/tflite_to_onnx.py"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_path))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--check", action="store_true", help="run both on a random input and compare")
    args = parser.parse_args(argv)
    convert(args.tflite, args.onnx)
    print(f"{args.onnx}: {args.onnx.stat().st_size / 1e6:.2f} MB")
    if args.check:
        import onnxruntime as ort
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(args.tflite))
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        feeds = {d["name"]: rng.random(tuple(d["shape"]), dtype=np.float32) for d in interpreter.get_input_details()}
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], feeds[d["name"]])
        interpreter.invoke()
        session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        for d in interpreter.get_output_details():
            ref = interpreter.get_tensor(d["index"])
            print(
                f"{d['name']}: max |diff| {np.abs(ref - got[d['name']]).max():.3g} (max |ref| {np.abs(ref).max():.3g})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
