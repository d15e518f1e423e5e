"""The throughput search: pipeline stages whose busiest accelerator is as fast as possible.

The objective, ``max over accelerators of the sum of their stages``, does not decompose: a later
stage may land on an accelerator an earlier one already loads. So the programme keeps, for each
(boundary, accelerator), every partial pipeline whose load vector (load per accelerator, stages
used) no other one beats in every coordinate: a Pareto set. That is exact.

What it guarantees: the optimum under the cost model when the model has at most ``CANDIDATES``
layers and no Pareto set outgrew ``frontier`` (``exact`` says so). Bigger models cut only at
candidate boundaries (every boundary where some accelerator's ability to run the layers changes,
and the cheapest boundary to cut in each of equal slices of the work), then each cut moves to its
best position between its neighbours. Always: never slower than any single accelerator that runs
the whole model, nor than the latency plan (when within ``stages_max``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from agent.planner.cost import CostTable
from agent.planner.dp import Span, latency_spans, stage_loads

Frontier = tuple[np.ndarray, np.ndarray]  # loads (m, A + 1): per accelerator, then stages; back (m, 3): j, b, row
FRONTIER = 32  # partial pipelines kept per (boundary, accelerator)
CANDIDATES = 64  # boundaries a big model may be cut at


def throughput_spans(table: CostTable, stages_max: int | None = 4, frontier: int = FRONTIER) -> tuple[list[Span], bool]:
    """(spans, exact): the pipeline of at most ``stages_max`` stages with the smallest bottleneck."""
    n, size = table.n, table.size
    limit = n if stages_max is None else max(1, stages_max)
    seeds = [[(0, n, a)] for a in range(size) if table.lo[n, a] == 0]
    seeds.append(latency_spans(table))
    best = min(((_bottleneck(table, s), len(s), s) for s in seeds if len(s) <= limit), default=(math.inf, 0, seeds[-1]))
    cuts = list(range(n + 1)) if n <= CANDIDATES else _candidate_cuts(table, CANDIDATES)
    spans, exact = _pipelines(table, cuts, limit, frontier, best[0])
    if spans and len(cuts) <= n:
        spans, exact = _refine(table, spans), False
    if not spans or _bottleneck(table, spans) > best[0]:  # the frontier limit dropped the seed's path
        return best[2], exact
    return spans, exact


def _bottleneck(table: CostTable, spans: list[Span]) -> float:
    return max(stage_loads(table, spans).values())


def _pipelines(table: CostTable, cuts: list[int], limit: int, frontier: int, bound: float) -> tuple[list[Span], bool]:
    """The Pareto-set programme over segments that start and stop at ``cuts`` (sorted, from 0 to n);
    no spans when nothing within ``limit`` stages reaches ``bound``."""
    n, size = table.n, table.size
    ceiling = bound * (1 + 1e-9)
    # rest[k]: the least work layers [k, n) add to the accelerators' total, each on its fastest one
    rest = np.concatenate([np.cumsum(np.min(table.ms, axis=1)[::-1])[::-1], [0.0]])
    exact = True
    frontiers: dict[int, list[Frontier]] = {}  # boundary k -> per accelerator a
    # Partial pipelines at a cut ready to start a stage on a: rows offsets[a][c] to offsets[a][c + 1]
    # of bank[a] stand at cuts[c], so the partial pipelines of a range of cuts are one slice.
    rows_max = len(cuts) * frontier
    bank = [(np.zeros((rows_max, size + 1)), np.zeros((rows_max, 3), dtype=np.int64)) for _ in range(size)]
    offsets = [[0, 1] for _ in range(size)]
    for a in range(size):
        bank[a][0][0, a] = table.transfer_ms(0, None, a)
        bank[a][1][0] = (0, -1, 0)
    for c, k in enumerate(cuts[1:], start=1):
        frontiers[k] = []
        for a in range(size):
            lo = int(table.lo[k, a])
            first_cut = int(np.searchsorted(cuts, lo))
            loads = bank[a][0][offsets[a][first_cut] : offsets[a][c]].copy()
            back = bank[a][1][offsets[a][first_cut] : offsets[a][c]]
            loads[:, a] += table.segments_ending(k, a)[back[:, 0] - lo]
            loads[:, a] += table.transfer_ms(n, a, None) if k == n else 0.0
            loads[:, size] += 1
            rows, complete = _pareto(loads, frontier, limit, ceiling, float(rest[k]))
            exact &= complete
            frontiers[k].append((loads[rows], back[rows]))
        if k < n:
            for a in range(size):
                loads, back = _enter(table, frontiers[k], k, a)
                rows, complete = _pareto(loads, frontier, limit, ceiling, float(rest[k]))
                exact &= complete
                end = offsets[a][-1] + len(rows)
                bank[a][0][offsets[a][-1] : end], bank[a][1][offsets[a][-1] : end] = loads[rows], back[rows]
                offsets[a].append(end)
    finals = [
        (float(loads[r, :size].max()), float(loads[r, size]), a, r)
        for a in range(size)
        for loads in [frontiers[n][a][0]]
        for r in range(len(loads))
    ]
    if not finals:
        return [], exact
    # Among pipelines equally fast up to rounding, the one with the fewest stages.
    fastest = min(finals)[0] * (1 + 1e-9)
    _, _, a, r = min(finals, key=lambda t: (t[0] > fastest, t[1], t[0]))
    spans: list[Span] = []
    k = n
    while k > 0:
        j, b, prev = (int(v) for v in frontiers[k][a][1][r])
        spans.append((j, k, a))
        k, a, r = j, b, prev
    return spans[::-1], exact


def _enter(table: CostTable, here: list[Frontier], k: int, a: int) -> Frontier:
    """Partial pipelines that end at boundary k on another accelerator, moved on to start on a."""
    loads_parts, back_parts = [np.zeros((0, table.size + 1))], [np.zeros((0, 3), dtype=np.int64)]
    for b, (loads, _) in enumerate(here):
        if b != a and len(loads):
            moved = loads.copy()
            moved[:, a] += table.transfer_ms(k, b, a)
            loads_parts.append(moved)
            back_parts.append(np.column_stack([np.full(len(loads), k), np.full(len(loads), b), np.arange(len(loads))]))
    return np.concatenate(loads_parts), np.concatenate(back_parts)


def _pareto(points: np.ndarray, limit: int, stages: int, ceiling: float, rest: float) -> tuple[np.ndarray, bool]:
    """Rows of ``points`` worth keeping, and whether keeping at most ``limit`` provably lost none.

    Dropped: rows over ``stages`` stages; rows that cannot finish under ``ceiling`` (their busiest
    accelerator, or their total plus ``rest``, the least work still to come, spread evenly, exceeds
    it); rows another row beats in every column (and the second of equal rows). Of the others, the
    ``limit`` with the smallest such lower bound on their final bottleneck are kept.
    """
    size = points.shape[1] - 1
    loads = points[:, :size]
    total = loads.sum(axis=1)
    estimate = np.maximum(loads.max(axis=1), (total + rest) / size)
    alive = np.flatnonzero((points[:, size] <= stages) & (estimate <= ceiling))
    # A row that dominates another has no larger estimate and no larger total, so it sorts first: a
    # row needs checking only against the rows before it, and the rows kept so far stand for those.
    order = alive[np.lexsort((points[alive, size], total[alive], estimate[alive]))]
    kept = np.zeros(0, dtype=np.int64)
    step, begin = 4 * limit, 0
    while begin < len(order) and begin < 4 * step and len(kept) < limit:
        head = order[begin : begin + step]
        cand = points[head]
        le = (cand[:, None, :] <= cand[None, :, :]).all(axis=2)  # le[i, j]: row i <= row j everywhere
        beaten = (le & ~le.T).any(axis=0) | np.triu(le & le.T, 1).any(axis=0)
        if len(kept):
            beaten |= (points[kept][:, None, :] <= cand[None, :, :]).all(axis=2).any(axis=0)
        kept = np.concatenate([kept, head[~beaten]])
        begin += step
    return kept[:limit], begin >= len(order) and len(kept) <= limit


def _candidate_cuts(table: CostTable, count: int) -> list[int]:
    """Boundaries a big model may be cut at: 0 and n, every boundary where some accelerator's ability
    to run the layers changes (cutting around an unsupported op must stay possible), and in each of
    equal slices of the work, the boundary with the fewest bytes to move."""
    n = table.n
    runnable = np.isfinite(table.ms)  # (n, A)
    must = {0, n} | {k for k in range(1, n) if (runnable[k - 1] != runnable[k]).any()}
    work = np.concatenate([[0.0], np.cumsum(np.min(table.ms, axis=1))])  # (n + 1,) least work before k
    slices = max(count - len(must), 1)
    edges = np.searchsorted(work, np.linspace(0.0, work[-1], slices + 1))
    for lo, hi in itertools.pairwise(edges):
        inner = np.arange(max(int(lo), 1), min(int(hi) + 1, n))
        if len(inner):
            must.add(int(inner[np.argmin(table.boundary_bytes[inner])]))
    return sorted(must)


def _refine(table: CostTable, spans: list[Span]) -> list[Span]:
    """Move each cut to its best position between its neighbours, until no move helps."""
    best, score = list(spans), _bottleneck(table, spans)
    for _ in range(3):
        improved = False
        for i in range(1, len(best)):
            for k in range(best[i - 1][0] + 1, best[i][1]):
                trial = [
                    *best[: i - 1],
                    (best[i - 1][0], k, best[i - 1][2]),
                    (k, best[i][1], best[i][2]),
                    *best[i + 1 :],
                ]
                if all(table.lo[stop, a] <= start for start, stop, a in trial[i - 1 : i + 1]):
                    value = _bottleneck(table, trial)
                    if value < score:
                        best, score, improved = trial, value, True
        if not improved:
            break
    return best
