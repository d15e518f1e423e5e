"""Graph plumbing for the ONNX profiler: pinning dynamic inputs, execution order, constant folding."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Container, Mapping, Sequence
from pathlib import Path

import onnx

from accelerators.onnx_file import tensor_elements, tensor_nbytes
from agent.errors import ModelError

# Never folded although their inputs may all be constant: their output differs on every run.
_NOT_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
# Domains whose ops runtimes know, and so fold at load time; a custom op is always a layer.
_FOLDED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})


def pin_inputs(
    path: Path,
    graph: onnx.GraphProto,
    constants: Container[str],
    input_shapes: Mapping[str, Sequence[int]],
    default_dim: int,
    notes: list[str],
) -> dict[str, str]:
    """Give every dynamic input dimension a value, in place; return "input:dim" -> "value (from where)"."""
    inputs = {i.name: i for i in graph.input if i.name not in constants}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise ModelError(
                f"{path}: input shape given for {name!r}, which is not an input of the model; "
                f"its inputs are {', '.join(repr(n) for n in inputs) or 'none'}"
            )
        if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ModelError(f"{path}: input shape for {name!r} must be positive integers, got {list(dims)}")
    if default_dim < 1:
        raise ModelError(f"{path}: the default for dynamic dimensions must be at least 1, got {default_dim}")
    pinned: dict[str, str] = {}
    symbols: dict[str, int] = {}  # dim_param -> its value, so the same name elsewhere gets it too
    for name, info in inputs.items():
        if not info.type.HasField("tensor_type"):
            continue
        given = input_shapes.get(name)
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            if given is None:
                notes.append(f"input {name!r} declares no shape; give one to profile what depends on it")
                continue
            tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in given)
        dims = tensor_type.shape.dim
        if given is not None and len(given) != len(dims):
            raise ModelError(
                f"{path}: input {name!r} has {len(dims)} dimensions, the input shape given has {len(given)}"
            )
        for index, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                if given is not None and given[index] != dim.dim_value:
                    raise ModelError(
                        f"{path}: input {name!r} dimension {index} is fixed at {dim.dim_value} in the model, "
                        f"the input shape given says {given[index]}"
                    )
                continue
            value = given[index] if given is not None else default_dim
            pinned[f"{name}:{index}"] = f"{value} ({'from config' if given is not None else 'default'})"
            if dim.dim_param:
                symbols.setdefault(dim.dim_param, value)
            dim.dim_value = value  # a oneof with dim_param: this clears the symbol
    for info in (*graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            for dim in info.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in symbols:
                    dim.dim_value = symbols[dim.dim_param]
    return pinned


def topological_order(path: Path, graph: onnx.GraphProto, constants: Collection[str]) -> list[onnx.NodeProto]:
    """Nodes in execution order: the file's order when valid (ONNX requires it), else a stable sort."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            producer.setdefault(out, index)
    given = {i.name for i in graph.input} | set(constants) | {""}
    seen = set(given)
    for node in nodes:
        if any(name not in seen and name in producer for name in node.input):
            break
        seen.update(node.output)
    else:
        return nodes
    # Kahn's algorithm, smallest file position first, so the order stays close to the file's
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for dep in {producer[n] for n in node.input if n in producer and n not in given}:
            users[dep].append(index)
            waiting[index] += 1
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i])
        raise ModelError(f"{path}: the graph has a cycle through node {stuck.name or stuck.op_type!r}; re-export it")
    return order


def foldable(node: onnx.NodeProto, constants: Container[str]) -> bool:
    """True for nodes a runtime computes once at load time: Constant, or known ops of constants only."""
    if node.domain not in _FOLDED_DOMAINS or node.op_type in _NOT_FOLDED:
        return False
    if node.op_type == "Constant":
        return True
    inputs = [name for name in node.input if name]
    subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
    return bool(inputs) and not subgraphs and all(name in constants for name in inputs)


def constant_size(node: onnx.NodeProto) -> tuple[int, int]:
    """(elements, bytes) a Constant node stores."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_elements(attr.t), tensor_nbytes(attr.t)
        if attr.name == "sparse_value":
            values, indices = attr.sparse_tensor.values, attr.sparse_tensor.indices
            return tensor_elements(values) + tensor_elements(indices), tensor_nbytes(values) + tensor_nbytes(indices)
        if attr.name in ("value_float", "value_int", "value_string"):
            return 1, {"value_float": 4, "value_int": 8}.get(attr.name, len(attr.s))
        if attr.name == "value_floats":
            return len(attr.floats), 4 * len(attr.floats)
        if attr.name == "value_ints":
            return len(attr.ints), 8 * len(attr.ints)
        if attr.name == "value_strings":
            return len(attr.strings), sum(len(s) for s in attr.strings)
    return 0, 0
