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
        if capabilities.kind == "none":
            continue  # the null test backend is never planned onto unless named
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
    plan = make_plan(profile, found.capabilities, objective, fingerprint, found.excluded)
    plan = replace(plan, created_at=time.time())
    if cache and not only and not without:
        cache.put(plan)
    return plan, profile, found


def planned_layer_ms(plan: Plan, profile: ModelProfile, capabilities: Mapping[str, Capabilities]) -> list[float]:
    """Each layer's predicted time on the accelerator the plan gives it (for the picture)."""
    owner = {i: seg.accelerator for seg in plan.segments for i in seg.layers}
    return [layer_ms(layer, capabilities[owner[layer.index]]) for layer in profile.layers]
