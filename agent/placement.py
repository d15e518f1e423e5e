"""From a model file to a plan on this device's accelerators: profile, candidates, cache, search.

The planner itself (``agent.planner``) is pure; this module gathers what it needs from the device:
which accelerators load the model's format and are available (and why the others are not), their
Capabilities with cached calibration applied, and the plan cache in the state directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from accelerators.base import Backend, BackendConfig, Capabilities
from accelerators.calibration import load_cached
from accelerators.host import Host
from accelerators.registry import discover
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.models.profile import profile_model
from agent.planner.cache import PlanCache, plan_fingerprint
from agent.planner.cost import layer_ms
from agent.planner.plan import Objective, Plan
from agent.planner.search import make_plan
from agent.runtime.executor import PlanExecutor
from agent.runtime.split import split_onnx

log = logging.getLogger(__name__)


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
) -> tuple[Plan, ModelProfile, Candidates]:
    """The plan for ``model`` here (from the cache when the model, hardware and calibration are unchanged)."""
    host = host or Host()
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
    fingerprint = plan_fingerprint(host, found.capabilities)
    cache = PlanCache(state_dir / "plans") if state_dir else None
    if cache and use_cache and not only and not without:
        cached = cache.get(profile.digest, fingerprint, objective)
        if cached is not None:
            log.info("plan for %s from the cache (%s)", model.name, cache.path(profile.digest, fingerprint, objective))
            return replace(cached, model_path=str(model)), profile, found
    if objective == "throughput":
        plan = _throughput(profile, found, fingerprint)
    else:
        plan = make_plan(profile, found.capabilities, objective, fingerprint, found.excluded)
    if profile.format != "onnx" and len(plan.segments) > 1:
        plan = _whole(plan, profile, found, objective, fingerprint)
    plan = replace(plan, created_at=time.time())
    if cache and not only and not without:
        cache.put(plan)
    return plan, profile, found


def _throughput(profile: ModelProfile, found: Candidates, fingerprint: str) -> Plan:
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
        plan = make_plan(profile, caps, "throughput", fingerprint, excluded)
        if best is None or plan.predicted_ms < best.predicted_ms:
            best = plan
    assert best is not None
    if len(cpus) > 1:  # report every CPU runtime's whole-model figure, not only the chosen one's
        latency = make_plan(profile, found.capabilities, "latency", fingerprint, found.excluded)
        best = replace(best, single={**latency.single, **best.single})
    return best


def _whole(plan: Plan, profile: ModelProfile, found: Candidates, objective: Objective, fingerprint: str) -> Plan:
    """Only ONNX models are cut into segments: other formats run whole on their best accelerator."""
    runnable = {name: ms for name, ms in plan.single.items() if ms is not None}
    best = min(runnable, key=runnable.__getitem__)
    excluded = {**found.excluded, **{n: "a .tflite model runs whole on one accelerator" for n in runnable if n != best}}
    whole = make_plan(profile, {best: found.capabilities[best]}, objective, fingerprint, excluded)
    note = (
        f"a split across {', '.join(plan.accelerators)} would predict {plan.predicted_ms:.2f} ms, "
        "but only ONNX models are split"
    )
    return replace(whole, single=plan.single, reasons=(*whole.reasons, note))


def open_plan(
    model: Path, plan: Plan, profile: ModelProfile, backends: Mapping[str, Backend], work_dir: Path, threads: int = 1
) -> PlanExecutor:
    """Load a plan's segments on their accelerators (ONNX segments are cut into ``work_dir``, cached)."""
    parts = split_onnx(model, profile, plan.segments, work_dir)
    return PlanExecutor(plan, parts, backends, threads=threads)


def planned_layer_ms(plan: Plan, profile: ModelProfile, capabilities: Mapping[str, Capabilities]) -> list[float]:
    """Each layer's predicted time on the accelerator the plan gives it (for the picture)."""
    owner = {i: seg.accelerator for seg in plan.segments for i in seg.layers}
    return [layer_ms(layer, capabilities[owner[layer.index]]) for layer in profile.layers]
