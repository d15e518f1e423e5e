"""The placement search: contiguous segments of the layer order, each on one accelerator.

A placement is a list of spans ``(start, stop, accelerator index)`` covering the layers in order;
two neighbouring spans never share an accelerator (one call would run both, minus a dispatch).
The model's inputs start on the host and its outputs end there.

- latency: the sum of every segment, every transfer at a cut, and the return of the outputs.
- throughput: segments are pipeline stages working on different frames at once, so the slowest
  accelerator sets the rate. A stage costs its segment plus its incoming transfer (the last also
  its outputs' return), and stages sharing an accelerator add up on it: the objective is
  ``max over accelerators of the sum of their stages``.

Splits cost real-world overhead the model does not see (another session's memory, thread hand-overs,
cold caches after the hand-over), so ``make_plan`` splits only for a clear predicted gain:

- the latency search charges ``split_penalty_ms`` per cut, so each cut must save at least that;
- a plan of several segments must beat the best single accelerator by ``min_gain`` (a fraction) and
  by ``min_gain_ms``, else that accelerator runs the whole model.

By construction the plan's predicted time never exceeds the best single accelerator's: each single
placement is a candidate of both searches, and the final choice falls back to it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence

from accelerators.base import MAC_FAMILIES, Capabilities
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.planner.cost import CostTable, dispatch_ms, streaming_ms, transfer_ms
from agent.planner.dp import Span, latency_spans, objective_ms, to_segments
from agent.planner.plan import Objective, Plan, Segment
from agent.planner.reasons import compare_single, explain
from agent.planner.stages import throughput_spans

__all__ = ["exhaustive", "make_plan", "objective_ms", "plan_latency", "plan_throughput", "to_segments"]

SPLIT_PENALTY_MS = 0.3  # a cut costs a session call, a copy and lost fusions (measured ~0.2-0.6 ms)
MIN_GAIN = 0.03
MIN_GAIN_MS = 0.05
MEASURED = "costs measured layer by layer on "  # the reason's opening, then the accelerators' names


def plan_latency(table: CostTable, split_penalty_ms: float = 0.0) -> list[Segment]:
    """The placement with the least end-to-end time (``split_penalty_ms`` charged per cut)."""
    return to_segments(table, latency_spans(table, split_penalty_ms))


def plan_throughput(table: CostTable, stages_max: int | None = 4) -> list[Segment]:
    """The pipeline with the fastest slowest accelerator, at most ``stages_max`` stages."""
    return to_segments(table, throughput_spans(table, stages_max)[0])


def exhaustive(table: CostTable, objective: Objective, stages_max: int | None = None) -> list[Segment]:
    """Try every assignment of layers to accelerators (A^n of them): the reference for small tests.

    Costs are summed layer by layer with the cost module's functions, independently of the table's
    prefix sums and of the dynamic programmes.
    """
    if table.size**table.n > 2_000_000:
        raise ValueError(f"{table.size}^{table.n} placements: too many to try them all")
    layers = table.profile.layers
    best: tuple[float, list[Span]] = (math.inf, [])
    for assignment in itertools.product(range(table.size), repeat=table.n):
        spans = _runs(assignment)
        if stages_max is not None and len(spans) > stages_max:
            continue
        loads: dict[int, float] = {}
        prev = None
        for start, stop, a in spans:
            caps = table.caps[a]
            ms = sum(float(table.ms[i, a]) for i in range(start, stop)) + dispatch_ms(caps)
            ms += streaming_ms(sum(layer.param_bytes for layer in layers[start:stop]), caps)
            ms += transfer_ms(float(table.boundary_bytes[start]), prev, caps)
            if stop == table.n:
                ms += transfer_ms(float(table.boundary_bytes[stop]), caps, None)
            loads[a] = loads.get(a, 0.0) + ms
            prev = caps
        total = sum(loads.values()) if objective == "latency" else max(loads.values())
        if total < best[0]:
            best = (total, spans)
    if not best[1]:
        raise ValueError("some layer runs on none of the accelerators")
    return to_segments(table, best[1])


def _runs(assignment: tuple[int, ...]) -> list[Span]:
    """Contiguous runs of one accelerator as spans: (0, 0, 1, 0) -> [(0, 2, 0), (2, 3, 1), (3, 4, 0)]."""
    spans: list[Span] = []
    start = 0
    for a, group in itertools.groupby(assignment):
        stop = start + len(list(group))
        spans.append((start, stop, a))
        start = stop
    return spans


def make_plan(
    profile: ModelProfile,
    capabilities: Mapping[str, Capabilities],
    objective: Objective = "latency",
    fingerprint: str = "",
    excluded: Mapping[str, str] | None = None,
    *,
    stages_max: int | None = 4,
    split_penalty_ms: float = SPLIT_PENALTY_MS,
    min_gain: float = MIN_GAIN,
    min_gain_ms: float = MIN_GAIN_MS,
    measured: Mapping[str, Sequence[float | None]] | None = None,
) -> Plan:
    """Place ``profile``'s layers on the accelerators. Raises ModelError when no placement exists.

    ``excluded`` names accelerators the caller already ruled out (and why); they are reported, not used.
    ``measured``: accelerator -> each layer's ms as timed on this device (None: not timed), used instead
    of the cost model's estimates (see ``agent.planner.measured``).
    """
    if not profile.layers:
        raise ModelError(f"{profile.path}: the model has no layers to place")
    out: dict[str, str] = dict(excluded or {})
    suffix = f".{profile.format}"
    usable = {name: caps for name, caps in capabilities.items() if name not in out}
    for name, caps in list(usable.items()):
        if suffix not in caps.formats:
            out[name] = f"it loads {', '.join(sorted(caps.formats)) or 'no'} models, not {suffix}"
            del usable[name]
    table = CostTable(profile, usable, measured)
    for a, name in enumerate(table.names):
        why = _useless(table, a)
        if why is not None:
            out[name] = why
            del usable[name]
    if len(usable) < table.size:
        table = CostTable(profile, usable, measured)
    _check_coverage(table, out)
    single = {name: None for name in capabilities} | {name: _single_ms(table, a) for a, name in enumerate(table.names)}
    if objective == "latency":
        spans, exact = latency_spans(table, split_penalty_ms), True
    else:
        spans, exact = throughput_spans(table, stages_max)
    reasons: list[str] = []
    segments = to_segments(table, spans)
    predicted = objective_ms(segments, objective)
    runnable = {name: ms for name, ms in single.items() if ms is not None}
    if runnable:
        best_name = min(runnable, key=lambda name: runnable[name])
        best_ms = runnable[best_name]
        gain = best_ms - predicted
        if len(segments) > 1 and gain < max(min_gain * best_ms, min_gain_ms):
            reasons.append(
                f"splitting would save only {max(gain, 0.0):.3f} ms ({max(gain, 0.0) / best_ms:.1%}), under the "
                f"{min_gain:.0%} / {min_gain_ms} ms a split must gain: {best_name} runs it all"
            )
            spans = [(0, table.n, table.index(best_name))]
            segments = to_segments(table, spans)
            predicted = objective_ms(segments, objective)
        assert predicted <= best_ms * (1 + 1e-9), (predicted, best_ms)
    reasons[:0] = explain(table, spans, segments, objective)
    if table.measured:
        reasons.append(MEASURED + ", ".join(table.measured))
    if not exact:
        reasons.append(
            f"on a model this size the pipeline search is a heuristic (candidate cuts, bounded Pareto sets): "
            f"{predicted:.3f} ms per frame is the best it found, not proven optimal"
        )
    reasons += [f"{name} excluded: {why}" for name, why in out.items()]
    reasons += compare_single(table, single, predicted)
    return Plan(
        model_path=profile.path,
        model_digest=profile.digest,
        fingerprint=fingerprint,
        objective=objective,
        segments=tuple(segments),
        predicted_ms=predicted,
        single=single,
        reasons=tuple(reasons),
        excluded=out,
        created_at=time.time(),
    )


def _single_ms(table: CostTable, a: int) -> float | None:
    if table.lo[table.n, a] > 0:
        return None
    return objective_ms(to_segments(table, [(0, table.n, a)]), "latency")


def _useless(table: CostTable, a: int) -> str | None:
    """Why accelerator ``a`` is no use for this model at all: it runs none of its MAC layers (or none)."""
    layers = table.profile.layers
    work = [i for i, layer in enumerate(layers) if layer.family in MAC_FAMILIES and layer.macs] or list(
        range(len(layers))
    )
    blocked = [i for i in work if table.reason(i, table.names[a]) is not None]
    if len(blocked) < len(work):
        return None
    first = layers[blocked[0]]
    why = str(table.reason(blocked[0], table.names[a]))
    if "variant of the model" in why:  # the usual case: a float model offered to an int8-only part
        return f"the model is {first.dtype}; {why.replace(f' and the layer is {first.dtype}', '')}"
    scope = "MAC layers" if any(layer.macs for layer in layers) else "layers"
    return f"it runs none of the model's {scope} (layer {blocked[0]}: {why})"


def _check_coverage(table: CostTable, excluded: Mapping[str, str]) -> None:
    if not table.size:
        detail = "; ".join(f"{name}: {why}" for name, why in excluded.items()) or "none was given"
        raise ModelError(f"{table.profile.path}: no accelerator can run this model ({detail})")
    for i, layer in enumerate(table.profile.layers):
        if all(table.lo[i + 1, a] > i for a in range(table.size)):
            why = "; ".join(f"{name}: {table.reason(i, name)}" for name in table.names)
            raise ModelError(
                f"{table.profile.path}: layer {i} {layer.name!r} ({layer.op}) runs on no accelerator ({why})"
            )
