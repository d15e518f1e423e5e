"""Graph plumbing for ``split``: layers back to nodes, constant closures, boundary tensors and their types."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from accelerators.onnx_file import SMALL_EXTERNAL_BYTES, load_onnx_checked, tensor_nbytes
from agent.errors import ModelError
from agent.models.ir import Layer, ModelProfile
from agent.models.onnx_graph import pin_inputs, topological_order

_BULK_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


@dataclass(frozen=True)
class Cut:
    """One segment's share of the graph."""

    nodes: tuple[int, ...]  # positions in the graph's execution order: its layers and the constant nodes they read
    initializers: tuple[str, ...]
    inputs: tuple[str, ...]  # activations read, produced before it (or model inputs)
    outputs: tuple[str, ...]  # activations produced, read after it (or model outputs)
    internal: tuple[str, ...]  # activations produced and only read inside it


class Graph:
    """A model's nodes in execution order, each either one profile layer or a constant-only node."""

    def __init__(self, path: Path, graph: onnx.GraphProto, layers: Sequence[Layer]) -> None:
        self.path = path
        self.dense = {t.name: t for t in graph.initializer}
        self.sparse = {s.values.name: s for s in graph.sparse_initializer}
        self.order = topological_order(path, graph, {*self.dense, *self.sparse})
        self.producer = {out: i for i, node in enumerate(self.order) for out in node.output if out}
        self.layer_nodes: list[int] = []
        for layer in layers:
            at = self.producer.get(layer.outputs[0]) if layer.outputs else None
            if at is None or (self.layer_nodes and at <= self.layer_nodes[-1]):
                raise ModelError(f"{path}: layer {layer.index} ({layer.name!r}) matches no node in order; the "
                                 "profile is not of this model: profile and plan it again")  # fmt: skip
            self.layer_nodes.append(at)
        # Every other node must compute from constants only, as the profiler decided when it folded it.
        self.constants: set[str] = {*self.dense, *self.sparse}
        is_layer = set(self.layer_nodes)
        for i, node in enumerate(self.order):
            if i in is_layer:
                continue
            loose = [n for n in reads(node) if n not in self.constants]
            if loose:
                raise ModelError(f"{path}: node {node.name or node.op_type!r} reads activation {loose[0]!r} but "
                                 "is no layer of the profile; profile and plan the model again")  # fmt: skip
            self.constants.update(n for n in node.output if n)

    def cut(self, ranges: Sequence[range], graph_inputs: Sequence[str], graph_outputs: Sequence[str]) -> list[Cut]:
        """Each range of layers as a Cut; ModelError if a segment would read what only a later one makes."""
        wanted = set(graph_outputs)
        groups = [[self.layer_nodes[j] for j in r] for r in ranges]
        # A model output that is a folded constant is produced by the last segment, with its chain.
        groups[-1] += [self.producer[o] for o in graph_outputs if o in self.constants and o in self.producer]
        made_by: dict[str, int] = {}
        produced: list[list[str]] = []
        read: list[list[str]] = []
        closures: list[tuple[set[int], set[str]]] = []
        for index, group in enumerate(groups):
            outs = [o for i in group for o in self.order[i].output if o and o not in self.constants]
            made_by.update(dict.fromkeys(outs, index))
            names = [n for i in group for n in reads(self.order[i])]
            closures.append(self._constant_closure(names))
            produced.append(outs)
            inside = set(outs)
            read.append(list(dict.fromkeys(n for n in names if n not in self.constants and n not in inside)))
        for index, names in enumerate(read):
            for name in names:
                maker = made_by.get(name)
                if maker is None and name not in graph_inputs:
                    raise ModelError(f"{self.path}: tensor {name!r} is read but nothing produces it")
                if maker is not None and maker > index:
                    raise ModelError(
                        f"{self.path}: segment {index} reads {name!r}, made by the later segment {maker}: "
                        "the plan's layer order does not fit this model; plan it again"
                    )
        cuts: list[Cut] = []
        later: set[str] = set()
        for index in reversed(range(len(groups))):
            outputs = [n for n in produced[index] if n in later or n in wanted]
            if not outputs and produced[index]:  # dead-end layers: a file needs an output, the executor drops it
                outputs = produced[index][-1:]
            const_nodes, inits = closures[index]
            cuts.append(
                Cut(
                    nodes=tuple(sorted({*groups[index], *const_nodes})),
                    initializers=tuple(sorted(inits)),
                    inputs=tuple(read[index]),
                    outputs=tuple(outputs),
                    internal=tuple(n for n in produced[index] if n not in set(outputs)),
                )
            )
            later.update(read[index])
        return cuts[::-1]

    def _constant_closure(self, names: Iterable[str]) -> tuple[set[int], set[str]]:
        """The constant-only nodes and initializers that the constants among ``names`` are computed from."""
        nodes: set[int] = set()
        inits: set[str] = set()
        stack = [n for n in names if n in self.constants]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.dense or name in self.sparse:
                inits.add(name)
            elif name in self.producer:
                nodes.add(self.producer[name])
                stack.extend(n for n in reads(self.order[self.producer[name]]) if n in self.constants)
        return nodes, inits

    def parts(self, cut: Cut) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[onnx.SparseTensorProto]]:
        dense = [self.dense[n] for n in cut.initializers if n in self.dense]
        sparse = [self.sparse[n] for n in cut.initializers if n in self.sparse and n not in self.dense]
        return [self.order[i] for i in cut.nodes], dense, sparse


def reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs, and names its subgraphs take from the enclosing scope."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            defined = {i.name for i in body.input} | {t.name for t in body.initializer}
            defined |= {s.values.name for s in body.sparse_initializer}
            defined |= {o for n in body.node for o in n.output}
            names += [n for inner in body.node for n in reads(inner) if n not in defined]
    return list(dict.fromkeys(names))


def infer_types(path: Path, profile: ModelProfile) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's type after shape inference, dynamic inputs pinned to the profile's shapes."""
    model = load_onnx_checked(path, external="small")
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    shapes = {t.name: t.shape for t in profile.inputs if t.shape and all(t.shape)}
    pin_inputs(path, graph, constants, shapes, 1, [])
    for tensor in [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.HasField("t"))]:
        # Shape inference reads only small constants (shapes, axes); copying big weights to it costs time.
        if tensor.data_type != onnx.TensorProto.STRING and tensor_nbytes(tensor) > SMALL_EXTERNAL_BYTES:
            for field in _BULK_FIELDS:
                tensor.ClearField(field)
    # onnx raises several types; what the file declares is still usable, and value_info() checks each boundary
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    types: dict[str, onnx.ValueInfoProto] = {}
    for info in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if info.name not in types or _richer(info, types[info.name]):
            types[info.name] = info
    return types


def _richer(new: onnx.ValueInfoProto, old: onnx.ValueInfoProto) -> bool:
    """True when ``new`` knows more dimensions than ``old`` (declared outputs often carry no shape)."""

    def known(info: onnx.ValueInfoProto) -> int:
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
            return -1
        return sum(1 for d in tensor.shape.dim if d.HasField("dim_value"))

    return known(new) > known(old)


def value_info(path: Path, types: dict[str, onnx.ValueInfoProto], name: str, role: str) -> onnx.ValueInfoProto:
    """A copy of ``name``'s type for a segment's ``role`` ("input"/"output"); ModelError if unknown."""
    info = types.get(name)
    if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.elem_type:
        raise ModelError(f"{path}: cannot make tensor {name!r} a segment {role}: shape inference could not tell "
                         "its dtype; plan the model so it does not cut there")  # fmt: skip
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    return copy
