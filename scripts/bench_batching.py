#!/usr/bin/env python3
"""Frames per second when a pipeline infers frames one by one vs in batches (pipelines.batch_size), measured
in one run through the agent's own code: the pipeline's pre-processing, LoadedModel.infer_batch, and the
per-frame split of the outputs.

    scripts/bench_batching.py [--frames 2000] [--sizes 1 4 8 16] [--rounds 5]

The model is the bundled digits classifier (ONNX, dynamic batch dimension), on onnxruntime's CPU engine and
on the planner's choice; the frames are the bundled 8x8 digit images. Rounds interleave the batch sizes so
that a noisy machine affects them alike; the figure per size is the median round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file, not installed: make the repository importable

from agent.config import PipelineConfig  # noqa: E402
from agent.pipeline import LoadedModel  # noqa: E402
from agent.sources.base import Frame  # noqa: E402
from agent.sources.replay import read_file  # noqa: E402

DIGITS = ROOT / "agent" / "demo" / "assets" / "digits"


def frames() -> list[Frame]:
    images = sorted((DIGITS / "images").glob("*.png"))
    return [read_file(p) for p in images]


def run(model: LoadedModel, samples: list[Frame], total: int, size: int) -> float:
    """Frames per second for ``total`` frames inferred ``size`` at a time."""
    t0 = time.perf_counter()
    done = 0
    while done < total:
        batch = [samples[(done + i) % len(samples)] for i in range(size)]
        prepared = [(f, *model.pre(f)) for f in batch]
        results = model.infer_batch(prepared)
        assert len(results) == size
        done += size
    return done / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per size and round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples = frames()
    print(f"{'backend':24} {'batch':>5} {'frames/s':>10} {'vs batch 1':>10}")
    for backend in ("onnxruntime-cpu", "auto"):
        cfg = PipelineConfig.model_validate(
            {
                "name": "digits",
                "source": {"type": "replay", "path": str(DIGITS / "images")},
                "model": {"path": str(DIGITS / "digits_mlp.onnx"), "backend": backend},
                "preprocess": {"color": "gray", "mean": [255.0], "std": [-255.0]},
                "postprocess": {"type": "classification", "top_k": 1},
            }
        )
        model = LoadedModel(cfg)
        assert model.batchable
        rates: dict[int, list[float]] = {size: [] for size in args.sizes}
        run(model, samples, 200, 1)  # warm up
        for r in range(args.rounds):
            order = args.sizes[r % len(args.sizes) :] + args.sizes[: r % len(args.sizes)]
            for size in order:
                rates[size].append(run(model, samples, args.frames, size))
        base = statistics.median(rates[args.sizes[0]])
        where = ",".join(model.session.accelerators)
        for size in args.sizes:
            fps = statistics.median(rates[size])
            label = f"auto ({where})" if backend == "auto" else backend
            print(f"{label:24} {size:5d} {fps:10.0f} {fps / base:10.2f}")
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
