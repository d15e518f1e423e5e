"""``edge-agent doctor``: every accelerator, available or why not, what it can do, and how fast here."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from accelerators.base import MAC_FAMILIES, Backend, BackendConfig, BackendOptions, Capabilities, Family, Probe
from accelerators.calibration import Calibration, calibrate, load_cached, save
from accelerators.errors import AcceleratorError
from accelerators.host import Host
from accelerators.registry import discover

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    backend: Backend
    probe: Probe
    capabilities: Capabilities
    calibration: Calibration | None
    calibration_error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.backend.name,
            "available": self.probe.available,
            "reason": self.probe.reason,
            "device": self.probe.device,
            "capabilities": self.capabilities.to_json(),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "calibration_error": self.calibration_error or None,
        }


def examine(
    configs: Sequence[BackendConfig],
    cache_dir: Path | None,
    measure: bool = False,
    only: Sequence[str] = (),
    host: Host | None = None,
    budget_s: float = 0.25,
    threads: int = 1,
) -> list[Entry]:
    """Probe every accelerator; with ``measure``, calibrate the available ones (or ``only`` those) and cache."""
    host = host or Host()
    backends = discover(host, configs)
    unknown = sorted(set(only) - set(backends))
    if unknown:
        raise AcceleratorError(f"unknown accelerator(s) {', '.join(unknown)}; known: {', '.join(sorted(backends))}")
    entries = []
    for name, backend in backends.items():
        probe = backend.probe()
        caps = backend.capabilities()
        calibration = load_cached(backend, host, cache_dir) if cache_dir and probe.available else None
        error = ""
        wanted = name in only if only else caps.kind != "none"  # the null test backend only when named
        if measure and probe.available and wanted:
            try:
                log.info("calibrating %s", name)
                calibration = calibrate(backend, host, budget_s=budget_s, options=BackendOptions(threads=threads))
                if cache_dir is not None:
                    save(calibration, backend, host, cache_dir)
            except AcceleratorError as exc:
                error = str(exc)
        if calibration is not None:
            caps = calibration.apply(caps)
        entries.append(Entry(backend, probe, caps, calibration, error))
    return entries


def host_json(host: Host | None = None) -> dict[str, object]:
    host = host or Host()
    return {
        "machine": platform.machine(),
        "cpu": host.cpu_model(),
        "cpus": host.cpu_count(),
        "fingerprint": host.fingerprint(),
    }


def _rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _bytes(value: float) -> str:
    return _rate(value, "B").replace("kB", "KB")


def format_text(entries: Sequence[Entry], cache_dir: Path | None, host: Host | None = None) -> str:
    info = host_json(host)
    lines = [
        f"host: {info['cpu']} · {info['cpus']} CPU(s) · {info['machine']} · fingerprint {info['fingerprint']}",
        f"calibration cache: {cache_dir or '(none)'}",
        "",
    ]
    width = max((len(e.backend.name) for e in entries), default=10) + 2
    available = sum(e.probe.available for e in entries)
    for entry in sorted(entries, key=lambda e: (not e.probe.available, e.backend.name)):
        status = "available" if entry.probe.available else "unavailable"
        lines.append(f"{entry.backend.name:<{width}}{status:<13}{entry.probe.device or entry.probe.reason}")
        if not entry.probe.available:
            continue
        caps = entry.capabilities
        facts = [caps.kind, " ".join(sorted(caps.formats)), " ".join(sorted(caps.dtypes))]
        if caps.part:
            facts.append(caps.part)
        lines.append("    " + " · ".join(facts))
        estimates = [f"{dtype} {_rate(v, 'MAC/s')}" for dtype, v in sorted(caps.peak_ops_per_s.items())]
        if caps.memory_bandwidth_bytes_per_s:
            estimates.append(f"memory {_bytes(caps.memory_bandwidth_bytes_per_s)}/s")
        if caps.on_chip_memory_bytes:
            estimates.append(f"on-chip {_bytes(caps.on_chip_memory_bytes)}")
        if caps.transfer_bytes_per_s:
            estimates.append(f"link {_bytes(caps.transfer_bytes_per_s)}/s")
        if estimates:
            lines.append("    catalog peak: " + ", ".join(estimates))
        if entry.calibration_error:
            lines.append(f"    not calibrated: {entry.calibration_error}")
        cal = entry.calibration
        if cal is None:
            if not entry.calibration_error and caps.kind != "none":
                lines.append("    not calibrated yet (edge-agent doctor --calibrate)")
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(cal.measured_at))
        threads = f"{cal.threads} thread" + ("s" if cal.threads > 1 else "")
        lines.append(f"    measured {when} with {threads}, dispatch overhead {cal.dispatch_overhead_s * 1e3:.3f} ms:")
        for family in Family:
            rate = cal.rates.get(family.value)
            if rate is None:
                continue
            figure = _rate(rate.macs_per_s, "MAC/s") if family in MAC_FAMILIES else f"{_bytes(rate.bytes_per_s)}/s"
            lines.append(f"      {family.value:<16}{figure:>14}   {rate.layer_ms:8.3f} ms")
        for skipped, why in cal.skipped.items():
            lines.append(f"      {skipped:<16}not measured: {why}")
    lines.append("")
    lines.append(f"{available} of {len(entries)} accelerators available")
    return "\n".join(lines)
