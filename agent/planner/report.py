"""A plan in words and a table (``edge-agent plan``)."""

from __future__ import annotations

from agent.models.ir import ModelProfile
from agent.planner.plan import Plan


def format_plan(plan: Plan, profile: ModelProfile) -> str:
    lines = [
        f"{plan.model_path}: {len(profile.layers)} layers, {profile.total_macs / 1e6:,.1f}M MACs "
        f"-> {len(plan.segments)} segment(s), {plan.predicted_ms:.2f} ms predicted ({plan.objective})",
        "",
        f"{'#':>3}  {'accelerator':<22}{'layers':>12}{'MACs':>10}{'predicted':>12}{'transfer':>11}",
    ]
    for i, seg in enumerate(plan.segments):
        macs = sum(layer.macs for layer in profile.layers[seg.start : seg.stop])
        first, last = profile.layers[seg.start], profile.layers[seg.stop - 1]
        lines.append(
            f"{i:>3}  {seg.accelerator:<22}{f'{seg.start}-{seg.stop - 1}':>12}{macs / 1e6:>9.1f}M"
            f"{seg.predicted_ms:>10.2f}ms{seg.transfer_ms:>9.2f}ms   {first.op} … {last.op}"
        )
    lines += ["", "each accelerator alone:"]
    for name, ms in sorted(plan.single.items(), key=lambda kv: float("inf") if kv[1] is None else kv[1]):
        lines.append(f"  {name:<22}" + ("cannot run every layer" if ms is None else f"{ms:>8.2f} ms"))
    if plan.excluded:
        lines += ["", "not considered:"]
        lines += [f"  {name:<22}{why}" for name, why in plan.excluded.items()]
    if plan.reasons:
        lines += ["", "why:"]
        # exclusions are listed above already
        said = tuple(f"{name} excluded:" for name in plan.excluded)
        lines += [f"  - {reason}" for reason in plan.reasons if not reason.startswith(said)]
    return "\n".join(lines)
