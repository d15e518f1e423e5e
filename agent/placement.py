"""From a model file to a plan on this device's accelerators: profile, candidates, cache, search.

The planner itself (``agent.planner``) is pure; this module gathers what it needs from the device:
which accelerators load the model's format and are available (and why the others are not), their
Capabilities with cached calibration applied, the model's layers timed on them where asked (or cached),
and the plan cache in the state directory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from accelerators.base import Backend, BackendConfig, Capabilities
from accelerators.calibration import load_cached
from accelerators.host import Host
from accelerators.registry import discover
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.models.profile import profile_model
from agent.planner.cache import PlanCache, plan_fingerprint
from agent.planner.cost import CostTable, layer_ms
from agent.planner.measured import LayerMeasurement, measure_layers, measured_fingerprint, planning_ms
from agent.planner.plan import Objective, Plan
from agent.planner.search import MEASURED, make_plan

if TYPE_CHECKING:
    from agent.runtime.executor import PlanExecutor

log = logging.getLogger(__name__)

Measured = Mapping[str, Sequence[float | None]] | None  # accelerator -> ms per layer, for CostTable


@dataclass(frozen=True)
class Candidates:
    backends: dict[str, Backend]
    capabilities: dict[str, Capabilities]
    excluded: dict[str, str]  # accelerator -> why it is not a candidate


def candidates(
    suffix: str,
    configs: Iterable[BackendConfig] = (),
    calibration_dir: Path | None = None,
    host: Host | None = None,
    only: Sequence[str] = (),
    without: Iterable[str] = (),
) -> Candidates:
    """Available accelerators that load ``suffix`` files, with calibration applied; the rest with reasons."""
    host = host or Host()
    without = set(without)
    backends: dict[str, Backend] = {}
    caps: dict[str, Capabilities] = {}
    excluded: dict[str, str] = {}
    for name, backend in discover(host, configs, suffix).items():
        capabilities = backend.capabilities()
        if capabilities.kind == "none" and name not in only:
            continue  # the null test backend is planned onto only when named
        if only and name not in only:
            excluded[name] = "not among the accelerators asked for"
            continue
        if name in without:
            excluded[name] = "failed while running"
            continue
        probe = backend.probe()
        if not probe.available:
            excluded[name] = probe.reason
            continue
        calibration = load_cached(backend, host, calibration_dir) if calibration_dir else None
        backends[name] = backend
        caps[name] = calibration.apply(capabilities) if calibration else capabilities
    for name in only:
        if name not in backends and name not in excluded:
            excluded[name] = f"unknown, or does not load {suffix} files"
    return Candidates(backends, caps, excluded)


def plan_for(
    model: Path,
    objective: Objective = "latency",
    configs: Iterable[BackendConfig] = (),
    state_dir: Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    only: Sequence[str] = (),
    without: Iterable[str] = (),
    use_cache: bool = True,
    host: Host | None = None,
    measure: bool = False,
    threads: int = 1,
    refresh: bool = False,
) -> tuple[Plan, ModelProfile, Candidates]:
    """The plan for ``model`` here (from the cache when the model, hardware and calibration are unchanged).

    ``measure``: time the model layer by layer on each candidate accelerator first (a few seconds each,
    cached in ``<state_dir>/layer_times``) and place by those times, then measure the plan against each
    whole-model placement before adopting it (``agent.runtime.verify``). Cached timings of this model are
    used even without ``measure``; ``threads`` is what each session is given while timing.
    """
    plan, profile, found, _ = plan_variants(
        [model], objective, configs, state_dir, input_shapes, only, without, use_cache, host, measure, threads, refresh
    )
    return plan, profile, found


def plan_variants(
    models: Sequence[Path],
    objective: Objective = "latency",
    configs: Iterable[BackendConfig] = (),
    state_dir: Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    only: Sequence[str] = (),
    without: Iterable[str] = (),
    use_cache: bool = True,
    host: Host | None = None,
    measure: bool = False,
    threads: int = 1,
    refresh: bool = False,
) -> tuple[Plan, ModelProfile, Candidates, Path]:
    """The best plan over several files of one model (variants: ONNX, TFLite ...), and the file it runs.

    Each file is planned as by ``plan_for``; with ``measure`` (or ``refresh``) the placements of every
    file are then measured in the same interleaved rounds (``agent.runtime.verify.verify_variants``), so
    the file and engine chosen are the fastest measured, not the fastest predicted. ModelError only when
    no file has an accelerator that runs it.
    """
    host = host or Host()
    drafts: list[_Draft] = []
    errors: list[str] = []
    for model in models:
        try:
            drafts.append(_draft(model, objective, configs, state_dir, input_shapes, only, without, use_cache, host,
                                 measure, threads, refresh))  # fmt: skip
        except ModelError as exc:  # no accelerator for this file: another may still run
            errors.append(str(exc))
    if not drafts:
        raise ModelError("; ".join(errors) or "no model file given")
    if (measure or refresh) and not all(d.cached for d in drafts):
        plans = [d.done(p)[0] for d, p in zip(drafts, _verified(drafts, state_dir, threads), strict=True)]
    else:
        plans = [d.done(d.plan)[0] for d in drafts]
    best = min(range(len(drafts)), key=lambda i: plans[i].predicted_ms)
    return plans[best], drafts[best].profile, drafts[best].found, drafts[best].model


@dataclass(frozen=True)
class _Draft:
    """A file planned, not yet verified: what verification and the plan cache need."""

    model: Path
    plan: Plan
    profile: ModelProfile
    found: Candidates
    measured: Measured
    cache: PlanCache | None  # where to keep the adopted plan (None: not cached)
    cached: bool  # the plan came from the cache: verified already, where it was to be

    def done(self, plan: Plan) -> tuple[Plan, ModelProfile, Candidates]:
        plan = plan if self.cached else replace(plan, created_at=time.time())
        if self.cache and not self.cached:
            self.cache.put(plan)
        return plan, self.profile, self.found


def _draft(
    model: Path,
    objective: Objective,
    configs: Iterable[BackendConfig],
    state_dir: Path | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    only: Sequence[str],
    without: Iterable[str],
    use_cache: bool,
    host: Host | None,
    measure: bool,
    threads: int,
    refresh: bool,
) -> _Draft:
    host = host or Host()
    without = tuple(without)
    profile = profile_model(model, input_shapes)
    found = candidates(
        model.suffix.lower(),
        configs,
        state_dir / "calibration" if state_dir else None,
        host,
        only,
        without,
    )
    if not found.capabilities:
        reasons = "; ".join(f"{n}: {r}" for n, r in found.excluded.items()) or "none is registered"
        raise ModelError(f"{model}: no available accelerator runs {model.suffix} models ({reasons})")
    measurements = layer_measurements(model, profile, found, state_dir, host, measure or refresh, threads, refresh)
    measured = planning_ms(measurements, profile, found.capabilities) or None
    fingerprint = plan_fingerprint(host, found.capabilities)
    if measured:
        fingerprint = measured_fingerprint(fingerprint, measured)
    cache = PlanCache(state_dir / "plans") if state_dir and not only and not without else None
    if cache and use_cache:
        cached = cache.get(profile.digest, fingerprint, objective)
        if cached is not None:
            log.info("plan for %s from the cache (%s)", model.name, cache.path(profile.digest, fingerprint, objective))
            return _Draft(model, replace(cached, model_path=str(model)), profile, found, measured, cache, True)
    if objective == "throughput":
        plan = _throughput(profile, found, fingerprint, measured)
    else:
        plan = make_plan(profile, found.capabilities, objective, fingerprint, found.excluded, measured=measured)
    if profile.format != "onnx" and len(plan.segments) > 1:
        plan = _whole(plan, profile, found, objective, fingerprint, measured)
    whole = [name for name, m in measurements.items() if not m.per_layer and name in found.capabilities]
    if whole:
        plan = replace(plan, reasons=_timed_whole(plan.reasons, whole))
    return _Draft(model, plan, profile, found, measured, cache, False)


def _verified(drafts: Sequence[_Draft], state_dir: Path | None, threads: int) -> list[Plan]:
    from agent.runtime.verify import Variant, verify_variants  # loads sessions: imports the onnx stack

    with tempfile.TemporaryDirectory(prefix="edge-agent-verify-") as tmp:
        work = state_dir / "segments" if state_dir else Path(tmp)

        def opener(d: _Draft) -> Callable[[Plan], PlanExecutor]:
            return lambda p: open_plan(d.model, p, d.profile, d.found.backends, work, threads, exclusive=True)

        variants = [Variant(d.plan, d.profile, d.found.capabilities, d.measured, opener(d)) for d in drafts]
        return verify_variants(variants)


def _timed_whole(reasons: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """The planner saw per-layer figures for ``names`` too; say that they were timed whole instead."""
    out = [reason for reason in reasons if not reason.startswith(MEASURED)]
    for reason in reasons:
        layered = [n for n in reason.removeprefix(MEASURED).split(", ") if n not in names]
        if reason.startswith(MEASURED) and layered:
            out.insert(reasons.index(reason), MEASURED + ", ".join(layered))
    note = "as a whole model only (its runtime reports no layers): its estimates are scaled to that time"
    return (*out, f"{', '.join(names)} timed {note}")


def layer_measurements(
    model: Path,
    profile: ModelProfile,
    found: Candidates,
    state_dir: Path | None,
    host: Host | None = None,
    measure: bool = False,
    threads: int = 1,
    refresh: bool = False,
) -> dict[str, LayerMeasurement]:
    """The model timed layer by layer on each candidate: cached in ``<state_dir>/layer_times``, measured
    now where ``measure`` and not cached. For per-layer costs pass the result through ``planning_ms``."""
    if not measure and state_dir is None:
        return {}
    return measure_layers(
        model,
        profile,
        found.backends,
        cache_dir=state_dir / "layer_times" if state_dir else None,
        host=host,
        threads=threads,
        measure=measure,
        refresh=refresh,
    )


def _throughput(profile: ModelProfile, found: Candidates, fingerprint: str, measured: Measured) -> Plan:
    """Pipelined stages only overlap on different hardware: runtimes on the host CPU share its cores.

    So at most one CPU runtime takes part in a throughput plan; each choice is planned and the best kept.
    """
    cpus: list[str | None] = [n for n, c in found.capabilities.items() if c.kind == "cpu"]
    others = {n: c for n, c in found.capabilities.items() if c.kind != "cpu"}
    best: Plan | None = None
    for cpu in cpus or [None]:  # no CPU runtime at all: one plan over the devices
        caps = dict(others)
        excluded = dict(found.excluded)
        if cpu is not None:
            caps[cpu] = found.capabilities[cpu]
            for other in cpus:
                if other is not None and other != cpu:
                    excluded[other] = f"shares the CPU cores with {cpu}: stages on both would not run in parallel"
        plan = make_plan(profile, caps, "throughput", fingerprint, excluded, measured=measured)
        if best is None or plan.predicted_ms < best.predicted_ms:
            best = plan
    assert best is not None
    if len(cpus) > 1:  # report every CPU runtime's whole-model figure, not only the chosen one's
        latency = make_plan(profile, found.capabilities, "latency", fingerprint, found.excluded, measured=measured)
        best = replace(best, single={**latency.single, **best.single})
    return best


def _whole(
    plan: Plan, profile: ModelProfile, found: Candidates, objective: Objective, fingerprint: str, measured: Measured
) -> Plan:
    """Only ONNX models are cut into segments: other formats run whole on their best accelerator."""
    runnable = {name: ms for name, ms in plan.single.items() if ms is not None}
    best = min(runnable, key=runnable.__getitem__)
    excluded = {**found.excluded, **{n: "a .tflite model runs whole on one accelerator" for n in runnable if n != best}}
    whole = make_plan(profile, {best: found.capabilities[best]}, objective, fingerprint, excluded, measured=measured)
    note = (
        f"a split across {', '.join(plan.accelerators)} would predict {plan.predicted_ms:.2f} ms, "
        "but only ONNX models are split"
    )
    return replace(whole, single=plan.single, reasons=(*whole.reasons, note))


def open_plan(
    model: Path,
    plan: Plan,
    profile: ModelProfile,
    backends: Mapping[str, Backend],
    work_dir: Path,
    threads: int = 1,
    exclusive: bool = False,
) -> PlanExecutor:
    """Load a plan's segments on their accelerators (ONNX segments are cut into ``work_dir``, cached);
    ``exclusive``: the model has the device to itself (see ``PlanExecutor``)."""
    from agent.runtime.executor import PlanExecutor
    from agent.runtime.split import split_onnx  # imports onnx: only when a plan is opened

    parts = split_onnx(model, profile, plan.segments, work_dir)
    return PlanExecutor(plan, parts, backends, threads=threads, exclusive=exclusive)


def planned_layer_ms(
    plan: Plan, profile: ModelProfile, capabilities: Mapping[str, Capabilities], measured: Measured = None
) -> list[float]:
    """Each layer's predicted time on the accelerator the plan gives it (for the picture), measured or estimated."""
    owner = {i: seg.accelerator for seg in plan.segments for i in seg.layers}
    if measured:
        table = CostTable(profile, {name: capabilities[name] for name in plan.accelerators}, measured)
        return [float(table.ms[layer.index, table.index(owner[layer.index])]) for layer in profile.layers]
    return [layer_ms(layer, capabilities[owner[layer.index]]) for layer in profile.layers]
