"""Runtime node times mapped back onto a model's profiled layers.

A runtime reports times for the graph it executes, which after optimisation is not the model's:

- names: a node keeps its model name (ONNX: ``Layer.name`` is the node name), or one the runtime's
  front end derived from it, like OpenVINO's ``conv_3/WithoutBiases``, or its output tensor's name.
  A name resolves to a layer by exact name, then by output tensor, then with ``/suffix`` parts cut off.
- fusion: several layers run as one node. OpenVINO lists them (``LayerTimes.fused``); onnxruntime
  names the fused node after one of them (after the activation for Conv+Clip, after the Conv for
  Conv+Add), so the layers no node names are attached to a neighbour in the dataflow: first one whose
  node ran an op it does not have itself but the unnamed layer has (a "Clip" node that ran a "Conv"
  swallowed the neighbouring Conv), else the nearest in execution order, producers before consumers.
- a fused node's time goes to the layers that do its arithmetic, not to the one it is named after: an
  activation or addition fused into a convolution runs on values still in registers and costs next to
  nothing, so the MAC layers of a group share its time in proportion to their estimates and the others
  get 0 (a group without MAC layers shares by the estimates of all). A cut between a Conv and its
  Clip then leaves the Conv's time with the Conv.
- nodes the runtime added (layout reorders) resolve to no layer: their time is ``unattributed``, part
  of the per-run overhead the caller spreads over the layers.

Layers that end up with no node at all get None: the cost model estimates them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from accelerators.base import MAC_FAMILIES
from accelerators.layer_timing import LayerTimes
from agent.models.ir import ModelProfile


@dataclass(frozen=True)
class Mapped:
    layer_ms: tuple[float | None, ...]  # per profile layer; None: no runtime node covers it
    unattributed_ms: float  # time of runtime nodes that resolve to no layer
    nodes: int  # runtime nodes that resolved to a layer


class _Resolver:
    def __init__(self, profile: ModelProfile) -> None:
        self.by_name = {layer.name: layer.index for layer in profile.layers}
        self.by_output = {t: layer.index for layer in profile.layers for t in layer.outputs}

    def __call__(self, name: str) -> int | None:
        while name:
            for table in (self.by_name, self.by_output):
                if name in table:
                    return table[name]
            name = name.rpartition("/")[0]  # "conv_3/WithoutBiases" -> "conv_3"
        return None


def map_times(profile: ModelProfile, times: LayerTimes, weights: Sequence[float]) -> Mapped:
    """Each layer's ms per run from ``times``; ``weights`` (estimated ms per layer) share fused nodes."""
    resolve = _Resolver(profile)
    groups: list[tuple[list[int], float]] = []  # (member layers, ms of the node that ran them)
    named: dict[int, str] = {}  # layer -> the runtime op of the node named after it
    unattributed, resolved = 0.0, 0
    for node, ms in times.node_ms.items():
        head = resolve(node)
        members = [i for i in (resolve(n) for n in times.fused.get(node, ())) if i is not None]
        members = list(dict.fromkeys([*([head] if head is not None else []), *members]))
        if not members:
            unattributed += ms
            continue
        resolved += 1
        if head is not None and node in times.node_ops:
            named.setdefault(head, times.node_ops[node])
        groups.append((members, ms))
    _attach_unnamed(profile, groups, named)
    total: dict[int, float] = {}
    for members, ms in groups:
        arithmetic = [i for i in members if profile.layers[i].family in MAC_FAMILIES and profile.layers[i].macs]
        shares = [_weight(weights[i]) if i in arithmetic or not arithmetic else 0.0 for i in members]
        whole = sum(shares)
        for i, share in zip(members, shares, strict=True):
            total[i] = total.get(i, 0.0) + ms * (share / whole if whole > 0 else 1 / len(members))
    layer_ms = tuple(total.get(i) for i in range(len(profile.layers)))
    return Mapped(layer_ms, unattributed, resolved)


def _weight(estimate: float) -> float:
    return estimate if 0 < estimate < math.inf else 0.0


def _attach_unnamed(profile: ModelProfile, groups: list[tuple[list[int], float]], named: dict[int, str]) -> None:
    """Add every layer no node covers to the group of a dataflow neighbour (see the module docstring)."""
    layers = profile.layers
    group_of: dict[int, int] = {}  # layer -> the group it is charged in (the costliest holding it)
    for g, (members, ms) in enumerate(groups):
        for i in members:
            if i not in group_of or groups[group_of[i]][1] < ms:
                group_of[i] = g
    if not group_of:
        return  # nothing timed (a whole-model measurement): no neighbour to attach to
    producer = {t: layer.index for layer in layers for t in layer.outputs}
    consumers: dict[str, list[int]] = {}
    for layer in layers:
        for t in layer.inputs:
            consumers.setdefault(t, []).append(layer.index)

    def neighbours(i: int) -> tuple[list[int], list[int]]:
        before = [producer[t] for t in layers[i].inputs if t in producer]
        after = [j for t in layers[i].outputs for j in consumers.get(t, ())]
        return before, after

    # First the op rule, on layers named after a node that ran another op (each swallows one layer).
    swallowed: set[int] = set()
    for layer in layers:
        if layer.index in group_of:
            continue
        before, after = neighbours(layer.index)
        hosts = [
            j
            for j in sorted({*before, *after}, key=lambda j: abs(j - layer.index))
            if j in named and j not in swallowed and named[j] != layers[j].op and named[j] == layer.op
        ]
        if hosts:
            swallowed.add(hosts[0])
            _join(groups, group_of, layer.index, hosts[0])
    # Then the nearest neighbour, round after round, so chains of unnamed layers reach a host.
    changed = True
    while changed:
        changed = False
        for layer in layers:
            if layer.index in group_of:
                continue
            before, after = neighbours(layer.index)
            hosts = [j for j in before if j in group_of] + [j for j in after if j in group_of]
            if hosts:  # stable sort: at equal distance a producer comes first
                _join(groups, group_of, layer.index, min(hosts, key=lambda j: abs(j - layer.index)))
                changed = True


def _join(groups: list[tuple[list[int], float]], group_of: dict[int, int], layer: int, host: int) -> None:
    g = group_of[host]
    groups[g][0].append(layer)
    group_of[layer] = g
