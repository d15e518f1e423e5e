"""A plan checked against the device before it is adopted: the split measured next to each whole-model
placement, in interleaved rounds, and the fastest kept.

Per-layer costs add up well for a model run whole, but a split pays what no layer timing shows: each
segment is a session of its own, with its own input and output copies, layout reorders at its edges
and fusions its cut breaks (measured on a text detector: an OpenVINO segment predicted at 1.4 ms ran
11 ms). And two engines a few percent apart in sequential timing swap places on a busy device. So
before a latency plan is adopted, it runs: the plan and every accelerator that can run the whole model
alone, each in turns of a quarter second, for three rounds (``agent.runtime.rounds``). The plan is
kept only where it is measured fastest (a split: by ``SPLIT_MARGIN``); else the fastest whole-model
placement replaces it, and the plan says so in its reasons. What was measured is kept in
``Plan.verified``.

A model offered in several files (variants: the ONNX file and the TFLite original, say) is verified
across all of them at once (``verify_variants``): each variant's placements are measured in the same
interleaved rounds, so the choice between an engine that loads one file and an engine that loads the
other rests on one measurement, not on two predictions taken at different moments (measured: a face
detector predicted at 1.49 ms on LiteRT, from a sequential timing, ran 2.90 ms beside onnxruntime's
2.46 ms).

The adopted plan's predictions are calibrated to what was measured: each segment's predicted time
becomes its median in the rounds (the runs the live executor will make, in the configuration it will
make them), and the plan's the whole run's median; the cost model's own figure stays in the reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from accelerators.base import Capabilities
from accelerators.errors import AcceleratorError
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.planner.measured import model_inputs
from agent.planner.plan import Plan
from agent.planner.search import make_plan
from agent.runtime.executor import PlanExecutor, segment_shares
from agent.runtime.rounds import measure

log = logging.getLogger(__name__)

SPLIT = "split"  # Plan.verified's key for the plan's own (multi-accelerator) placement
# Turns of each placement (each: rounds.SETTLE_MS untimed, then rounds.BLOCK_MS timed): about a second
# per placement, so a burst of load cannot decide, and a model's first start waits a few seconds at most.
ROUNDS = 3
MIN_RUNS = 12  # timed runs per placement, at least (a slow model's turns last longer than a block)
# A split is kept only where it beats every whole-model placement by this much: it loads more sessions,
# pays copies at its cuts, and a few percent between medians is within what a shared device's load
# moves from one measurement to the next (measured: a 3-segment OCR split 4% ahead at plan time ran 23%
# behind the whole-model OpenVINO placement a minute later).
SPLIT_MARGIN = 0.05

ExecutorFactory = Callable[[Plan], PlanExecutor]  # loads a plan; AcceleratorError or ModelError where it cannot
Measured = Mapping[str, Sequence[float | None]] | None


@dataclass(frozen=True)
class Variant:
    """One file of a model, planned: what ``verify_variants`` needs to measure its placements."""

    plan: Plan
    profile: ModelProfile
    capabilities: Mapping[str, Capabilities]
    measured: Measured
    open_executor: ExecutorFactory


@dataclass(frozen=True)
class _Trial:
    median_ms: float
    segment_ms: tuple[float | None, ...]


def verify_plan(
    plan: Plan,
    profile: ModelProfile,
    capabilities: Mapping[str, Capabilities],
    measured: Measured,
    open_executor: ExecutorFactory,
    rounds: int = ROUNDS,
) -> Plan:
    """``plan``, or the whole-model placement measured faster than it; with the figures in ``verified``.

    ``open_executor(plan)`` loads a plan (raising AcceleratorError where it cannot). Only latency plans
    are verified: a throughput plan's stages overlap, which one-at-a-time runs do not show.
    """
    return verify_variants([Variant(plan, profile, capabilities, measured, open_executor)], rounds)[0]


def verify_variants(variants: Sequence[Variant], rounds: int = ROUNDS) -> list[Plan]:
    """Per variant, its plan or the whole-model placement measured faster, all measured in the same rounds.

    Every returned plan carries every figure measured (``verified``: keys are accelerators, ``split`` for
    a split plan, with `` (file name)`` added where two variants would share a key), and predictions
    calibrated to its own measurement; the fastest variant is the one with the least ``predicted_ms``.
    A variant whose placements could not be measured against anything is returned as it was.
    """
    keyed: dict[str, tuple[int, Plan]] = {}
    for index, variant in enumerate(variants):
        for name, candidate in _contenders(variant).items():
            key = f"{name} ({Path(candidate.model_path).name})" if name in keyed else name
            keyed[key] = (index, candidate)
    if len(keyed) < 2 or any(v.plan.objective != "latency" for v in variants):
        return [v.plan for v in variants]
    trials = _measure(variants, keyed, rounds)
    if len(trials) < 2:
        return [v.plan for v in variants]
    verified = {key: t.median_ms for key, t in trials.items()}
    wholes = [ms for key, ms in verified.items() if not key.startswith(SPLIT)]
    best_whole = min(wholes, default=float("inf"))
    figures = ", ".join(f"{'the split' if k.startswith(SPLIT) else k} {ms:.2f} ms" for k, ms in verified.items())
    out = []
    for index, variant in enumerate(variants):
        mine = [key for key in trials if keyed[key][0] == index]
        if not mine:
            out.append(variant.plan)
            continue
        fastest = min(mine, key=verified.__getitem__)
        whole = [key for key in mine if not key.startswith(SPLIT)]
        if fastest.startswith(SPLIT) and whole and verified[fastest] > (1 - SPLIT_MARGIN) * best_whole:
            fastest = min(whole, key=verified.__getitem__)  # not clearly faster: the simpler placement
        chosen = keyed[fastest][1]
        plan = variant.plan
        own = plan.segments[0].accelerator if len(plan.segments) == 1 else None
        if chosen is plan:
            note = f"measured before adoption, in interleaved rounds: {figures}; the plan is fastest"
        else:
            was = "the split" if own is None else own
            than = f"faster than {was}"
            if own is None and not any(k.startswith(SPLIT) and verified[k] > verified[fastest] for k in mine):
                than = f"as the split is not {SPLIT_MARGIN:.0%} faster than a whole-model placement"
            note = (
                f"measured before adoption, in interleaved rounds: {figures}; runs whole on "
                f"{fastest.partition(' (')[0]}, {than}"
            )
        adopted, calibration = _calibrated(chosen, trials[fastest])
        reasons = (*chosen.reasons, calibration, note)
        out.append(replace(adopted, single=plan.single, excluded=plan.excluded, reasons=reasons, verified=verified))
    return out


def _contenders(variant: Variant) -> dict[str, Plan]:
    """The variant's split plan (when it has one) and each whole-model placement of it, by key."""
    plan = variant.plan
    contenders: dict[str, Plan] = {}
    whole = [name for name, ms in plan.single.items() if ms is not None and name in variant.capabilities]
    own = plan.segments[0].accelerator if len(plan.segments) == 1 else None
    if own is None:
        contenders[SPLIT] = plan
    for name in whole:
        contenders[name] = plan if name == own else _whole_on(plan, name, variant)
    return contenders


def _measure(variants: Sequence[Variant], keyed: Mapping[str, tuple[int, Plan]], rounds: int) -> dict[str, _Trial]:
    """Each placement that loads, measured in interleaved rounds: {} where fewer than two load."""
    executors: dict[str, PlanExecutor] = {}
    try:
        for key, (index, candidate) in keyed.items():
            try:
                executors[key] = variants[index].open_executor(candidate)
            except (AcceleratorError, ModelError) as exc:
                log.warning("verifying %s: %s cannot run it: %s", Path(candidate.model_path).name, key, exc)
        if len(executors) < 2:
            return {}
        inputs: dict[int, dict[str, np.ndarray]] = {i: model_inputs(v.profile.inputs) for i, v in enumerate(variants)}
        runners: dict[str, Callable[[], object]] = {
            key: partial(e.run, inputs[keyed[key][0]]) for key, e in executors.items()
        }
        timings = measure(runners, MIN_RUNS, rounds=rounds)
        return {
            key: _Trial(timings[key].median_ms, segment_shares(executors[key].stats(), timings[key].median_ms))
            for key in executors
        }
    except AcceleratorError as exc:
        names = ", ".join(sorted({Path(v.plan.model_path).name for v in variants}))
        log.warning("verifying %s failed, keeping the plan unverified: %s", names, exc)
        return {}
    finally:
        for executor in executors.values():
            executor.close()


def _calibrated(plan: Plan, trial: _Trial) -> tuple[Plan, str]:
    """The plan with its predictions replaced by what was measured (per segment, and the whole run), and
    the reason that says so."""
    segments = tuple(
        seg if ms is None else replace(seg, predicted_ms=ms, estimated_ms=_first(seg.estimated_ms, seg.predicted_ms))
        for seg, ms in zip(plan.segments, trial.segment_ms, strict=True)
    )
    note = (
        f"predictions calibrated to these runs: {trial.median_ms:.2f} ms measured, "
        f"{plan.predicted_ms:.2f} ms by the cost model"
    )
    return replace(plan, segments=segments, predicted_ms=trial.median_ms), note


def _whole_on(plan: Plan, name: str, variant: Variant) -> Plan:
    others = {n: "measured against the plan as a whole-model placement" for n in variant.capabilities if n != name}
    caps = {name: variant.capabilities[name]}
    return make_plan(variant.profile, caps, plan.objective, plan.fingerprint, others, measured=variant.measured)


def _first(value: float | None, otherwise: float) -> float:
    return otherwise if value is None else value
