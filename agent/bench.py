"""``edge-agent bench``: the planned placement and every single-accelerator placement, measured in one run
(in rotating rounds of time blocks: ``agent.runtime.rounds``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from accelerators.base import BackendOptions, Session
from accelerators.errors import AcceleratorError
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.placement import Candidates, open_plan
from agent.planner.measured import model_inputs
from agent.planner.plan import Plan
from agent.runtime.executor import PlanExecutor, segment_shares
from agent.runtime.pipelined import PipelinedExecutor
from agent.runtime.rounds import Timing, measure

__all__ = ["Timing", "bench", "format_bench", "measure"]


def bench(
    model: Path,
    plan: Plan,
    profile: ModelProfile,
    found: Candidates,
    work_dir: Path,
    runs: int = 50,
    threads: int = 1,
    rounds: int = 5,
) -> dict[str, object]:
    """Measure the plan and each accelerator that can run the whole model (``runs`` timed runs each at
    least, in ``rounds`` turns); predicted next to measured."""
    inputs = model_inputs(profile.inputs)  # the inputs the layers were timed on
    sessions: dict[str, Session] = {}
    executor = open_plan(model, plan, profile, found.backends, work_dir, threads, exclusive=True)
    try:
        runners: dict[str, Callable[[], object]] = {"plan": lambda: executor.run(inputs)}
        skipped: dict[str, str] = {}
        for name, predicted in plan.single.items():
            if predicted is None or name not in found.backends:
                skipped[name] = "cannot run the whole model"
                continue
            try:
                session = found.backends[name].load(model, BackendOptions(threads=threads, exclusive=True))
                session.run(inputs)
            except AcceleratorError as exc:
                skipped[name] = str(exc)
                continue
            sessions[name] = session
            runners[name] = lambda s=session: s.run(inputs)  # type: ignore[misc]
        # turns of a quarter second, rotating: a burst of load on a shared device hits every placement alike
        timings = measure(runners, runs, rounds=rounds)
        pipelined = _pipelined_interval(executor, inputs, runs) if plan.objective == "throughput" else None
        stats = executor.stats()
        shares = segment_shares(stats, timings["plan"].median_ms)
        segments = [
            {
                "accelerator": st.accelerator,
                "start": st.start,
                "stop": st.stop,
                "predicted_ms": st.predicted_ms,
                "estimated_ms": seg.estimated_ms,  # the cost model's, where the prediction was calibrated
                "measured_ms": ms,  # its share of the plan's median (agent.runtime.executor.segment_shares)
            }
            for st, seg, ms in zip(stats, plan.segments, shares, strict=True)
        ]
    except AcceleratorError as exc:
        raise ModelError(f"{model}: {exc}") from exc
    finally:
        executor.close()
        for session in sessions.values():
            session.close()
    single = {name: timings[name].median_ms for name in sessions}
    return {
        "model": str(model),
        "objective": plan.objective,
        "accelerators": list(plan.accelerators),
        "plan_ms": timings["plan"].median_ms,
        "plan_timing": timings["plan"].to_json(),
        "predicted_ms": plan.predicted_ms,
        "single": single,
        "single_timing": {name: timings[name].to_json() for name in sessions},
        "single_predicted": {name: plan.single[name] for name in sessions},
        "skipped": skipped,
        "segments": segments,
        "pipelined_interval_ms": pipelined,
        "plan": plan.to_json(),
    }


def _pipelined_interval(executor: PlanExecutor, inputs: Mapping[str, np.ndarray], runs: int) -> float | None:
    """Milliseconds between results with the plan's stages working on different frames at once."""
    if len(executor.parts) < 2:
        return None
    pipeline: PipelinedExecutor[int] = PipelinedExecutor(executor, owns=False)
    frames = max(runs, 2 * pipeline.capacity)
    start = time.perf_counter()
    count = sum(1 for done in pipeline.stream((i, inputs) for i in range(frames)) if done.error is None)
    elapsed = time.perf_counter() - start
    pipeline.close()
    return elapsed * 1e3 / max(count, 1)


def format_bench(result: Mapping[str, object]) -> str:
    lines = [f"{result['model']} ({result['objective']}), planned on {', '.join(result['accelerators'])}:"]  # type: ignore[arg-type]
    plan_t = result["plan_timing"]
    single_t = result["single_timing"]
    single_p = result["single_predicted"]
    assert isinstance(plan_t, dict) and isinstance(single_t, dict) and isinstance(single_p, dict)
    lines.append(f"{'placement':<24}{'predicted':>11}{'measured':>11}{'p10':>9}{'p90':>9}")
    lines.append(
        f"{'plan':<24}{result['predicted_ms']:>9.2f}ms{plan_t['median_ms']:>9.2f}ms"
        f"{plan_t['p10_ms']:>7.2f}ms{plan_t['p90_ms']:>7.2f}ms"
    )
    for name, t in single_t.items():
        lines.append(
            f"{name:<24}{single_p[name]:>9.2f}ms{t['median_ms']:>9.2f}ms{t['p10_ms']:>7.2f}ms{t['p90_ms']:>7.2f}ms"
        )
    skipped = result["skipped"]
    assert isinstance(skipped, dict)
    lines += [f"{name:<24}not measured: {why}" for name, why in skipped.items()]
    best = min(single_t.values(), key=lambda t: t["median_ms"], default=None)
    if best:
        lines.append(f"plan / best single accelerator (measured): {plan_t['median_ms'] / best['median_ms']:.2f}")
    segments = result["segments"]
    assert isinstance(segments, list)
    interval = result.get("pipelined_interval_ms")
    if isinstance(interval, float):
        lines.append(f"pipelined (stages on different frames at once): one result every {interval:.2f} ms")
    if len(segments) > 1:
        lines.append("segments (predicted -> measured median):")
        for seg in segments:
            measured = "-" if seg["measured_ms"] is None else f"{seg['measured_ms']:.2f} ms"
            where = f"layers {seg['start']}-{seg['stop'] - 1} on {seg['accelerator']}"
            lines.append(f"  {where}: {seg['predicted_ms']:.2f} ms -> {measured}")
    return "\n".join(lines)
