"""A layer profile as a table for people (``edge-agent profile``)."""

from __future__ import annotations

from agent.models.ir import ModelProfile


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def format_profile(profile: ModelProfile, name_width: int = 32) -> str:
    header = (
        f"{'#':>4}  {'layer':<{name_width}} {'op':<20} {'family':<15} {'MACs':>9} {'params':>9} "
        f"{'param B':>9} {'act B':>9} {'dtype':<8} {'MAC/B':>7}"
    )
    lines = [f"{profile.path} ({profile.format}, sha256 {profile.digest[:12]})"]
    for t in profile.inputs:
        lines.append(f"input  {t.name}: {tuple(t.shape)} {t.dtype}")
    for t in profile.outputs:
        lines.append(f"output {t.name}: {tuple(t.shape)} {t.dtype}")
    for where, value in profile.pinned.items():
        lines.append(f"pinned {where} = {value}")
    lines += ["", header, "-" * len(header)]
    for layer in profile.layers:
        name = layer.name if len(layer.name) <= name_width else "…" + layer.name[-(name_width - 1) :]
        lines.append(
            f"{layer.index:>4}  {name:<{name_width}} {layer.op[:20]:<20} {layer.family.value:<15} "
            f"{_count(layer.macs):>9} {_count(layer.params):>9} {_count(layer.param_bytes):>9} "
            f"{_count(layer.activation_bytes):>9} {layer.dtype:<8} {layer.arithmetic_intensity:>7.2f}"
        )
    lines += ["", "by family:"]
    total = profile.total_macs or 1
    for family, (count, macs) in sorted(profile.by_family().items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {family:<16} {count:>5} layers {_count(macs):>9} MACs ({100 * macs / total:5.1f}%)")
    lines += [
        "",
        f"total: {len(profile.layers)} layers, {_count(profile.total_macs)} MACs ({profile.total_macs:,}), "
        f"{_count(profile.total_params)} params ({profile.total_params:,}), "
        f"{_count(profile.total_param_bytes)}B of parameters, "
        f"{_count(profile.total_activation_bytes)}B of activations moved",
    ]
    lines += [f"note: {note}" for note in profile.notes]
    return "\n".join(lines)
