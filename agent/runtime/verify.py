"""A plan checked against the device before it is adopted: the split measured next to each whole-model
placement, in interleaved rounds, and the fastest kept.

Per-layer costs add up well for a model run whole, but a split pays what no layer timing shows: each
segment is a session of its own, with its own input and output copies, layout reorders at its edges
and fusions its cut breaks (measured on a text detector: an OpenVINO segment predicted at 1.4 ms ran
11 ms). And two engines a few percent apart in sequential timing swap places on a busy device. So
before a latency plan is adopted, it runs: the plan and every accelerator that can run the whole model
alone, a few runs each, round after round (``agent.runtime.rounds``), within a time budget. The plan is
kept only where it is measured fastest; else the fastest whole-model placement replaces it, and the
plan says so in its reasons. What was measured is kept in ``Plan.verified``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from accelerators.base import Capabilities
from accelerators.errors import AcceleratorError
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.planner.measured import model_inputs
from agent.planner.plan import Plan
from agent.planner.search import make_plan
from agent.runtime.executor import PlanExecutor
from agent.runtime.rounds import measure

log = logging.getLogger(__name__)

SPLIT = "split"  # Plan.verified's key for the plan's own (multi-accelerator) placement
BUDGET_MS = 3000.0  # time spent measuring, all placements together
MIN_RUNS, MAX_RUNS = 10, 40

ExecutorFactory = Callable[[Plan], PlanExecutor]  # loads a plan; AcceleratorError or ModelError where it cannot


def verify_plan(
    plan: Plan,
    profile: ModelProfile,
    capabilities: Mapping[str, Capabilities],
    measured: Mapping[str, Sequence[float | None]] | None,
    open_executor: ExecutorFactory,
    budget_ms: float = BUDGET_MS,
) -> Plan:
    """``plan``, or the whole-model placement measured faster than it; with the figures in ``verified``.

    ``open_executor(plan)`` loads a plan (raising AcceleratorError where it cannot). Only latency plans
    are verified: a throughput plan's stages overlap, which one-at-a-time runs do not show.
    """
    if plan.objective != "latency":
        return plan
    contenders: dict[str, Plan] = {}
    whole = [name for name, ms in plan.single.items() if ms is not None and name in capabilities]
    own = plan.segments[0].accelerator if len(plan.segments) == 1 else None
    if own is None:
        contenders[SPLIT] = plan
    for name in whole:
        contenders[name] = plan if name == own else _whole_on(plan, name, profile, capabilities, measured)
    if len(contenders) < 2:
        return plan
    executors: dict[str, PlanExecutor] = {}
    try:
        for key, candidate in contenders.items():
            try:
                executors[key] = open_executor(candidate)
            except (AcceleratorError, ModelError) as exc:
                log.warning("verifying %s: %s cannot run it: %s", Path(plan.model_path).name, key, exc)
        if len(executors) < 2:
            return plan
        inputs = model_inputs(profile.inputs)
        total = sum(contenders[key].predicted_ms for key in executors)
        runs = int(min(MAX_RUNS, max(MIN_RUNS, budget_ms / max(total, 1e-3))))
        runners: dict[str, Callable[[], object]] = {key: partial(e.run, inputs) for key, e in executors.items()}
        timings = measure(runners, runs)
    except AcceleratorError as exc:
        log.warning("verifying %s failed, keeping the plan unverified: %s", Path(plan.model_path).name, exc)
        return plan
    finally:
        for executor in executors.values():
            executor.close()
    verified = {key: t.median_ms for key, t in timings.items()}
    fastest = min(verified, key=verified.__getitem__)
    chosen = contenders[fastest]
    figures = ", ".join(f"{'the split' if k == SPLIT else k} {ms:.2f} ms" for k, ms in verified.items())
    if chosen is plan:
        note = f"measured before adoption, in interleaved rounds: {figures}; the plan is fastest"
    else:
        was = "the split" if own is None else own
        note = f"measured before adoption, in interleaved rounds: {figures}; runs whole on {fastest}, faster than {was}"
    reasons = (*chosen.reasons, note)
    return replace(chosen, single=plan.single, excluded=plan.excluded, reasons=reasons, verified=verified)


def _whole_on(
    plan: Plan,
    name: str,
    profile: ModelProfile,
    capabilities: Mapping[str, Capabilities],
    measured: Mapping[str, Sequence[float | None]] | None,
) -> Plan:
    others = {n: "measured against the plan as a whole-model placement" for n in capabilities if n != name}
    return make_plan(profile, {name: capabilities[name]}, plan.objective, plan.fingerprint, others, measured=measured)
