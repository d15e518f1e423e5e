"""Why a plan looks the way it does, in sentences a person reads (the plan's ``reasons``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.planner.cost import CostTable, streaming_ms
from agent.planner.dp import Span, objective_ms, to_segments
from agent.planner.plan import Objective, Segment


def explain(table: CostTable, spans: Sequence[Span], segments: Sequence[Segment], objective: Objective) -> list[str]:
    """One sentence per segment (why there) and per cut (what it costs, what it saves)."""
    reasons = []
    for (start, stop, a), segment in zip(spans, segments, strict=True):
        where = f"{_range(start, stop)} ({_families(table, start, stop)}) on {table.names[a]}"
        text = f"{where}: {segment.predicted_ms:.3f} ms"
        others = [(table.segment_ms(start, stop, b), table.names[b]) for b in range(table.size) if b != a]
        runnable = [(ms, name) for ms, name in others if ms < float("inf")]
        if runnable:
            ms, name = min(runnable)
            text += f" vs {ms:.3f} ms on {name}"
        elif others:
            text += " (no other accelerator runs them all)"
        params = float(table.param_prefix[stop] - table.param_prefix[start])
        chip = table.caps[a].on_chip_memory_bytes
        if chip is not None and params > chip:
            text += (
                f"; its {_bytes(params)} of parameters exceed the {_bytes(chip)} on chip, "
                f"so {_bytes(params - chip)} stream over the link on every call "
                f"(+{streaming_ms(params, table.caps[a]):.3f} ms)"
            )
        reasons.append(text)
    total = objective_ms(segments, objective)
    for i in range(1, len(spans)):
        start = spans[i][0]
        moved = float(table.boundary_bytes[start])
        text = f"split at layer {start}: moving {_bytes(moved)} costs {segments[i].transfer_ms:.3f} ms"
        merged = []
        for a in (spans[i - 1][2], spans[i][2]):
            joined = _normalise([*spans[: i - 1], (spans[i - 1][0], spans[i][1], a), *spans[i + 1 :]])
            if all(table.lo[stop, b] <= begin for begin, stop, b in joined):
                merged.append(objective_ms(to_segments(table, joined), objective))
        if merged:
            text += f", saves {min(merged) - total:.3f} ms"
        else:
            text += f"; needed: neither {table.names[spans[i - 1][2]]} nor {table.names[spans[i][2]]} runs both sides"
        reasons.append(text)
    if objective == "throughput" and len(segments) > 1:
        latency = objective_ms(segments, "latency")
        reasons.append(
            f"pipelined in {len(segments)} stages: the busiest accelerator takes {total:.3f} ms per frame "
            f"({1e3 / total:.0f} frames/s at most); one frame takes {latency:.3f} ms end to end"
        )
    return reasons


def compare_single(table: CostTable, single: Mapping[str, float | None], predicted: float) -> list[str]:
    reasons = []
    for name in table.names:
        ms = single.get(name)
        if ms is None:
            i = next(j for j in range(table.n) if table.reason(j, name) is not None)
            layer = table.profile.layers[i]
            reasons.append(f"{name} alone: cannot run layer {i} {layer.name!r} ({layer.op}): {table.reason(i, name)}")
        elif ms <= predicted * (1 + 1e-9):
            reasons.append(f"{name} alone: {ms:.3f} ms (the plan)")
        else:
            reasons.append(f"{name} alone: {ms:.3f} ms (plan is {ms / predicted:.2f}x faster)")
    return reasons


def _normalise(spans: Sequence[Span]) -> list[Span]:
    """Merge neighbouring spans on the same accelerator."""
    out: list[Span] = []
    for start, stop, a in spans:
        if out and out[-1][2] == a:
            out[-1] = (out[-1][0], stop, a)
        else:
            out.append((start, stop, a))
    return out


def _families(table: CostTable, start: int, stop: int) -> str:
    layers = table.profile.layers[start:stop]
    macs: dict[str, int] = {}
    for layer in layers:
        macs[layer.family.value] = macs.get(layer.family.value, 0) + layer.macs
    total = sum(macs.values())
    if not total:
        counts = {f: sum(1 for layer in layers if layer.family.value == f) for f in macs}
        return f"{max(counts, key=lambda f: counts[f])}, no MACs"
    family = max(macs, key=lambda f: macs[f])
    return f"{family} {macs[family] / total:.0%} of MACs"


def _range(start: int, stop: int) -> str:
    return f"layer {start}" if stop - start == 1 else f"layers {start}-{stop - 1}"


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
