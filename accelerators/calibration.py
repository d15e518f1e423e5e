"""Calibration: time the representative layer of each family on one accelerator, cache per hardware.

Catalog figures say what a part could do; these say what it does here, with this runtime and this
build. A figure is ``macs_per_s`` (MAC families) and ``bytes_per_s`` for the layer's representative
shape, after subtracting the per-run dispatch overhead, which is measured on its own (an 8-element
Add). Results are cached as JSON per (accelerator, runtime, hardware) fingerprint, so the planner
uses measured numbers where a calibration was ever run on this device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accelerators.base import Backend, BackendOptions, Capabilities, Family, FamilyRate, Session
from accelerators.calibration_layers import SPECS, LayerSpec
from accelerators.errors import AcceleratorError
from accelerators.host import Host

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_MIN_LAYER_S = 1e-6  # a layer faster than the overhead's noise still gets a finite rate


@dataclass(frozen=True)
class Calibration:
    accelerator: str
    device: str
    fingerprint: str
    measured_at: float
    dispatch_overhead_s: float
    rates: dict[str, FamilyRate]
    skipped: dict[str, str]  # family -> why it was not measured
    threads: int = 1  # CPU threads each session was given

    def to_json(self) -> dict[str, object]:
        return {
            "version": CACHE_VERSION,
            "accelerator": self.accelerator,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "measured_at": self.measured_at,
            "dispatch_overhead_s": self.dispatch_overhead_s,
            "rates": {family: dataclasses.asdict(rate) for family, rate in self.rates.items()},
            "skipped": dict(self.skipped),
            "threads": self.threads,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Calibration:
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {data.get('version')!r}, expected {CACHE_VERSION}")
        rates = data["rates"]
        skipped = data.get("skipped", {})
        assert isinstance(rates, dict) and isinstance(skipped, dict)
        return cls(
            accelerator=str(data["accelerator"]),
            device=str(data["device"]),
            fingerprint=str(data["fingerprint"]),
            measured_at=float(data["measured_at"]),  # type: ignore[arg-type]
            dispatch_overhead_s=float(data["dispatch_overhead_s"]),  # type: ignore[arg-type]
            rates={Family(f).value: FamilyRate(**r) for f, r in rates.items()},
            skipped={str(k): str(v) for k, v in skipped.items()},
            threads=int(data.get("threads", 1)),  # type: ignore[call-overload]
        )

    def apply(self, caps: Capabilities) -> Capabilities:
        """``caps`` with the measured figures attached (they override catalog estimates in the planner)."""
        return dataclasses.replace(
            caps, measured=dict(self.rates), measured_dispatch_overhead_s=self.dispatch_overhead_s
        )


def fingerprint(backend: Backend, host: Host) -> str:
    """Same accelerator, same runtime version, same hardware -> same fingerprint."""
    return host.fingerprint(backend.name, backend.probe().device)


def cache_path(cache_dir: Path, backend: Backend, host: Host) -> Path:
    return cache_dir / f"{backend.name}-{fingerprint(backend, host)}.json"


def load_cached(backend: Backend, host: Host, cache_dir: Path) -> Calibration | None:
    """The cached calibration for this accelerator on this hardware, or None (a bad file is ignored)."""
    path = cache_path(cache_dir, backend, host)
    try:
        return Calibration.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        log.warning("ignoring unreadable calibration cache %s: %s", path, exc)
        return None


def save(calibration: Calibration, backend: Backend, host: Host, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_path(cache_dir, backend, host)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=2))
    tmp.replace(path)
    return path


def _builder(suffixes: frozenset[str]) -> tuple[str, Callable[[LayerSpec], bytes], Callable[[], bytes]] | None:
    """A layer builder for a format the accelerator loads: (suffix, build_layer, build_overhead_probe)."""
    if ".onnx" in suffixes:
        from accelerators import calibration_onnx

        return ".onnx", calibration_onnx.build_layer, calibration_onnx.build_overhead_probe
    if ".tflite" in suffixes:
        from accelerators import calibration_tflite

        return ".tflite", calibration_tflite.build_layer, calibration_tflite.build_overhead_probe
    return None


def _feeds(session: Session, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in session.inputs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def time_session(session: Session, budget_s: float, min_runs: int = 5, max_runs: int = 200) -> float:
    """Median seconds of one run: warm up, then repeat until ``budget_s`` or ``max_runs``."""
    feeds = _feeds(session, np.random.default_rng(0))
    for _ in range(2):
        session.run(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(
    backend: Backend,
    host: Host,
    families: Iterable[Family] | None = None,
    budget_s: float = 0.25,
    options: BackendOptions | None = None,
) -> Calibration:
    """Measure ``backend``'s rate per family here. Raises AcceleratorError if it cannot be calibrated."""
    probe = backend.probe()
    if not probe.available:
        raise AcceleratorError(f"{backend.name} is not available: {probe.reason}")
    if backend.capabilities().kind == "none":
        raise AcceleratorError(f"{backend.name} runs nothing (a test backend): there is nothing to measure")
    builder = _builder(backend.capabilities().formats)
    if builder is None:
        formats = ", ".join(sorted(backend.capabilities().formats))
        raise AcceleratorError(
            f"{backend.name} loads only {formats} models compiled for it; calibration cannot build those, "
            "so its catalog figures are used"
        )
    suffix, build_layer, build_probe = builder
    rates: dict[str, FamilyRate] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edge-agent-calibrate-") as tmp:
        probe_file = Path(tmp) / f"dispatch{suffix}"
        probe_file.write_bytes(build_probe())
        overhead = _timed(backend, probe_file, budget_s, options)
        for family in families or SPECS:
            spec = SPECS[Family(family)]
            try:
                model = Path(tmp) / f"{spec.family.value}{suffix}"
                model.write_bytes(build_layer(spec))
                seconds = max(_timed(backend, model, budget_s, options) - overhead, _MIN_LAYER_S)
            except NotImplementedError as exc:
                skipped[spec.family.value] = str(exc)
                continue
            except AcceleratorError as exc:  # the accelerator cannot run this layer: not a calibration failure
                skipped[spec.family.value] = str(exc)
                continue
            rates[spec.family.value] = FamilyRate(
                macs_per_s=spec.macs / seconds, bytes_per_s=spec.moved_bytes / seconds, layer_ms=seconds * 1e3
            )
    return Calibration(
        accelerator=backend.name,
        device=probe.device,
        fingerprint=fingerprint(backend, host),
        measured_at=time.time(),
        dispatch_overhead_s=overhead,
        rates=rates,
        skipped=skipped,
        threads=(options or BackendOptions()).threads,
    )


def _timed(backend: Backend, model: Path, budget_s: float, options: BackendOptions | None) -> float:
    session = backend.load(model, options)
    try:
        return time_session(session, budget_s)
    finally:
        session.close()
