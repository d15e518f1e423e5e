"""Per-layer timing: how long each node of a model takes on one accelerator, measured by its runtime.

An optional capability of a backend (``LayerProfiler``): onnxruntime and OpenVINO report a time per
executed node; the others can only be timed as a whole model (``time_whole``). Node names are the
runtime's, which after graph optimisation are not always the model's: a runtime may fuse several
model nodes into one (reported under one of their names, or with ``fused`` listing them), rename
nodes, or add its own (layout reorders). Mapping them back to a model's layers is the caller's job.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from accelerators.base import Backend, BackendOptions, Session

WARMUP_RUNS = 2  # the first runs allocate buffers and pick kernels: never timed


@dataclass(frozen=True)
class LayerTimes:
    """Median milliseconds per run, per runtime node, over ``runs`` runs after a warm-up."""

    node_ms: dict[str, float]  # runtime node name -> median ms per run (0 for nodes fused into another)
    wall_ms: float  # the whole run as the caller saw it, median ms (profiling overhead included)
    runs: int
    node_ops: dict[str, str] = field(default_factory=dict)  # runtime node -> the op it ran, e.g. "Conv"
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> model nodes it ran, where known

    @property
    def total_ms(self) -> float:
        return sum(self.node_ms.values())


@runtime_checkable
class LayerProfiler(Protocol):
    """A backend whose runtime times each node of a model (onnxruntime, OpenVINO)."""

    name: str

    def profile_layers(
        self, model: Path, inputs: Mapping[str, np.ndarray], runs: int = 15, options: BackendOptions | None = None
    ) -> LayerTimes:
        """Load ``model`` with profiling on, run it ``runs`` times after a warm-up, and return the times.

        Raises ModelLoadError / InferenceError like ``load`` and ``Session.run``."""
        ...


def median_per_node(samples: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Median over runs of each node's ms; a node missing from a run (a branch not taken) counts 0 there."""
    runs = list(samples)
    names = dict.fromkeys(name for run in runs for name in run)
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def timed_run(session: Session, inputs: Mapping[str, np.ndarray]) -> float:
    """One run's wall-clock milliseconds."""
    start = time.perf_counter()
    session.run(inputs)
    return (time.perf_counter() - start) * 1e3


def time_whole(
    backend: Backend,
    model: Path,
    inputs: Mapping[str, np.ndarray],
    runs: int = 15,
    options: BackendOptions | None = None,
) -> LayerTimes:
    """The whole model's time only, through the plain ``Session`` (for runtimes without a node profiler:
    LiteRT's Python interpreter, for one, has none)."""
    session = backend.load(model, options)
    try:
        for _ in range(WARMUP_RUNS):
            session.run(inputs)
        wall = statistics.median(timed_run(session, inputs) for _ in range(max(runs, 1)))
    finally:
        session.close()
    return LayerTimes(node_ms={}, wall_ms=wall, runs=max(runs, 1))


def profile_layers(
    backend: Backend,
    model: Path,
    inputs: Mapping[str, np.ndarray],
    runs: int = 15,
    options: BackendOptions | None = None,
) -> LayerTimes:
    """Per-node times where the backend's runtime reports them, else only the whole model's time."""
    if isinstance(backend, LayerProfiler):
        return backend.profile_layers(model, inputs, runs, options)
    return time_whole(backend, model, inputs, runs, options)
