"""The plan as a picture (SVG): layers along the graph, coloured by accelerator, sized by predicted time.

Three rows a person reads top to bottom: the segments (accelerator, layer range, predicted ms), the
layers themselves (one bar per layer, its width its predicted time on its accelerator, its height
its share of the MACs), and the plan against each single-accelerator placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from agent.models.ir import ModelProfile
from agent.planner.plan import Plan

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_WIDTH = 1200
_MARGIN = 20
_MIN_BAR = 1.0  # px: a layer too fast to see still shows


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def render_svg(plan: Plan, profile: ModelProfile, layer_ms: Sequence[float]) -> str:
    """SVG text; ``layer_ms[i]`` is layer i's predicted time on the accelerator the plan gives it."""
    if len(layer_ms) != len(profile.layers):
        raise ValueError(f"{len(layer_ms)} layer times for {len(profile.layers)} layers")
    names = list(dict.fromkeys([*plan.accelerators, *plan.single]))
    colour = _colours(names)
    inner = _WIDTH - 2 * _MARGIN
    total_ms = sum(layer_ms) or 1.0
    scale = inner / total_ms
    max_macs = max((layer.macs for layer in profile.layers), default=0) or 1
    out: list[str] = []
    title = (
        f"{profile.path.rsplit('/', 1)[-1]}: {len(profile.layers)} layers, {profile.total_macs / 1e6:,.1f}M MACs, "
        f"plan {plan.predicted_ms:.2f} ms predicted ({plan.objective})"
    )
    out.append(f'<text x="{_MARGIN}" y="24" font-size="16" font-weight="bold">{escape(title)}</text>')

    # row 1: segments
    x = float(_MARGIN)
    seg_y, layer_y, layer_h = 40, 110, 80
    for seg in plan.segments:
        width = max(sum(layer_ms[seg.start : seg.stop]) * scale, _MIN_BAR)
        fill = colour[seg.accelerator]
        label = f"{seg.accelerator} · layers {seg.start}-{seg.stop - 1} · {seg.predicted_ms:.2f} ms"
        if seg.transfer_ms:
            label += f" (+{seg.transfer_ms:.2f} ms transfer)"
        out.append(
            f'<rect x="{x:.1f}" y="{seg_y}" width="{width:.1f}" height="24" fill="{fill}" opacity="0.85">'
            f"<title>{escape(label)}</title></rect>"
        )
        if width > 120:
            out.append(f'<text x="{x + 4:.1f}" y="{seg_y + 16}" font-size="11" fill="white">{escape(label)}</text>')
        x += width

    # row 2: one bar per layer, width = predicted time, height = share of the largest layer's MACs
    x = float(_MARGIN)
    owner = {i: seg.accelerator for seg in plan.segments for i in seg.layers}
    for layer, ms in zip(profile.layers, layer_ms, strict=True):
        width = max(ms * scale, _MIN_BAR)
        height = max(layer_h * layer.macs / max_macs, 3.0)
        tip = (
            f"#{layer.index} {layer.name} · {layer.op} ({layer.family.value}) · {ms:.3f} ms on "
            f"{owner.get(layer.index, '?')} · {layer.macs / 1e6:.2f}M MACs · {layer.param_bytes / 1e3:.1f} KB params"
        )
        out.append(
            f'<rect x="{x:.1f}" y="{layer_y + layer_h - height:.1f}" width="{width:.2f}" height="{height:.1f}" '
            f'fill="{colour.get(owner.get(layer.index, ""), "#999")}" stroke="white" stroke-width="0.3">'
            f"<title>{escape(tip)}</title></rect>"
        )
        x += width
    out.append(
        f'<text x="{_MARGIN}" y="{layer_y + layer_h + 16}" font-size="11" fill="#555">'
        "each bar is a layer: width = predicted time, height = MACs (hover for details)</text>"
    )

    # row 3: plan vs every single accelerator
    bar_y = layer_y + layer_h + 40
    rows: list[tuple[str, float | None, str | None]] = [("plan", plan.predicted_ms, None)]
    rows += [(name, ms, name) for name, ms in plan.single.items()]
    longest = max((t for _, t, _ in rows if t is not None), default=1.0) or 1.0
    for i, (name, total, acc) in enumerate(rows):
        y = bar_y + i * 22
        out.append(f'<text x="{_MARGIN}" y="{y + 13}" font-size="12">{escape(name)}</text>')
        if total is None:
            out.append(
                f'<text x="{_MARGIN + 170}" y="{y + 13}" font-size="12" fill="#888">cannot run the whole model</text>'
            )
            continue
        width = max((inner - 260) * total / longest, _MIN_BAR)
        fill = colour.get(acc, "#333") if acc else "url(#planfill)"
        out.append(f'<rect x="{_MARGIN + 170}" y="{y}" width="{width:.1f}" height="16" fill="{fill}"/>')
        out.append(f'<text x="{_MARGIN + 176 + width:.1f}" y="{y + 13}" font-size="12">{total:.2f} ms</text>')

    # legend and reasons
    y = bar_y + len(rows) * 22 + 20
    for i, name in enumerate(names):
        out.append(f'<rect x="{_MARGIN + i * 180}" y="{y}" width="12" height="12" fill="{colour[name]}"/>')
        out.append(f'<text x="{_MARGIN + i * 180 + 16}" y="{y + 11}" font-size="12">{escape(name)}</text>')
    for j, reason in enumerate(plan.reasons):
        out.append(f'<text x="{_MARGIN}" y="{y + 34 + j * 16}" font-size="12" fill="#333">• {escape(reason)}</text>')
    height = y + 40 + len(plan.reasons) * 16
    stops = "".join(
        f'<stop offset="{k / max(len(plan.accelerators) - 1, 1):.2f}" stop-color="{colour[a]}"/>'
        for k, a in enumerate(plan.accelerators)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="sans-serif" viewBox="0 0 {_WIDTH} {height}">'
        f'<defs><linearGradient id="planfill">{stops}</linearGradient></defs>'
        f'<rect width="100%" height="100%" fill="white"/>' + "".join(out) + "</svg>\n"
    )
