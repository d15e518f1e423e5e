"""Profile an ONNX model into the layer IR: one layer per node that computes on activations.

How the file becomes layers:

- The file is parsed and checked by ``accelerators.onnx_file`` (hostile files fail there, one line);
  external data is read only for small tensors (shapes, axes, scales) that shape inference needs.
- Dynamic input dimensions are pinned (from ``input_shapes``, else ``default_dim``) and recorded in
  ``pinned``; then ONNX shape inference, with data propagation, gives every tensor a shape.
- Nodes that only transform constants (Constant, and e.g. Cast/DequantizeLinear/Reshape/Transpose of
  initializers) are folded, as runtimes do at load time: the constants they start from count as
  parameters of the layer that consumes their result, in their stored dtype and size. Each stored
  constant is counted once, at its first consumer, so shared weights do not inflate the totals.
- Subgraphs (If, Loop, Scan) are not entered: such a node is one layer of family ``other`` with a
  note, and what runs inside it is not counted.
- A dimension shape inference could not determine is 0 in ``TensorInfo.shape`` (so its bytes and
  the MACs that need it count 0), and the notes say which tensors are affected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import onnx

from accelerators.base import Family
from accelerators.errors import ModelLoadError
from accelerators.onnx_file import (
    ONNX_DTYPES,
    SMALL_EXTERNAL_BYTES,
    GiB,
    load_onnx_checked,
    tensor_elements,
    tensor_nbytes,
)
from agent.errors import ModelError
from agent.models.ir import Layer, ModelProfile, TensorInfo
from agent.models.onnx_graph import constant_size, foldable, pin_inputs, topological_order
from agent.models.onnx_ops import Shape, classify, known_op

MAX_TENSOR_BYTES = 4 * GiB  # one activation above this is a hostile model or absurd input shapes


def profile_onnx(
    path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None, default_dim: int = 1
) -> ModelProfile:
    """Layer-by-layer profile of the ONNX model at ``path``; raises ModelError (one line) if it cannot."""
    try:
        model = load_onnx_checked(path, external="small")
    except ModelLoadError as exc:
        raise ModelError(str(exc)) from exc
    notes: list[str] = []
    initializers = {t.name: t for t in model.graph.initializer}
    initializers.update({s.values.name: s.values for s in model.graph.sparse_initializer})
    pinned = pin_inputs(path, model.graph, initializers, input_shapes or {}, default_dim, notes)
    _drop_bulk_data(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises its own InferenceError, ValueError, RuntimeError ...
        notes.append(f"shape inference failed ({_first_line(exc)}); only shapes the file declares are known")
    graph = model.graph
    types = _value_types(graph, model.graph.initializer, model.graph.sparse_initializer)
    _refuse_absurd(path, types)
    layers = _layers(path, graph, initializers, types, notes)
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    activations = dict.fromkeys([*graph_inputs, *(n for layer in layers for n in layer.outputs)])
    tensors = {name: _info(name, types) for name in activations}
    vague = [name for name in activations if _vague(types.get(name, (None, ""))[0])]
    if vague:
        shown = ", ".join(repr(n) for n in vague[:5]) + (f" and {len(vague) - 5} more" if len(vague) > 5 else "")
        notes.append(f"shapes of {len(vague)} tensor(s) could not be inferred ({shown}): their unknown dimensions "
                     "are 0, so their bytes and the MACs that depend on them count 0")  # fmt: skip
    return ModelProfile(
        path=str(path),
        format="onnx",
        digest=_sha256(path),
        inputs=tuple(tensors[name] for name in graph_inputs),
        outputs=tuple(_info(o.name, types) for o in graph.output),
        layers=tuple(layers),
        tensors=tensors,
        pinned=pinned,
        notes=tuple(notes),
    )


def _layers(
    path: Path,
    graph: onnx.GraphProto,
    initializers: Mapping[str, onnx.TensorProto],
    types: Mapping[str, tuple[Shape, str]],
    notes: list[str],
) -> list[Layer]:
    """One layer per node that computes on activations; constant-only nodes fold into their consumers."""

    def shape_of(name: str) -> Shape:
        return types.get(name, (None, ""))[0]

    # constant tensor -> the stored constants it is computed from; stored constant -> (elements, bytes)
    origins: dict[str, tuple[str, ...]] = {name: (name,) for name in initializers}
    stored = {name: (tensor_elements(t), tensor_nbytes(t)) for name, t in initializers.items()}
    counted: set[str] = set()
    layers: list[Layer] = []
    unknown_ops: dict[str, None] = {}
    for node in topological_order(path, graph, set(initializers)):
        if foldable(node, origins):
            if node.op_type == "Constant" and node.output:
                stored[node.output[0]] = constant_size(node)
                keys: tuple[str, ...] = (node.output[0],)
            else:
                keys = tuple(dict.fromkeys(k for name in node.input if name for k in origins[name]))
            for out in node.output:
                origins[out] = keys
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            notes.append(f"{node.op_type} node {node.name or node.output[0]!r} has subgraphs; counted as one "
                         "layer, what runs inside it is not profiled")  # fmt: skip
            family, macs = Family.OTHER, 0
        else:
            family, macs = classify(node, shape_of, origins.__contains__)
            if not known_op(node):
                unknown_ops.setdefault(f"{node.domain + '.' if node.domain else ''}{node.op_type}")
        params = param_bytes = 0
        for key in dict.fromkeys(k for name in node.input for k in origins.get(name, ())):
            if key not in counted:  # a shared constant counts once, at its first consumer
                counted.add(key)
                params += stored[key][0]
                param_bytes += stored[key][1]
        acts_in = tuple(n for n in node.input if n and n not in origins)
        acts_out = tuple(n for n in node.output if n)
        dtype_from = acts_in[0] if acts_in else (acts_out[0] if acts_out else "")
        layers.append(
            Layer(
                index=len(layers),
                name=node.name or f"{node.op_type}_{len(layers)}",
                op=node.op_type,
                family=family,
                inputs=acts_in,
                outputs=acts_out,
                macs=macs,
                params=params,
                param_bytes=param_bytes,
                input_bytes=sum(_info(n, types).bytes for n in acts_in),
                output_bytes=sum(_info(n, types).bytes for n in acts_out),
                dtype=types.get(dtype_from, (None, "float32"))[1] or "float32",
            )
        )
    if unknown_ops:
        notes.append(f"ops the profiler does not know, counted as 'other' with 0 MACs: {', '.join(unknown_ops)}")
    return layers


def _drop_bulk_data(model: onnx.ModelProto) -> None:
    """Forget the values of big constants (dims and dtype stay): shape inference reads only small ones
    (shapes, axes, scales), and serialising tens of MB of weights for it would cost more than the rest."""
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    for tensor in tensors:
        if tensor.data_type != onnx.TensorProto.STRING and tensor_nbytes(tensor) > SMALL_EXTERNAL_BYTES:
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(name)


def _value_types(
    graph: onnx.GraphProto, dense: Iterable[onnx.TensorProto], sparse: Iterable[onnx.SparseTensorProto]
) -> dict[str, tuple[Shape, str]]:
    """name -> (shape with 0 for unknown dims, or None for unknown rank; dtype name)."""
    types: dict[str, tuple[Shape, str]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if not info.type.HasField("tensor_type"):
            continue  # sequences, maps, optionals: not tensors, not profiled
        tensor_type = info.type.tensor_type
        shape: Shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in tensor_type.shape.dim
            )
        types[info.name] = (shape, _dtype(tensor_type.elem_type))
    for tensor in dense:
        types[tensor.name] = (tuple(tensor.dims), _dtype(tensor.data_type))
    for matrix in sparse:  # its values are a list of the non-zero ones: the shape is the dense one
        types[matrix.values.name] = (tuple(matrix.dims), _dtype(matrix.values.data_type))
    return types


def _dtype(code: int) -> str:
    return ONNX_DTYPES.get(code, ("unknown", 32))[0]


def _refuse_absurd(path: Path, types: Mapping[str, tuple[Shape, str]]) -> None:
    """A tensor no device could hold means hostile shapes or input shapes pinned too large: stop here."""
    for name, (shape, dtype) in types.items():
        if shape and all(shape):
            info = TensorInfo(name, shape, dtype)
            if info.bytes > MAX_TENSOR_BYTES:
                raise ModelError(
                    f"{path}: tensor {name[:60]!r} would have shape {list(shape)} ({info.bytes / GiB:.3g} GiB of "
                    f"{dtype}) after shape inference, over the {MAX_TENSOR_BYTES // GiB} GiB limit; give smaller "
                    "input shapes, or the model is corrupt"
                )


def _info(name: str, types: Mapping[str, tuple[Shape, str]]) -> TensorInfo:
    shape, dtype = types.get(name, (None, "float32"))
    return TensorInfo(name, shape if shape is not None else (0,), dtype or "float32")


def _vague(shape: Shape) -> bool:
    return shape is None or not all(shape)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
