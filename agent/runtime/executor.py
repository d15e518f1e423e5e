"""Run a plan: one session per segment, tensors handed from segment to segment, per-segment timings.

``PlanExecutor`` stands in for a ``Session`` (``inputs``, ``outputs``, ``run``, ``close``). Tensors
live in one dict per frame; each is dropped as soon as no later segment reads it, so a frame holds
only the activations crossing the current cut, not every boundary at once.

Failure policy: a frame the caller got wrong (a missing input, a wrong shape or dtype) raises
``InputError`` (an ``InferenceError``) before any runtime runs it; it says nothing about the
accelerators. After that every tensor a segment gets was made by the plan itself, so a segment whose
session raises otherwise is the accelerator's fault: the segment is retried at once with the same
tensors (``attempts`` runs in all, which rides out a transient fault such as a USB hiccup without
losing the frame), and if every attempt fails the executor raises ``AcceleratorFailed`` naming the
accelerator. Loading works the same way: an accelerator that is absent or cannot load its segment
raises ``AcceleratorFailed`` from the constructor. ``FailoverExecutor`` (``agent.runtime.failover``)
acts on it: it re-plans without that accelerator and re-runs the frame.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from accelerators.base import Backend, BackendOptions, FixedSpecs, Session, check_inputs
from accelerators.errors import AcceleratorError, InferenceError, InputError
from agent.errors import ModelError
from agent.planner.plan import Plan, Segment
from agent.runtime.split import SegmentModel

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 2  # runs of a failing segment on one frame before its accelerator is declared failed
TIMING_WINDOW = 256  # recent runs the median is taken over
EWMA_ALPHA = 0.1  # weight of the newest run: ~10 runs to follow a step, smooth enough to ignore one spike


class AcceleratorFailed(InferenceError):
    """An accelerator could not run (or load) its segment: re-plan without it.

    An ``InferenceError``, so a caller that only counts failed inferences (the pipeline worker) keeps
    working with a plain executor; ``FailoverExecutor`` catches it and re-plans instead.
    """

    def __init__(self, accelerator: str, reason: str, segment: int | None = None) -> None:
        where = f" (segment {segment})" if segment is not None else ""
        super().__init__(f"accelerator {accelerator}{where} failed: {reason}")
        self.accelerator = accelerator
        self.reason = reason
        self.segment = segment


@dataclass(frozen=True)
class SegmentStats:
    """How one segment has been running, for logs and for checking the plan's predictions."""

    accelerator: str
    start: int
    stop: int
    predicted_ms: float
    runs: int  # successful runs
    failures: int  # failed attempts (each retried or escalated)
    last_ms: float | None
    ewma_ms: float | None
    median_ms: float | None  # over the last TIMING_WINDOW runs

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class _Timing:
    """Per-segment timings; written by the one thread running the segment, read by any.

    ``record`` runs after every inference, so it only counts and appends, without a lock (measured:
    2.3 us a run with one, on a 0.11 ms model); the figures are worked out when read. A reader copies the
    window with ``deque.copy``, which runs in C under the GIL: it cannot see a half-made append.
    """

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.runs = 0
        self.failures = 0
        self._recent: deque[float] = deque(maxlen=TIMING_WINDOW)

    def record(self, ms: float) -> None:
        self.runs += 1
        self._recent.append(ms)

    def failed(self) -> None:
        self.failures += 1

    def stats(self) -> SegmentStats:
        recent = self._recent.copy()
        return SegmentStats(
            accelerator=self.segment.accelerator,
            start=self.segment.start,
            stop=self.segment.stop,
            predicted_ms=self.segment.predicted_ms,
            runs=self.runs,
            failures=self.failures,
            last_ms=recent[-1] if recent else None,
            ewma_ms=_ewma(recent),
            median_ms=statistics.median(recent) if recent else None,
        )


class PlanExecutor(FixedSpecs):
    """A plan's segments loaded on their accelerators, run one after another. Not thread-safe, like a
    Session; ``run_stage`` lets ``PipelinedExecutor`` run different segments in different threads."""

    def __init__(
        self,
        plan: Plan,
        segment_models: Sequence[SegmentModel],
        backends: Mapping[str, Backend],
        threads: int = 1,
        attempts: int = DEFAULT_ATTEMPTS,
        exclusive: bool = False,
    ) -> None:
        """``exclusive``: this model is the only one on the device; a plan of one segment then lets its
        runtime's threads spin (``BackendOptions.exclusive``), a plan of several never does."""
        if [m.segment for m in segment_models] != list(plan.segments):
            raise ModelError(f"{plan.model_path}: the segment models are not those of the plan; split it again")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.plan = plan
        self.parts = tuple(segment_models)
        self.attempts = attempts
        self._sessions: list[Session] = []
        self._timings = [_Timing(m.segment) for m in self.parts]
        options = BackendOptions(threads=threads, exclusive=exclusive and len(self.parts) == 1)
        try:
            for index, part in enumerate(self.parts):
                self._sessions.append(_load(index, part, backends, options))
        except BaseException:
            self.close()
            raise
        graph_inputs = self.parts[0].graph_inputs if self.parts else ()
        graph_outputs = self.parts[0].graph_outputs if self.parts else ()
        specs_in = {s.name: s for session in reversed(self._sessions) for s in session.inputs}
        specs_out = {s.name: s for session in self._sessions for s in session.outputs}
        self._inputs = tuple(specs_in[n] for n in graph_inputs if n in specs_in)
        missing = [n for n in graph_outputs if n not in specs_out and n not in specs_in]
        if missing:
            self.close()
            raise ModelError(f"{plan.model_path}: no segment produces model output(s) {', '.join(missing)}")
        self._outputs = tuple(specs_out.get(n) or specs_in[n] for n in graph_outputs)
        self._graph_outputs = graph_outputs
        # one segment making exactly the model's outputs: the frame goes to its session and back as it is
        self._direct = len(self.parts) == 1 and tuple(s.name for s in self._sessions[0].outputs) == graph_outputs
        # After segment i, drop what no later segment reads and the caller does not want.
        last_read: dict[str, int] = {}
        for index, part in enumerate(self.parts):
            last_read.update(dict.fromkeys([*part.inputs, *part.outputs], index))
        keep = set(graph_outputs)
        self._drop_after = [
            tuple(n for n, at in last_read.items() if at == index and n not in keep) for index in range(len(self.parts))
        ]

    @property
    def accelerators(self) -> tuple[str, ...]:
        return self.plan.accelerators

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run every segment on one frame; AcceleratorFailed when a segment's accelerator gives up."""
        if self._direct:  # the whole model in one session, which checks the frame itself
            return self._attempt(0, inputs)
        live = self.start(inputs)
        for index in range(len(self.parts)):
            self.run_stage(index, live)
        return self.finish(live)

    def start(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check a frame's inputs (InputError: the caller's mistake) and make its live-tensor dict."""
        check_inputs(self._inputs, inputs)
        live = {spec.name: inputs[spec.name] for spec in self._inputs}
        for name in self._graph_outputs:  # a model output that is a model input passes straight through
            if name not in live and name in inputs:
                live[name] = inputs[name]
        return live

    def run_stage(self, index: int, live: dict[str, np.ndarray]) -> None:
        """Run segment ``index`` on a frame's live tensors, in place: add its outputs, drop dead tensors."""
        produced = self._attempt(index, {name: live[name] for name in self.parts[index].inputs})
        for name in self.parts[index].outputs:
            live[name] = produced[name]
        for name in self._drop_after[index]:
            live.pop(name, None)

    def _attempt(self, index: int, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Segment ``index``'s outputs for ``feed``, retried up to ``attempts`` times on its accelerator.

        Kept lean: on a model of a tenth of a millisecond each microsecond here is 1% of the run. A plan
        of one segment skips the frame's live-tensor dicts and the executor's own input check (its
        session checks): with the lock-free timings, measured on the VAD model (0.11 ms), about 12 us a
        run over the bare session before, 5 us after.
        """
        session, timing = self._sessions[index], self._timings[index]
        error: AcceleratorError | None = None
        for attempt in range(1, self.attempts + 1):
            t0 = time.perf_counter()
            try:
                produced = session.run(feed)
            except InputError:
                raise  # the frame does not fit the model: no accelerator's fault
            except AcceleratorError as exc:
                timing.failed()
                error = exc
                log.warning("segment %d on %s failed (attempt %d of %d): %s", index,
                            timing.segment.accelerator, attempt, self.attempts, exc)  # fmt: skip
                continue
            timing.record((time.perf_counter() - t0) * 1000)
            return produced
        s = timing.segment
        reason = f"layers [{s.start}, {s.stop}) failed {self.attempts} time(s) in a row: {error}"
        raise AcceleratorFailed(s.accelerator, reason, index) from error

    def finish(self, live: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: live[name] for name in self._graph_outputs}

    def stats(self) -> list[SegmentStats]:
        return [t.stats() for t in self._timings]

    def close(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            try:
                session.close()
            except Exception as exc:  # a broken runtime must not stop the others from being released
                log.warning("closing a segment session failed: %s", exc)


def segment_shares(stats: Sequence[SegmentStats], whole_ms: float) -> tuple[float | None, ...]:
    """Each segment's part of ``whole_ms``, a plan's median over a measurement, in proportion to the
    segments' own medians (as they are where one has none).

    A segment's median covers only its last TIMING_WINDOW runs: on a fast model, the last few hundred
    milliseconds of a measurement (and its settling runs), which a change of load can set apart from the
    rest (measured: 0.97 ms over a face detector's last turn, 0.73 ms over all its turns). The whole
    run's median covers every timed run, so the segments are given their shares of it.
    """
    medians = [st.median_ms for st in stats]
    known = [ms for ms in medians if ms is not None]
    if len(known) < len(medians) or sum(known) <= 0:
        return tuple(medians)
    total = sum(known)
    return tuple(whole_ms * ms / total for ms in known)


def _ewma(values: Iterable[float]) -> float | None:
    """Exponentially weighted mean, newest weighing EWMA_ALPHA (over a full window, the runs before it
    would weigh (1 - EWMA_ALPHA) ** TIMING_WINDOW: nothing)."""
    mean: float | None = None
    for ms in values:
        mean = ms if mean is None else mean + EWMA_ALPHA * (ms - mean)
    return mean


def _load(index: int, part: SegmentModel, backends: Mapping[str, Backend], options: BackendOptions) -> Session:
    """Load one segment; any way its accelerator cannot take it is AcceleratorFailed."""
    name = part.segment.accelerator
    backend = backends.get(name)
    if backend is None:
        raise AcceleratorFailed(name, "no such accelerator on this device", index)
    try:
        session = backend.load(part.path, options)
    except AcceleratorError as exc:
        raise AcceleratorFailed(name, f"cannot load {part.path.name}: {exc}", index) from exc
    got_in = {s.name for s in session.inputs}
    got_out = {s.name for s in session.outputs}
    if got_in != set(part.inputs) or not set(part.outputs) <= got_out:
        session.close()
        # e.g. a runtime that fuses two nodes and reports the fused output under the other node's name
        raise AcceleratorFailed(
            name, f"its runtime names {part.path.name}'s tensors {sorted(got_in)} -> {sorted(got_out)}, the segment "
            f"needs {list(part.inputs)} -> {list(part.outputs)}", index,
        )  # fmt: skip
    return session
