"""What each ONNX op is (its layer family) and what it costs in multiply-accumulates.

Pure functions over a node and the shapes around it, so they are testable without a model file.
Shapes use the profiler's convention: a tuple of dims where 0 stands for a dimension shape inference
could not determine, or None when even the rank is unknown; a MAC count that needs an unknown
dimension comes out 0, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from accelerators.base import Family

Shape = tuple[int, ...] | None
ShapeOf = Callable[[str], Shape]
IsConst = Callable[[str], bool]


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


_FAMILIES: dict[Family, frozenset[str]] = {
    Family.ELEMENTWISE: _ops(
        "Add Sub Mul Div Pow Sqrt Exp Log Abs Neg Reciprocal Relu LeakyRelu PRelu Elu Selu Celu Gelu Clip "
        "Sigmoid HardSigmoid HardSwish Swish Tanh Softplus Softsign Erf Mish ThresholdedRelu Min Max Sum Mean "
        "Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not Floor Ceil Round Sign Sin Cos Tan "
        "Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Mod BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot "
        "IsNaN IsInf Shrink Dropout BiasGelu FastGelu QuickGelu QLinearAdd QLinearMul QLinearSigmoid "
        "QLinearLeakyRelu"
    ),
    Family.NORMALIZATION: _ops(
        "BatchNormalization LayerNormalization InstanceNormalization GroupNormalization RMSNormalization "
        "Softmax LogSoftmax Hardmax LpNormalization MeanVarianceNormalization LRN SkipLayerNormalization "
        "SimplifiedLayerNormalization SkipSimplifiedLayerNormalization QLinearSoftmax"
    ),
    Family.POOLING: _ops(
        "MaxPool AveragePool GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool MaxRoiPool RoiAlign "
        "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
        "ReduceSumSquare ArgMax ArgMin TopK QLinearAveragePool QLinearGlobalAveragePool"
    ),
    Family.RESIZE: _ops("Resize Upsample GridSample"),
    Family.RESHAPE: _ops(
        "Reshape Transpose Concat Slice Pad Gather GatherElements GatherND Flatten Squeeze Unsqueeze Split "
        "Expand Tile Identity DepthToSpace SpaceToDepth Shape Size ConstantOfShape ScatterND ScatterElements "
        "Scatter Range NonZero Compress ReverseSequence OneHot Trilu CenterCropPad EyeLike QLinearConcat"
    ),
    Family.QUANTIZE: _ops("QuantizeLinear DequantizeLinear DynamicQuantizeLinear Cast CastLike"),
}
_FAMILY_OF = {op: family for family, ops in _FAMILIES.items() for op in ops}

# op -> index of the weight input (the activation is input 0)
_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1}
# op -> index of the second operand
_MATMULS = {
    "MatMul": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
    "FusedMatMul": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
    "MatMulNBits": 1,
}
_GEMMS = {"Gemm": 1, "QGemm": 3}  # op -> index of B
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_SPECIAL = frozenset({"ConvTranspose", "Einsum", "Attention"})  # handled one by one in classify()


def known_op(node: onnx.NodeProto) -> bool:
    op = node.op_type
    return op in _FAMILY_OF or op in _CONVS or op in _MATMULS or op in _GEMMS or op in _GATES or op in _SPECIAL


def classify(node: onnx.NodeProto, shape_of: ShapeOf, is_const: IsConst) -> tuple[Family, int]:
    """The node's family and MACs (0 for families without MACs or when a needed shape is unknown)."""
    op = node.op_type
    if op in _CONVS:
        return _conv(node, shape_of, _CONVS[op])
    if op == "ConvTranspose":
        weight = shape_of(_input(node, 1))
        # weight (Cin, Cout/group, kh, kw): in_elements x (Cout/group) x kh x kw
        return Family.CONV_TRANSPOSE, _elements(shape_of(node.input[0])) * _elements(weight[1:] if weight else None)
    if op in _MATMULS:
        a, b = node.input[0], _input(node, _MATMULS[op])
        family = Family.FULLY_CONNECTED if is_const(a) or is_const(b) else Family.MATMUL
        # (..., M, K) x (..., K, N) -> (..., M, N): output elements x K, batched or not
        k = _int(node, "K", 0) if op == "MatMulNBits" else _last(shape_of(a))
        return family, _elements(shape_of(node.output[0])) * k
    if op in _GEMMS:
        b = _input(node, _GEMMS[op])
        a_shape = shape_of(node.input[0])  # (M, K), or (K, M) with transA
        k = 0 if a_shape is None or len(a_shape) != 2 else a_shape[0 if _int(node, "transA", 0) else 1]
        family = Family.FULLY_CONNECTED if is_const(node.input[0]) or is_const(b) else Family.MATMUL
        return family, _elements(shape_of(node.output[0])) * k
    if op in _GATES:
        return Family.RECURRENT, _recurrent(node, shape_of, _GATES[op])
    if op == "Einsum":
        operands = [i for i in node.input if i]
        family = Family.FULLY_CONNECTED if any(is_const(i) for i in operands) else Family.MATMUL
        return family, _einsum(node, [shape_of(i) for i in operands], shape_of(node.output[0]))
    if op == "Attention" and node.domain in ("", "ai.onnx"):
        return Family.MATMUL, _attention(node, shape_of)
    return _FAMILY_OF.get(op, Family.MATMUL if op in _SPECIAL else Family.OTHER), 0


def _conv(node: onnx.NodeProto, shape_of: ShapeOf, weight_index: int) -> tuple[Family, int]:
    weight = shape_of(_input(node, weight_index))  # (Cout, Cin/group, kh, kw)
    group = _int(node, "group", 1)
    kernel: tuple[int, ...] = tuple(_ints(node, "kernel_shape")) or (weight[2:] if weight else ())
    if group == 1 and kernel and all(k == 1 for k in kernel):
        family = Family.POINTWISE_CONV
    elif group > 1 and (weight[1] == 1 if weight and len(weight) > 1 else _dim(shape_of(node.input[0]), 1) == group):
        family = Family.DEPTHWISE_CONV  # one input channel per group: group == input channels
    else:
        family = Family.CONV
    # out_elements x (Cin/group) x kh x kw
    return family, _elements(shape_of(node.output[0])) * _elements(weight[1:] if weight else None)


def _recurrent(node: onnx.NodeProto, shape_of: ShapeOf, gates: int) -> int:
    x = shape_of(node.input[0])  # (seq, batch, input), or (batch, seq, input) with layout=1
    if x is None or len(x) != 3:
        return 0
    hidden = _int(node, "hidden_size", 0)
    directions = 2 if _str(node, "direction") == "bidirectional" else 1
    seq, batch = (x[1], x[0]) if _int(node, "layout", 0) else (x[0], x[1])
    # per step and direction: gates x (input + hidden) x hidden
    return seq * batch * directions * gates * (x[2] + hidden) * hidden


def _einsum(node: onnx.NodeProto, inputs: list[Shape], output: Shape) -> int:
    """output elements x the sizes of the letters summed over (those in no output term)."""
    lhs, _, rhs = _str(node, "equation").replace(" ", "").partition("->")
    terms = lhs.split(",")
    if output is None or len(terms) != len(inputs):
        return 0
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, inputs, strict=True):
        if shape is None:
            return 0
        head, dots, tail = term.partition("...")
        letters = list(head) + list(tail)
        dims = list(shape[: len(head)]) + (list(shape[len(shape) - len(tail) :]) if tail else [])
        if len(letters) != len(dims) or (not dots and len(letters) != len(shape)):
            return 0
        for letter, dim in zip(letters, dims, strict=True):
            sizes[letter] = max(sizes.get(letter, 0), dim)  # broadcast: a 1 yields to the real size
    kept = set(rhs) if rhs else {c for c in sizes if lhs.count(c) == 1}
    return _elements(output) * math.prod(size for letter, size in sizes.items() if letter not in kept)


def _attention(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """QK^T plus scores x V: key length x (query elements + output elements), 3-D or 4-D layouts."""
    k = shape_of(_input(node, 1))  # (batch, heads, kv_len, head_dim) or (batch, kv_len, hidden)
    if k is None or len(k) not in (3, 4):
        return 0
    kv_len = k[-2] if len(k) == 4 else k[1]
    return kv_len * (_elements(shape_of(node.input[0])) + _elements(shape_of(node.output[0])))


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _str(node: onnx.NodeProto, name: str) -> str:
    return next((a.s.decode(errors="replace") for a in node.attribute if a.name == name), "")


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _elements(shape: Shape) -> int:
    return 0 if shape is None else math.prod(shape)


def _dim(shape: Shape, index: int) -> int:
    return shape[index] if shape is not None and len(shape) > index else 0


def _last(shape: Shape) -> int:
    return shape[-1] if shape else 0
