#!/usr/bin/env python3
"""Placement benchmark over the model zoo: the plan against every single engine, measured in one run.

For each zoo model (built by scripts/make_zoo.py from pinned wheels): calibrate the engines present
here once, plan each variant of the model (ONNX, and the TFLite original where there is one) and keep
the variant whose plan predicts fastest; then measure, in interleaved rounds, the plan, each single
engine on the whole model (onnxruntime CPU, OpenVINO CPU, LiteRT XNNPACK), and an out-of-the-box
onnxruntime session (default options: all cores, spinning threads). Engines get --threads threads
each (default: every core, as one model alone on the device would). Reports plan / best single,
plan / worst single, out-of-the-box / plan, and predicted vs measured per segment.

    .venv/bin/python scripts/bench_placement.py [--zoo .cache/zoo] [--only NAME ...] [--runs 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from accelerators.base import BackendOptions  # noqa: E402
from agent.doctor import examine  # noqa: E402
from agent.placement import open_plan, plan_for  # noqa: E402
from agent.planner.measured import model_inputs  # noqa: E402
from agent.planner.plan import Plan  # noqa: E402
from agent.runtime.rounds import measure  # noqa: E402

ENGINES = ("onnxruntime-cpu", "openvino-cpu", "litert-cpu")


def _plan(path: Path, state: Path, shapes: dict[str, list[int]], threads: int) -> tuple[Plan, Any, Any]:
    # per-layer measurement first: the plan rests on this model's own timings on each engine
    return plan_for(path, "latency", state_dir=state, input_shapes=shapes, only=ENGINES, measure=True, threads=threads)


def bench_entry(entry: dict[str, Any], zoo: Path, state: Path, runs: int, threads: int) -> dict[str, Any]:
    variants = [zoo / entry["onnx"]] + ([zoo / entry["tflite"]] if entry.get("tflite") else [])
    planned = [(path, *_plan(path, state, entry["inputs"], threads)) for path in variants]
    path, plan, profile, found = min(planned, key=lambda p: p[1].predicted_ms)
    closers: list[Callable[[], None]] = []
    runners: dict[str, Callable[[], object]] = {}
    executor = open_plan(path, plan, profile, found.backends, state / "segments", threads, exclusive=True)
    closers.append(executor.close)
    plan_inputs = model_inputs(profile.inputs)
    runners["plan"] = lambda: executor.run(plan_inputs)
    for variant, _, vprofile, vfound in planned:
        inputs = model_inputs(vprofile.inputs)
        for name, backend in vfound.backends.items():
            session = backend.load(variant, BackendOptions(threads=threads, exclusive=True))
            closers.append(session.close)
            runners[name] = lambda s=session, i=inputs: s.run(i)
    onnx_path = zoo / entry["onnx"]
    onnx_inputs = model_inputs(next(p for v, _, p, _ in planned if v == onnx_path).inputs)
    try:
        timings = measure(runners, runs)
        # Out of the box, onnxruntime's threads keep spinning after each run and would slow whichever
        # runner came next, so it is measured on its own, after the others.
        default = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        timings.update(measure({"onnxruntime-default": lambda: default.run(None, onnx_inputs)}, runs))
        segments = [
            {"accelerator": s.accelerator, "layers": f"{s.start}-{s.stop - 1}", "predicted_ms": s.predicted_ms,
             "measured_ms": s.median_ms}
            for s in executor.stats()
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
        "single_predicted": {n: ms for _, p, _, _ in planned for n, ms in p.single.items() if ms is not None},
        "best": best,
        "worst": worst,
        "default_ms": timings["onnxruntime-default"].median_ms,
        "plan_vs_best": plan_ms / singles[best],
        "plan_vs_worst": plan_ms / singles[worst],
        "default_vs_plan": timings["onnxruntime-default"].median_ms / plan_ms,
        "segments": segments,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / ".cache" / "zoo", help="zoo folder (built if missing)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these zoo models")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per placement (default: 40)")
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
            rows.append(bench_entry(entry, args.zoo, state, args.runs, args.threads))
            if not args.json:
                _print_row(rows[-1], first=len(rows) == 1)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _summary(rows)
    return 0


def _print_row(r: dict[str, Any], first: bool) -> None:
    if first:
        print(f"{'model':<28}{'kind':<13}{'plan ms':>9}{'pred':>8}{'ort':>8}{'ov':>8}{'litert':>8}{'ort-dflt':>9}"
              f"{'plan/best':>10}{'dflt/plan':>10}  plan")  # fmt: skip
    s = r["single"]
    cell = {n: f"{s[n]:.2f}" if n in s else "-" for n in ENGINES}
    print(
        f"{r['model']:<28}{r['kind']:<13}{r['plan_ms']:>9.2f}{r['predicted_ms']:>8.2f}{cell['onnxruntime-cpu']:>8}"
        f"{cell['openvino-cpu']:>8}{cell['litert-cpu']:>8}{r['default_ms']:>9.2f}{r['plan_vs_best']:>10.2f}"
        f"{r['default_vs_plan']:>10.2f}  {r['plan']}",
        flush=True,
    )


def _summary(rows: list[dict[str, Any]]) -> None:
    within = [abs(seg["measured_ms"] / seg["predicted_ms"] - 1) <= 0.2 for r in rows for seg in r["segments"]]
    print()
    print(f"plan <= 1.05x best single engine : {sum(r['plan_vs_best'] <= 1.05 for r in rows)}/{len(rows)} models")
    print(f"plan >= 1.5x faster than default : {sum(r['default_vs_plan'] >= 1.5 for r in rows)}/{len(rows)} models")
    print(f"segments predicted within +-20%  : {sum(within)}/{len(within)}")
    print("segments (predicted -> measured ms):")
    for r in rows:
        for seg in r["segments"]:
            print(f"  {r['model']:<28}{seg['accelerator']:<18}{seg['layers']:>9}"
                  f"{seg['predicted_ms']:>9.2f} -> {seg['measured_ms']:.2f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
