"""Pipelined streams: each segment of a plan runs in its own thread, so consecutive frames occupy
different accelerators at once (throughput = the slowest stage, not the sum of them).

Stages are joined by bounded blocking queues: a slow stage holds back the ones before it instead of
letting frames pile up, and ``submit`` blocks when the first queue is full. Every stage takes frames
in order, so results come out in submission order, each with the token it was submitted with. A
frame that fails (bad inputs, or ``AcceleratorFailed`` from a stage) skips the remaining stages and
comes out in its place with the error. ``close`` abandons frames in flight: each stage finishes at
most the segment run it is in, then its thread exits.

``submit`` and ``get`` may be called from different threads; ``stream`` does both from one thread,
keeping no more frames in flight than the pipeline holds, so it never blocks on itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from accelerators.errors import InferenceError
from agent.runtime.executor import PlanExecutor
from agent.runtime.queues import Closed, StageQueue

log = logging.getLogger(__name__)

T = TypeVar("T")
JOIN_TIMEOUT_S = 30.0  # a stage still running after this is wedged in its runtime: log it, do not hang


@dataclass(frozen=True)
class Completed(Generic[T]):
    """One frame out of the pipeline: its outputs, or the error that stopped it."""

    token: T
    outputs: dict[str, np.ndarray] | None
    error: Exception | None
    latency_ms: float  # submit to completion, queueing included

    def result(self) -> dict[str, np.ndarray]:
        """The outputs, or raise the frame's error."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


@dataclass
class _Job(Generic[T]):
    token: T
    live: dict[str, np.ndarray]
    submitted: float
    error: Exception | None = field(default=None)


class PipelinedExecutor(Generic[T]):
    """Runs a PlanExecutor's segments as a pipeline of threads; owns and closes the executor."""

    def __init__(self, executor: PlanExecutor, depth: int = 2, owns: bool = True) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.executor = executor
        self._owns = owns  # False: the caller keeps the executor (and closes it) after the pipeline
        stages = len(executor.parts)
        self._inboxes: list[StageQueue[_Job[T]]] = [StageQueue(depth, "block") for _ in range(stages)]
        self._done: StageQueue[Completed[T]] = StageQueue(depth, "block")
        # Frames the pipeline holds when nobody takes results: every queue full and every stage busy.
        self.capacity = (stages + 1) * depth + stages
        self._stopping = threading.Event()
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._stage_main, args=(i,), name=f"stage{i}-{part.segment.accelerator}", daemon=True
            )
            for i, part in enumerate(executor.parts)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, token: T, inputs: Mapping[str, np.ndarray]) -> None:
        """Queue one frame (blocks while the first stage is full); raises Closed after ``close``."""
        try:
            job = _Job(token, self.executor.start(inputs), time.perf_counter())
        except InferenceError as exc:  # bad inputs: delivered in order, like any other failure of the frame
            job = _Job(token, {}, time.perf_counter(), exc)
        self._inboxes[0].put(job)

    def get(self, timeout: float | None = None) -> Completed[T]:
        """The next result in submission order; raises Closed once closed and drained, TimeoutError on timeout."""
        return self._done.get(timeout)

    def stream(self, frames: Iterable[tuple[T, Mapping[str, np.ndarray]]]) -> Iterator[Completed[T]]:
        """Submit every frame and yield every result, in order, from one thread."""
        inflight = 0
        for token, inputs in frames:
            if inflight >= self.capacity:
                yield self.get()
                inflight -= 1
            self.submit(token, inputs)
            inflight += 1
        for _ in range(inflight):
            yield self.get()

    def close(self) -> None:
        """Stop every stage, dropping frames in flight, and release the sessions. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()  # set first: a stage that wakes from a closed queue must not start more work
        for queue in self._inboxes:
            queue.close()
        self._done.close()
        wedged = []
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                wedged.append(thread.name)
        if wedged:  # its session is still running: closing it under the runtime could crash the process
            log.error("pipeline stage(s) %s did not stop; their sessions are left open", ", ".join(wedged))
            return
        if self._owns:
            self.executor.close()

    def _stage_main(self, index: int) -> None:
        inbox = self._inboxes[index]
        last = index == len(self._inboxes) - 1
        try:
            while not self._stopping.is_set():
                try:
                    job = inbox.get()
                except Closed:
                    return
                if self._stopping.is_set():
                    return
                if job.error is None:
                    try:
                        self.executor.run_stage(index, job.live)
                    except Exception as exc:  # anything a stage raises belongs to this frame, not the thread
                        job.error = exc
                        job.live = {}
                if last:
                    outputs = None if job.error is not None else self.executor.finish(job.live)
                    latency = (time.perf_counter() - job.submitted) * 1000
                    self._done.put(Completed(job.token, outputs, job.error, latency))
                else:
                    self._inboxes[index + 1].put(job)
        except Closed:  # the next queue closed under us: the pipeline is closing
            return
        finally:
            # Whatever ended this stage, the next one must not wait forever for frames that cannot come.
            (self._done if last else self._inboxes[index + 1]).close()
