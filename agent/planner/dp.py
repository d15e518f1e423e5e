"""The latency search and what every search shares (see ``agent.planner.search`` for the objectives).

A placement is a list of spans ``(start, stop, accelerator index)`` covering the layers in order;
two neighbouring spans never share an accelerator (one call would run both, minus a dispatch).
The model's inputs start on the host and its outputs end there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agent.planner.cost import CostTable
from agent.planner.plan import Objective, Segment

Span = tuple[int, int, int]  # (start, stop, accelerator index)


def latency_spans(table: CostTable, split_penalty_ms: float = 0.0) -> list[Span]:
    """Exact dynamic programme; O(n² x A + n x A²) with vector operations over the start of a segment.

    ``best[k, a]``: the cheapest way to run layers [0, k) with the last segment on ``a``, its incoming
    transfer included. ``entry[j, a]``: the cheapest way to stand at boundary ``j`` ready to start a
    segment on ``a`` (the previous segment on another accelerator, plus the transfer, plus
    ``split_penalty_ms``: a cost the model does not see, so that a split must gain at least that much).
    Raises ValueError when some layer runs on no accelerator.
    """
    n, size = table.n, table.size
    best = np.full((n + 1, size), math.inf)
    start = np.zeros((n + 1, size), dtype=np.int64)
    entry = np.full((n + 1, size), math.inf)
    came_from = np.full((n + 1, size), -1, dtype=np.int64)  # accelerator of the previous segment, -1: host
    entry[0] = [table.transfer_ms(0, None, a) for a in range(size)]
    for k in range(1, n + 1):
        for a in range(size):
            lo = int(table.lo[k, a])
            if lo < k:
                totals = entry[lo:k, a] + table.segments_ending(k, a)
                i = int(np.argmin(totals))
                best[k, a], start[k, a] = totals[i], lo + i
        if k < n:
            for a in range(size):
                for b in range(size):
                    if b != a and best[k, b] < math.inf:
                        total = best[k, b] + table.transfer_ms(k, b, a) + split_penalty_ms
                        if total < entry[k, a]:
                            entry[k, a], came_from[k, a] = total, b
    finals = [best[n, a] + table.transfer_ms(n, a, None) for a in range(size)]
    a = int(np.argmin(finals))
    if not math.isfinite(finals[a]):
        raise ValueError("some layer runs on none of the accelerators")
    spans: list[Span] = []
    k = n
    while k > 0:
        j = int(start[k, a])
        spans.append((j, k, a))
        k, a = j, int(came_from[j, a])
    return spans[::-1]


def to_segments(table: CostTable, spans: Sequence[Span]) -> list[Segment]:
    """Segments with their predicted costs and the tensors they exchange."""
    segments = []
    for i, (start, stop, a) in enumerate(spans):
        prev = spans[i - 1][2] if i else None
        segments.append(
            Segment(
                accelerator=table.names[a],
                start=start,
                stop=stop,
                predicted_ms=table.segment_ms(start, stop, a),
                transfer_ms=table.transfer_ms(start, prev, a),
                return_ms=table.transfer_ms(stop, a, None) if stop == table.n else 0.0,
                inputs=table.tensors_in(start, stop),
                outputs=table.tensors_out(start, stop),
            )
        )
    return segments


def objective_ms(segments: Sequence[Segment], objective: Objective) -> float:
    """Latency: everything in sequence. Throughput: the busiest accelerator's time per frame."""
    stages = [(s.accelerator, s.predicted_ms + s.transfer_ms + s.return_ms) for s in segments]
    if objective == "latency":
        return sum(ms for _, ms in stages)
    loads: dict[str, float] = {}
    for name, ms in stages:
        loads[name] = loads.get(name, 0.0) + ms
    return max(loads.values())


def stage_loads(table: CostTable, spans: Sequence[Span]) -> dict[int, float]:
    """Accelerator index -> the time its stages take per frame (segments, transfers in, the return)."""
    loads: dict[int, float] = {}
    for i, (start, stop, a) in enumerate(spans):
        ms = table.segment_ms(start, stop, a) + table.transfer_ms(start, spans[i - 1][2] if i else None, a)
        ms += table.transfer_ms(stop, a, None) if stop == table.n else 0.0
        loads[a] = loads.get(a, 0.0) + ms
    return loads
