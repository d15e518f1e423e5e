"""The model's own layers timed on each accelerator, cached on disk, turned into per-layer costs.

Calibration times one representative layer per family; this times the model itself, layer by layer,
with the runtime's profiler (``accelerators.layer_timing``), so the planner places by measured cost.
Runtimes without a per-node profiler (LiteRT) are timed as a whole model: their estimates are scaled
to match.

The per-run overhead, the whole run's wall time minus the layers' sum (the session call, input and
output copies, nodes the runtime added such as layout reorders), is attributed like this: one dispatch
per segment, as the cost model already charges (``dispatch_ms``), and the rest spread over the layers
in proportion to their measured time, since it grows with the work a segment does (per-node
bookkeeping, reorders around the convolutions). A single accelerator's predicted whole-model time is
then its measured wall time.

Measurements are cached as JSON per (model and input shapes, accelerator fingerprint, threads) under a
directory the caller gives (``<state_dir>/layer_times``); an unreadable file is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from accelerators.base import Backend, BackendOptions, Capabilities
from accelerators.calibration import fingerprint
from accelerators.errors import AcceleratorError
from accelerators.host import Host
from accelerators.layer_timing import LayerProfiler, profile_layers, time_whole
from agent.models.ir import ModelProfile, TensorInfo
from agent.planner.cost import RateModel, dispatch_ms, layer_ms
from agent.planner.layer_map import map_times

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: whole-model wall time taken with BackendOptions.exclusive
MEASURE_RUNS = 15  # after the warm-up: ~0.2 s for MobileNetV2 on one core, ~1 s for ResNet-18
_MIN_LAYER_SHARE = 0.1  # the layers keep at least this much of the wall time, whatever the dispatch figure


@dataclass(frozen=True)
class LayerMeasurement:
    """One model timed on one accelerator."""

    accelerator: str
    fingerprint: str  # the accelerator's (runtime version, hardware): accelerators.calibration.fingerprint
    model_key: str  # the model digest and its pinned input shapes
    threads: int
    runs: int
    wall_ms: float  # median whole run
    layer_ms: tuple[float | None, ...]  # per profile layer, median ms; None: no timing (estimated)
    unattributed_ms: float  # runtime nodes that are no layer of the model (reorders ...)
    per_layer: bool  # False: no layer got a time (the runtime has no per-node profiler): wall_ms only
    measured_at: float

    @property
    def layers_ms(self) -> float:
        return sum(ms for ms in self.layer_ms if ms is not None)

    @property
    def overhead_ms(self) -> float:
        """Per-run time outside the layers: the wall time minus their sum."""
        return self.wall_ms - self.layers_ms

    @property
    def coverage(self) -> float:
        """The fraction of layers with a timing."""
        return sum(ms is not None for ms in self.layer_ms) / max(len(self.layer_ms), 1)

    def to_json(self) -> dict[str, object]:
        return {"version": CACHE_VERSION, **asdict(self), "layer_ms": list(self.layer_ms)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LayerMeasurement:
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {data.get('version')!r}, expected {CACHE_VERSION}")
        values = data["layer_ms"]
        if not isinstance(values, list):
            raise TypeError("layer_ms is not a list")
        return cls(
            accelerator=str(data["accelerator"]),
            fingerprint=str(data["fingerprint"]),
            model_key=str(data["model_key"]),
            threads=int(data["threads"]),  # type: ignore[call-overload]
            runs=int(data["runs"]),  # type: ignore[call-overload]
            wall_ms=_finite(data["wall_ms"]),
            layer_ms=tuple(None if v is None else _finite(v) for v in values),
            unattributed_ms=_finite(data["unattributed_ms"]),
            per_layer=bool(data["per_layer"]),
            measured_at=_finite(data["measured_at"]),
        )


def _finite(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} is not a time")
    return number


def model_key(profile: ModelProfile) -> str:
    """The same file with other pinned input shapes runs other layer times."""
    shapes = [(t.name, list(t.shape), t.dtype) for t in profile.inputs]
    return hashlib.sha256(json.dumps([profile.digest, shapes]).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, profile: ModelProfile, backend: Backend, host: Host, threads: int) -> Path:
    return cache_dir / f"{model_key(profile)}-{backend.name}-{fingerprint(backend, host)}-t{threads}.json"


def load_cached(
    cache_dir: Path, profile: ModelProfile, backend: Backend, host: Host, threads: int = 1
) -> LayerMeasurement | None:
    """The cached measurement of this model on this accelerator, or None (a bad file is ignored)."""
    path = cache_path(cache_dir, profile, backend, host, threads)
    try:
        found = LayerMeasurement.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable layer-time cache %s: %s", path, exc)
        return None
    if len(found.layer_ms) != len(profile.layers) or found.model_key != model_key(profile):
        log.warning("ignoring layer-time cache %s: it is for another model", path)
        return None
    return found


def save(measurement: LayerMeasurement, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(measurement.to_json(), indent=1))
    tmp.replace(path)
    return path


def model_inputs(inputs: tuple[TensorInfo, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the profile's pinned shapes: normal noise for floats, zeros for integers and booleans."""
    rng = np.random.default_rng(seed)
    return {
        t.name: rng.standard_normal(t.shape).astype(t.dtype)
        if np.dtype(t.dtype).kind == "f"
        else np.zeros(t.shape, t.dtype)
        for t in inputs
    }


def measure_layers(
    model: Path,
    profile: ModelProfile,
    backends: Mapping[str, Backend],
    runs: int = MEASURE_RUNS,
    *,
    cache_dir: Path | None = None,
    host: Host | None = None,
    threads: int = 1,
    measure: bool = True,
    refresh: bool = False,
) -> dict[str, LayerMeasurement]:
    """Each accelerator's timing of ``model``: from the cache where there is one, else measured now
    (``measure``) and cached. An accelerator that cannot run the whole model is left out, with a warning."""
    host = host or Host()
    inputs = model_inputs(profile.inputs) if measure else {}
    out: dict[str, LayerMeasurement] = {}
    for name, backend in backends.items():
        path = cache_path(cache_dir, profile, backend, host, threads) if cache_dir else None
        cached = load_cached(cache_dir, profile, backend, host, threads) if cache_dir and not refresh else None
        if cached is not None or not measure:
            if cached is not None:
                out[name] = cached
            continue
        start = time.perf_counter()
        try:
            times = profile_layers(backend, model, inputs, runs, BackendOptions(threads=threads))
            # A profiling session pays per node for its own bookkeeping (measured: 2x on a 0.3 ms model), so
            # the per-layer figures are scaled to the wall time of a plain session on the same inputs.
            # ... of a session that has the device to itself, as a plan of one segment runs
            plain = time_whole(backend, model, inputs, runs, BackendOptions(threads=threads, exclusive=True))
        except AcceleratorError as exc:
            log.warning("%s: cannot time %s layer by layer: %s", name, model.name, exc)
            continue
        weights = [layer_ms(layer, backend.capabilities()) for layer in profile.layers]
        mapped = map_times(profile, times, weights)
        scale = plain.wall_ms / times.wall_ms if isinstance(backend, LayerProfiler) and times.wall_ms > 0 else 1.0
        mapped = replace(
            mapped,
            layer_ms=tuple(None if ms is None else ms * scale for ms in mapped.layer_ms),
            unattributed_ms=mapped.unattributed_ms * scale,
        )
        times = replace(times, wall_ms=times.wall_ms * scale)
        out[name] = LayerMeasurement(
            accelerator=name,
            fingerprint=fingerprint(backend, host),
            model_key=model_key(profile),
            threads=threads,
            runs=times.runs,
            wall_ms=times.wall_ms,
            layer_ms=mapped.layer_ms,
            unattributed_ms=mapped.unattributed_ms,
            per_layer=any(ms is not None for ms in mapped.layer_ms),
            measured_at=time.time(),
        )
        log.info("timed %s on %s in %.1f s: %.2f ms per run, %d of %d layers timed", model.name, name,
                 time.perf_counter() - start, times.wall_ms, len(profile.layers) * out[name].coverage,
                 len(profile.layers))  # fmt: skip
        if path is not None:
            save(out[name], path)
    return out


def planning_ms(
    measurements: Mapping[str, LayerMeasurement], profile: ModelProfile, capabilities: Mapping[str, Capabilities]
) -> dict[str, list[float | None]]:
    """Per-layer ms for ``CostTable(measured=...)``: the measured layers with the per-run overhead beyond
    one dispatch spread over them (see the module docstring); for a whole-model timing, the estimates
    scaled to it. Accelerators without capabilities here are left out."""
    out: dict[str, list[float | None]] = {}
    for name, m in measurements.items():
        caps = capabilities.get(name)
        if caps is None:
            continue
        model = RateModel(caps)
        estimates = [model.layer_s(layer) * 1e3 for layer in profile.layers]
        budget = max(m.wall_ms - dispatch_ms(caps), _MIN_LAYER_SHARE * m.wall_ms)  # what the layers take
        known = [(ms, est) for ms, est in zip(m.layer_ms, estimates, strict=True) if ms is not None]
        if known:
            timed = sum(ms for ms, _ in known)
            guessed = sum(est for _, est in known if math.isfinite(est))
            ratio = timed / guessed if guessed > 0 else 1.0
            # untimed layers: what CostTable will fill in (the estimate times the ratio)
            untimed = sum(
                est * ratio for ms, est in zip(m.layer_ms, estimates, strict=True) if ms is None and math.isfinite(est)
            )
            factor = budget / (timed + untimed) if timed + untimed > 0 else 1.0
            out[name] = [None if ms is None else ms * factor for ms in m.layer_ms]
        else:
            finite = sum(est for est in estimates if math.isfinite(est))
            factor = budget / finite if finite > 0 else 1.0
            out[name] = [est * factor if math.isfinite(est) else None for est in estimates]
    return out


def measured_fingerprint(plan_fingerprint: str, measured: Mapping[str, list[float | None]]) -> str:
    """A plan fingerprint that also changes with the measured costs (a new measurement re-plans)."""
    figures = {name: [None if v is None else round(v, 4) for v in values] for name, values in sorted(measured.items())}
    blob = json.dumps([plan_fingerprint, figures], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
