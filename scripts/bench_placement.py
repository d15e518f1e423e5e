#!/usr/bin/env python3
"""Placement benchmark over the model zoo: the plan against every single engine, measured in one run.

For each zoo model (built by scripts/make_zoo.py from pinned wheels): calibrate the engines present
here once, plan the model as the daemon does over all its files (ONNX, and the TFLite original where
there is one: ``agent.placement.plan_variants``, which measures every file's placements in the same
rounds before adopting one); then measure, in interleaved rounds, the plan, each single engine on the
whole model (onnxruntime CPU, OpenVINO CPU, LiteRT XNNPACK) and an out-of-the-box onnxruntime session
(default options: all cores, spinning threads). Each single engine runs as the daemon would run it
alone: --threads threads (default: every core), BackendOptions.exclusive. Each placement is timed alone
in turns of a quarter second (after 50 ms of untimed runs, while the previous placement's threads go
idle), the placements rotating, --rounds times (``agent.runtime.rounds``), so a burst of load on a
shared machine slows every placement alike; medians with p10/p90 are reported. Reports plan / best single,
plan / worst single, out-of-the-box / plan (pooled medians, and paired: the median over rounds of the
ratio of two placements' turns in the same round, which cancels load that drifts over seconds), and
predicted vs measured per segment (calibrated, and the cost model's own estimate before calibration).

    .venv/bin/python scripts/bench_placement.py [--zoo .cache/zoo] [--only NAME ...] [--rounds 5] [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from accelerators.base import BackendOptions  # noqa: E402
from agent.doctor import examine  # noqa: E402
from agent.models.profile import profile_model  # noqa: E402
from agent.placement import candidates, open_plan, plan_variants  # noqa: E402
from agent.planner.measured import model_inputs  # noqa: E402
from agent.runtime.executor import segment_shares  # noqa: E402
from agent.runtime.rounds import measure, paired_ratio  # noqa: E402

ENGINES = ("onnxruntime-cpu", "openvino-cpu", "litert-cpu")


def bench_entry(entry: dict[str, Any], zoo: Path, state: Path, runs: int, rounds: int, threads: int) -> dict[str, Any]:
    variants = [zoo / entry["onnx"]] + ([zoo / entry["tflite"]] if entry.get("tflite") else [])
    # as the daemon plans a model given in several files: per-layer timing of each file on each engine,
    # then every file's placements measured in the same rounds before one is adopted
    plan, profile, found, path = plan_variants(
        variants, "latency", state_dir=state, input_shapes=entry["inputs"], only=ENGINES, measure=True, threads=threads
    )
    closers: list[Callable[[], None]] = []
    runners: dict[str, Callable[[], object]] = {}
    executor = open_plan(path, plan, profile, found.backends, state / "segments", threads, exclusive=True)
    closers.append(executor.close)
    plan_inputs = model_inputs(profile.inputs)
    runners["plan"] = lambda: executor.run(plan_inputs)
    onnx_path = zoo / entry["onnx"]
    for variant in variants:
        inputs = model_inputs(profile_model(variant, entry["inputs"]).inputs)
        for name, backend in candidates(variant.suffix, only=ENGINES).backends.items():
            # the daemon's session for a model alone on the device (agent.runtime.placed, a one-segment plan)
            session = backend.load(variant, BackendOptions(threads=threads, exclusive=True))
            closers.append(session.close)
            runners[name] = partial(session.run, inputs)
        if variant == onnx_path:
            onnx_inputs = inputs
    # Out of the box: default session options (all cores, spinning threads, full graph optimisation).
    default = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    runners["onnxruntime-default"] = lambda: default.run(None, onnx_inputs)
    try:
        timings = measure(runners, runs, rounds=rounds)
        stats = executor.stats()
        shares = segment_shares(stats, timings["plan"].median_ms)  # over every timed run, not the last turn's
        segments = [
            {"accelerator": s.accelerator, "layers": f"{s.start}-{s.stop - 1}", "predicted_ms": s.predicted_ms,
             "estimated_ms": seg.estimated_ms, "measured_ms": ms}
            for s, seg, ms in zip(stats, plan.segments, shares, strict=True)
        ]  # fmt: skip
    finally:
        for close in closers:
            close()
    singles = {n: t.median_ms for n, t in timings.items() if n in ENGINES}
    best = min(singles, key=singles.__getitem__)
    worst = max(singles, key=singles.__getitem__)
    plan_ms = timings["plan"].median_ms
    return {
        "model": entry["name"],
        "kind": entry["kind"],
        "variant": path.suffix,
        "plan": " + ".join(f"{s.accelerator}[{s.start}-{s.stop - 1}]" for s in plan.segments),
        "predicted_ms": plan.predicted_ms,
        "plan_ms": plan_ms,
        "plan_p10_p90": [timings["plan"].p10_ms, timings["plan"].p90_ms],
        "single": singles,
        "single_p10_p90": {n: [timings[n].p10_ms, timings[n].p90_ms] for n in singles},
        "default_p10_p90": [timings["onnxruntime-default"].p10_ms, timings["onnxruntime-default"].p90_ms],
        "verified": plan.verified,
        "best": best,
        "worst": worst,
        "default_ms": timings["onnxruntime-default"].median_ms,
        "plan_vs_best": plan_ms / singles[best],
        "plan_vs_worst": plan_ms / singles[worst],
        "default_vs_plan": timings["onnxruntime-default"].median_ms / plan_ms,
        # the same ratios taken round by round, each from turns a second apart (agent.runtime.rounds.paired_ratio)
        "plan_vs_best_paired": paired_ratio(timings["plan"], timings[best]),
        "default_vs_plan_paired": paired_ratio(timings["onnxruntime-default"], timings["plan"]),
        "segments": segments,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / ".cache" / "zoo", help="zoo folder (built if missing)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these zoo models")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per placement, at least (default: 30)")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each placement (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per session (default: every core)"
    )
    args = parser.parse_args()
    if not (args.zoo / "zoo.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_zoo.py"), str(args.zoo)], check=True)
    entries = [e for e in json.loads((args.zoo / "zoo.json").read_text()) if not args.only or e["name"] in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-placement-") as tmp:
        state = Path(tmp)
        examine((), state / "calibration", measure=True, only=ENGINES, budget_s=0.2, threads=args.threads)
        for entry in entries:
            rows.append(bench_entry(entry, args.zoo, state, args.runs, args.rounds, args.threads))
            if not args.json:
                _print_row(rows[-1], first=len(rows) == 1)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _summary(rows)
    return 0


def _print_row(r: dict[str, Any], first: bool) -> None:
    if first:
        print(f"{'model':<28}{'kind':<13}{'plan ms':>9}{'p10-p90':>13}{'pred':>8}{'ort':>8}{'ov':>8}{'litert':>8}"
              f"{'ort-dflt':>9}{'plan/best':>10}{'paired':>7}{'dflt/plan':>10}{'paired':>7}  plan")  # fmt: skip
    s = r["single"]
    cell = {n: f"{s[n]:.2f}" if n in s else "-" for n in ENGINES}
    p10, p90 = r["plan_p10_p90"]
    print(
        f"{r['model']:<28}{r['kind']:<13}{r['plan_ms']:>9.2f}{f'{p10:.2f}-{p90:.2f}':>13}{r['predicted_ms']:>8.2f}"
        f"{cell['onnxruntime-cpu']:>8}{cell['openvino-cpu']:>8}{cell['litert-cpu']:>8}{r['default_ms']:>9.2f}"
        f"{r['plan_vs_best']:>10.2f}{r['plan_vs_best_paired']:>7.2f}{r['default_vs_plan']:>10.2f}"
        f"{r['default_vs_plan_paired']:>7.2f}  {r['plan']}",
        flush=True,
    )


def _within(predicted: float | None, measured: float | None) -> bool:
    return predicted is not None and measured is not None and abs(measured / predicted - 1) <= 0.2


def _summary(rows: list[dict[str, Any]]) -> None:
    segments = [seg for r in rows for seg in r["segments"]]
    calibrated = sum(_within(seg["predicted_ms"], seg["measured_ms"]) for seg in segments)
    estimated = sum(_within(seg["estimated_ms"] or seg["predicted_ms"], seg["measured_ms"]) for seg in segments)
    print()
    n = len(rows)
    print(
        f"plan <= 1.05x best single engine : {sum(r['plan_vs_best'] <= 1.05 for r in rows)}/{n} models "
        f"(paired by round: {sum(r['plan_vs_best_paired'] <= 1.05 for r in rows)}/{n})"
    )
    print(
        f"plan >= 1.5x faster than default : {sum(r['default_vs_plan'] >= 1.5 for r in rows)}/{n} models "
        f"(paired by round: {sum(r['default_vs_plan_paired'] >= 1.5 for r in rows)}/{n})"
    )
    oracle = sum(r["default_ms"] / min(r["single"].values()) >= 1.5 for r in rows)
    print(f"  (the best single engine, chosen after the fact, is >= 1.5x faster than default on {oracle}/{n})")
    print(f"segments predicted within +-20%  : {calibrated}/{len(segments)} (calibrated at plan time), "
          f"{estimated}/{len(segments)} (cost model alone, before calibration)")  # fmt: skip
    print("segments (cost model -> calibrated prediction -> measured ms):")
    for r in rows:
        for seg in r["segments"]:
            est = "-" if seg["estimated_ms"] is None else f"{seg['estimated_ms']:.2f}"
            print(f"  {r['model']:<28}{seg['accelerator']:<18}{seg['layers']:>9}{est:>9} ->"
                  f"{seg['predicted_ms']:>7.2f} -> {seg['measured_ms']:.2f}")  # fmt: skip
    print("p10-p90 of each single engine (ms):")
    for r in rows:
        spread = "  ".join(f"{n} {a:.2f}-{b:.2f}" for n, (a, b) in r["single_p10_p90"].items())
        low, high = r["default_p10_p90"]
        print(f"  {r['model']:<28}{spread}  onnxruntime-default {low:.2f}-{high:.2f}")


if __name__ == "__main__":
    sys.exit(main())
