"""Layer profile of a .tflite model (subgraph 0): one Layer per operator, in execution order.

Operators whose inputs are all constants (a DEQUANTIZE of float16 or int8 weights, a shape
computation on constants) run once at load time in practice: they are folded, and the constants they
read count, in their stored size, as parameters of the layer(s) that consume their result, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from accelerators.base import Family
from accelerators.errors import ModelLoadError
from accelerators.tflite_file import TfliteModel, TfliteOperator, TfliteSubgraph, read_tflite, schema
from agent.errors import ModelError
from agent.models.ir import Layer, ModelProfile, TensorInfo

Shape = tuple[int, ...]

_FAMILIES: dict[str, Family] = {
    op: family
    for family, ops in (
        (Family.CONV, "CONV_2D CONV_3D"),
        (Family.DEPTHWISE_CONV, "DEPTHWISE_CONV_2D"),
        (Family.CONV_TRANSPOSE, "TRANSPOSE_CONV CONV_3D_TRANSPOSE"),
        (Family.FULLY_CONNECTED, "FULLY_CONNECTED"),
        (Family.MATMUL, "BATCH_MATMUL"),
        (Family.RECURRENT, "LSTM UNIDIRECTIONAL_SEQUENCE_LSTM BIDIRECTIONAL_SEQUENCE_LSTM RNN SVDF "
         "UNIDIRECTIONAL_SEQUENCE_RNN BIDIRECTIONAL_SEQUENCE_RNN"),
        (Family.ELEMENTWISE, "ADD SUB MUL DIV FLOOR_DIV FLOOR_MOD POW SQUARED_DIFFERENCE MAXIMUM MINIMUM ADD_N "
         "RELU RELU6 RELU_N1_TO_1 RELU_0_TO_1 LEAKY_RELU PRELU ELU GELU LOGISTIC TANH HARD_SWISH EXP LOG SQRT "
         "RSQRT SQUARE ABS NEG SIN COS FLOOR CEIL ROUND SIGN ATAN2 LOGICAL_AND LOGICAL_OR LOGICAL_NOT EQUAL "
         "NOT_EQUAL LESS LESS_EQUAL GREATER GREATER_EQUAL SELECT SELECT_V2 ZEROS_LIKE FILL BITWISE_XOR "
         "RIGHT_SHIFT CUMSUM"),
        (Family.NORMALIZATION, "SOFTMAX LOG_SOFTMAX L2_NORMALIZATION LOCAL_RESPONSE_NORMALIZATION"),
        (Family.POOLING, "AVERAGE_POOL_2D MAX_POOL_2D L2_POOL_2D MEAN SUM REDUCE_MAX REDUCE_MIN REDUCE_PROD "
         "REDUCE_ANY REDUCE_ALL ARG_MAX ARG_MIN"),
        (Family.RESIZE, "RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR"),
        (Family.RESHAPE, "RESHAPE TRANSPOSE CONCATENATION PAD PADV2 MIRROR_PAD STRIDED_SLICE SLICE GATHER "
         "GATHER_ND SQUEEZE EXPAND_DIMS SPLIT SPLIT_V PACK UNPACK TILE BROADCAST_TO SPACE_TO_DEPTH DEPTH_TO_SPACE "
         "SPACE_TO_BATCH_ND BATCH_TO_SPACE_ND SHAPE EMBEDDING_LOOKUP REVERSE_V2 SCATTER_ND DYNAMIC_UPDATE_SLICE "
         "BROADCAST_ARGS"),
        (Family.QUANTIZE, "QUANTIZE DEQUANTIZE CAST FAKE_QUANT"),
    )
    for op in ops.split()
}  # fmt: skip


def profile_tflite(
    path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None, default_dim: int = 1
) -> ModelProfile:
    """Profile subgraph 0 of ``path``; dynamic input dimensions take ``input_shapes``, else ``default_dim``."""
    if default_dim < 1:
        raise ModelError(f"default dimension {default_dim}: dynamic dimensions need a positive size")
    try:
        op_names = {v: k for k, v in vars(schema().BuiltinOperator).items() if k.isupper() and isinstance(v, int)}
    except ModelLoadError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    try:
        model = read_tflite(path)
    except ModelLoadError as exc:
        raise ModelError(str(exc)) from exc
    graph = model.subgraphs[0]
    names = _unique_names(graph)
    shapes, pinned, notes = _resolve_shapes(path, graph, names, input_shapes or {}, default_dim)
    if len(model.subgraphs) > 1:
        notes.append(
            f"the model has {len(model.subgraphs)} subgraphs; only subgraph 0 ({graph.name or 'main'}) is profiled "
            "(control-flow bodies and other signatures are not counted)"
        )
    walker = _Layers(model, graph, names, shapes, op_names)
    layers = walker.build(notes)
    constant = set(walker.constant) | set(walker.derived)  # weights and what was folded from them
    info = {i: TensorInfo(names[i], shapes[i], graph.tensors[i].dtype) for i in range(len(graph.tensors))}
    try:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror}") from exc
    return ModelProfile(
        path=str(path),
        format="tflite",
        digest=digest,
        inputs=tuple(info[i] for i in graph.inputs),
        outputs=tuple(info[i] for i in graph.outputs),
        layers=tuple(layers),
        tensors={info[i].name: info[i] for i in info if i not in constant},
        pinned=pinned,
        notes=tuple(notes),
    )


def _unique_names(graph: TfliteSubgraph) -> list[str]:
    """Tensor names, printable and unique: TFLite requires neither, the IR keys tensors by name."""
    seen: set[str] = set()
    names = []
    for index, tensor in enumerate(graph.tensors):
        name = "".join(c if c.isprintable() else "?" for c in tensor.name) or f"tensor_{index}"
        if name in seen:
            name = f"{name}#{index}"
        seen.add(name)
        names.append(name)
    return names


def _resolve_shapes(
    path: Path,
    graph: TfliteSubgraph,
    names: list[str],
    given: Mapping[str, Sequence[int]],
    default_dim: int,
) -> tuple[list[Shape], dict[str, str], list[str]]:
    """Every tensor's shape with dynamic (-1) dimensions pinned, the pins made, and notes."""
    inputs = {names[i]: i for i in graph.inputs}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise ModelError(f"{path}: no model input named {', '.join(map(repr, unknown))}; inputs: {', '.join(inputs)}")
    shapes = [tensor.shape for tensor in graph.tensors]
    pinned: dict[str, str] = {}
    by_dim: dict[int, set[int]] = {}  # dimension position -> values pinned there
    for name, index in inputs.items():
        tensor = graph.tensors[index]
        signature, want = tensor.signature or tensor.shape, given.get(name)
        if want is not None and (
            len(want) != len(signature) or any(w < 1 or s not in (-1, w) for s, w in zip(signature, want, strict=False))
        ):
            shown = "(" + ", ".join("?" if s == -1 else str(s) for s in signature) + ")"
            raise ModelError(f"{path}: input {name!r} has shape {shown}; configured shape {tuple(want)} does not fit")
        dims = list(signature)
        for d, size in enumerate(signature):
            if size == -1:
                dims[d] = want[d] if want is not None else default_dim
                pinned[f"{name}:{d}"] = f"{dims[d]} (from config)" if want is not None else f"{dims[d]} (default)"
                by_dim.setdefault(d, set()).add(dims[d])
        shapes[index] = tuple(dims)
    changed = False
    for index, tensor in enumerate(graph.tensors):
        signature = tensor.signature or tensor.shape
        if index in graph.inputs or -1 not in signature:
            continue
        # TFLite stores one concrete shape (dynamic dims usually as 1); pin a dynamic dim to the value the
        # inputs got at the same position, which is exact for the batch dimension and approximate after
        # reshapes or transposes move dimensions around.
        dims = list(tensor.shape)
        for d, size in enumerate(signature):
            if size == -1 and len(by_dim.get(d, ())) == 1:
                dims[d] = next(iter(by_dim[d]))
                changed |= dims[d] != tensor.shape[d]
            elif dims[d] == -1:
                dims[d] = default_dim
        shapes[index] = tuple(dims)
    notes = []
    if changed:
        notes.append("dynamic dimensions were carried from the inputs by position; after reshapes, approximate")
    return shapes, pinned, notes


def _elements(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


class _Layers:
    """Walks the operators once, folding those on constants and charging each constant once."""

    def __init__(
        self, model: TfliteModel, graph: TfliteSubgraph, names: list[str], shapes: list[Shape], ops: dict[int, str]
    ) -> None:
        self.model, self.graph, self.names, self.shapes, self.ops = model, graph, names, shapes, ops
        # constant tensor -> (elements, stored bytes), zeroed once charged to a layer
        self.constant = {
            i: (_elements(t.shape), model.buffer_sizes[t.buffer])
            for i, t in enumerate(graph.tensors)
            if model.is_constant(t)
        }
        self.derived: dict[int, tuple[int, int]] = {}  # output of a folded op -> the constants it carries

    def _is_const(self, index: int) -> bool:
        return index in self.constant or index in self.derived

    def _charge(self, index: int) -> tuple[int, int]:
        """(elements, bytes) of a constant input, the first time any operator reads it; (0, 0) after."""
        if index in self.derived:
            cost = self.derived[index]
            self.derived[index] = (0, 0)
            return cost
        cost = self.constant.get(index, (0, 0))
        if index in self.constant:
            self.constant[index] = (0, 0)
        return cost

    def build(self, notes: list[str]) -> list[Layer]:
        layers: list[Layer] = []
        folded = 0
        unknown: dict[str, int] = {}
        for op in self.graph.operators:
            opcode = self.model.opcodes[op.opcode]
            ins = [i for i in op.inputs if i >= 0]
            if ins and all(self._is_const(i) for i in ins) and opcode.custom is None:
                costs = [self._charge(i) for i in ins]
                carried = (sum(c[0] for c in costs), sum(c[1] for c in costs))
                for n, out in enumerate(o for o in op.outputs if o >= 0):
                    self.derived[out] = carried if n == 0 else (0, 0)
                folded += 1
                continue
            if opcode.custom is None:
                name = self.ops.get(opcode.code, f"BUILTIN_{opcode.code}")
            else:
                name = opcode.custom or "CUSTOM"
            family = _FAMILIES.get(name, Family.OTHER) if opcode.custom is None else Family.OTHER
            if family is Family.OTHER:
                unknown[name] = unknown.get(name, 0) + 1
            layers.append(self._layer(len(layers), name, family, op))
        if folded:
            notes.append(f"{folded} operator(s) on constants only (e.g. DEQUANTIZE of stored weights) folded into "
                         "the layers that use their results")  # fmt: skip
        for name, count in sorted(unknown.items()):
            notes.append(f"op {name} ({count} layer(s)) has no cost model: counted as 0 MACs, family other")
        return layers

    def _layer(self, index: int, op_name: str, family: Family, op: TfliteOperator) -> Layer:
        graph, names, shapes = self.graph, self.names, self.shapes
        act_in = list(dict.fromkeys(i for i in op.inputs if i >= 0 and not self._is_const(i)))
        outs = [o for o in op.outputs if o >= 0]
        in_shapes: list[Shape | None] = [shapes[i] if i >= 0 else None for i in op.inputs]
        const_2d = [i for i in op.inputs if i >= 0 and self._is_const(i) and len(shapes[i]) == 2]
        out_elems = _elements(shapes[outs[0]]) if outs else 0
        macs = _macs(op_name, in_shapes, out_elems, op, [_elements(shapes[i]) for i in const_2d])
        if op_name == "CONV_2D" and len(in_shapes) > 1 and (f := in_shapes[1]) and len(f) == 4 and f[1:3] == (1, 1):
            family = Family.POINTWISE_CONV
        if op_name == "BATCH_MATMUL" and len(op.inputs) > 1 and self._is_const(op.inputs[1]):
            family = Family.FULLY_CONNECTED
        params = [self._charge(i) for i in op.inputs if i >= 0 and self._is_const(i)]
        size = {i: TensorInfo(names[i], shapes[i], graph.tensors[i].dtype).bytes for i in (*act_in, *outs)}
        main = act_in[0] if act_in else (outs[0] if outs else None)
        return Layer(
            index=index,
            name=names[outs[0]] if outs else f"{op_name.lower()}_{index}",
            op=op_name,
            family=family,
            inputs=tuple(names[i] for i in act_in),
            outputs=tuple(names[o] for o in outs),
            macs=macs,
            params=sum(p[0] for p in params),
            param_bytes=sum(p[1] for p in params),
            input_bytes=sum(size[i] for i in act_in),
            output_bytes=sum(size[o] for o in dict.fromkeys(outs)),
            dtype=graph.tensors[main].dtype if main is not None else "float32",
        )


def _macs(op: str, ins: list[Shape | None], out_elems: int, operator: TfliteOperator, weights_2d: list[int]) -> int:
    """Multiply-accumulates of one operator from its input shapes (filters are OHWI, FC weights (out, in))."""

    def shape(i: int, rank: int | None = None) -> Shape | None:
        s = ins[i] if i < len(ins) else None
        return s if s is not None and (rank is None or len(s) == rank) else None

    if op == "CONV_2D" and (f := shape(1, 4)):  # (Cout, kh, kw, Cin per group)
        return out_elems * f[1] * f[2] * f[3]
    if op == "DEPTHWISE_CONV_2D" and (f := shape(1, 4)):  # (1, kh, kw, C x multiplier)
        return out_elems * f[1] * f[2]
    if op == "TRANSPOSE_CONV" and (f := shape(1, 4)) and (x := shape(2)):  # every input pixel scatters a kernel
        return _elements(x) * f[0] * f[1] * f[2]
    if op == "CONV_3D" and (f := shape(1, 5)):  # (kd, kh, kw, Cin, Cout)
        return out_elems * f[0] * f[1] * f[2] * f[3]
    if op == "CONV_3D_TRANSPOSE" and (f := shape(1, 5)) and (x := shape(2)):  # (kd, kh, kw, Cout, Cin)
        return _elements(x) * f[0] * f[1] * f[2] * f[3]
    if op == "FULLY_CONNECTED" and (f := shape(1, 2)):  # (out, in); output (batch..., out)
        return out_elems * f[1]
    if op == "BATCH_MATMUL" and (a := shape(0)) and len(a) >= 2:
        return out_elems * (a[-2] if operator.options.get("adj_x") else a[-1])
    if _FAMILIES.get(op) is Family.RECURRENT and (x := shape(0)) and x[-1]:
        # each gate matrix (input- and recurrent-to-gate, projection) is one MAC per element per step
        return _elements(x) // x[-1] * sum(weights_2d)
    return 0
