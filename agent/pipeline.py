"""One pipeline: source thread -> frame queue -> inference thread -> result queue -> durable outbox.

The source and the inference worker are threads (blocking reads, and runtimes that release the GIL);
the publisher is a coroutine on the agent's event loop that writes results to the outbox (on disk) in
bursts, from where the agent's ``OutboxSender`` delivers them. Frames beyond ``queue_size`` are
dropped oldest-first and counted; results never are: the inference thread waits for the publisher
instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from accelerators.base import BackendConfig, TensorSpec
from accelerators.errors import AcceleratorError, InferenceError
from agent.config import PipelineConfig
from agent.errors import AgentError, ModelError, SourceError
from agent.mqtt.sender import OutboxSender
from agent.mqtt.topics import Topics
from agent.runtime.health import ModelHealth
from agent.runtime.placed import PlacedModel
from agent.runtime.queues import Closed, StageQueue
from agent.runtime.threads import run_in_thread
from agent.sources.base import Frame
from agent.sources.multi import build_source
from agent.sources.postprocess import Postprocessor, build_postprocessor
from agent.sources.preprocess import Letterbox, Preprocessor
from agent.sources.snapshot import annotated_jpeg
from agent.state import SeqAllocator

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 20
OUTBOX_BURST = 256  # results written to the outbox in one transaction, at most


@dataclass
class Counters:
    frames: int = 0  # taken from the source
    bad_inputs: int = 0  # inputs the model could not take (wrong tensor shape, ...)
    inferences: int = 0  # frames inferred
    batches: int = 0  # model runs that inferred them (fewer with batching)
    inference_errors: int = 0
    stored: int = 0  # written to the outbox
    snapshots: int = 0  # annotated JPEGs published
    published: int = 0  # acknowledged by the broker
    publish_failed: int = 0  # refused by the broker
    unacked_at_stop: int = 0  # left in the outbox at stop, for the next start
    inference_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        recent = self.inference_ms[-1000:]
        return {
            "frames": self.frames,
            "bad_inputs": self.bad_inputs,
            "inferences": self.inferences,
            "batches": self.batches,
            "inference_errors": self.inference_errors,
            "stored": self.stored,
            "published": self.published,
            "publish_failed": self.publish_failed,
            "inference_ms_p50": round(float(np.percentile(recent, 50)), 3) if recent else None,
        }


@dataclass(frozen=True)
class Inferred:
    """Raw model outputs; post-processing happens on the publisher's side, off the inference thread."""

    frame: Frame
    outputs: dict[str, np.ndarray]
    box: Letterbox
    inference_ms: float
    model: LoadedModel  # the model that ran it (an OTA swap changes it between frames)
    accelerators: tuple[str, ...] = ()  # where this frame ran (a failover changes it between frames)
    failed: dict[str, str] | None = None  # accelerators that had failed by then, when degraded
    batch: int = 1  # frames inferred together with this one (inference_ms is the batch's)


class LoadedModel:
    """A model opened on its backend, with the pre/post-processing built for its tensors."""

    def __init__(
        self, cfg: PipelineConfig, backends: tuple[BackendConfig, ...] = (), state_dir: Path | None = None
    ) -> None:
        self.cfg = cfg
        try:
            self.session = PlacedModel(cfg.model, backends, state_dir)
        except AgentError as exc:
            raise ModelError(f"pipeline {cfg.name!r}: {exc}") from exc
        self.input, self._state, self._constants = _bind_inputs(cfg, self.session.inputs, self.session.outputs)
        self.pre = Preprocessor(cfg.preprocess, self.input)
        self.post: Postprocessor = build_postprocessor(cfg.postprocess, self.session.outputs)
        self.name = cfg.model.name or cfg.model.release or cfg.model.path.name.split(".")[0]
        self.version = cfg.model.version
        self.health = ModelHealth()
        if cfg.batch_size > 1 and self.batchable:
            # the plan timed one frame: batches would look like drift and set off re-plan after re-plan
            self.session.drift_checks = False

    @property
    def batchable(self) -> bool:
        """Whether frames can be inferred together: a dynamic batch dimension, and no state tied to one stream."""
        shape = self.input.shape
        return bool(shape) and shape[0] is None and not self.cfg.model.state

    def infer(self, frame: Frame) -> Inferred:
        return self.infer_batch([(frame, *self.pre(frame))])[0]

    def infer_batch(self, prepared: list[tuple[Frame, np.ndarray, Letterbox]]) -> list[Inferred]:
        """Run frames already pre-processed (``self.pre``) as one batch: their tensors stacked on the batch
        dimension, each output split back per frame. One frame: the tensor as it is."""
        n = len(prepared)
        tensor = prepared[0][1] if n == 1 else np.concatenate([t for _, t, _ in prepared])  # (n, ...)
        feeds = {self.input.name: tensor, **self._constants, **self._state}
        t0 = time.perf_counter()
        try:
            outputs = self.session.run(feeds)
        except (InferenceError, AcceleratorError):
            self.health.failed()
            raise
        ms = (time.perf_counter() - t0) * 1000
        for name, output in self.cfg.model.state.items():  # recurrent state: this output feeds the next window
            self._state[name] = outputs[output]
        if not self.health.ran(ms, outputs):
            origins = ", ".join(frame.origin for frame, _, _ in prepared)
            log.warning("%s version %s: an output holds NaN or infinity (%s)", self.name, self.version, origins)
        failed = dict(self.session.failed) if self.session.degraded else None
        where = self.session.accelerators
        if n == 1:
            frame, _, box = prepared[0]
            return [Inferred(frame, outputs, box, ms, self, where, failed)]
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise InferenceError(
                    f"{self.name}: output {name!r} has shape {value.shape} for a batch of {n} frames; set "
                    "batch_size = 1 for this model"
                )
        return [
            Inferred(frame, {k: v[i : i + 1] for k, v in outputs.items()}, box, ms, self, where, failed, batch=n)
            for i, (frame, _, box) in enumerate(prepared)
        ]

    def close(self) -> None:
        self.session.close()


def _bind_inputs(
    cfg: PipelineConfig, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> tuple[TensorSpec, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The input the source feeds, the recurrent state inputs (zeros), and the constant inputs."""
    specs = {s.name: s for s in inputs}
    model = cfg.model
    missing = sorted(set(model.state.values()) - {o.name for o in outputs})
    if missing:
        raise ModelError(f"{model.path}: model.state names output(s) {', '.join(missing)} that the model does not "
                         f"have (outputs: {', '.join(o.name for o in outputs)})")  # fmt: skip
    unknown = sorted((set(model.state) | set(model.constants)) - set(specs))
    if unknown:
        raise ModelError(f"{model.path}: model.state/constants name input(s) {', '.join(unknown)} that the model "
                         f"does not have (inputs: {', '.join(specs)})")  # fmt: skip
    fed = [s for s in inputs if s.name not in model.state and s.name not in model.constants]
    if len(fed) != 1:
        names = ", ".join(s.name for s in fed)
        raise ModelError(f"{model.path}: {len(fed)} inputs ({names}) are left for the source, which feeds one; "
                         "name the others in model.state (recurrent) or model.constants")  # fmt: skip

    def shape(spec: TensorSpec) -> tuple[int, ...]:
        return tuple(1 if d is None else d for d in spec.shape)

    state = {n: np.zeros(shape(specs[n]), specs[n].dtype) for n in model.state}
    constants = {}
    for name, value in model.constants.items():
        try:
            constants[name] = np.asarray(value, specs[name].dtype).reshape(shape(specs[name]))
        except ValueError as exc:
            raise ModelError(f"{model.path}: model.constants.{name} does not fit input {name!r} "
                             f"{list(specs[name].shape)}: {exc}") from None  # fmt: skip
    return fed[0], state, constants


def _offset(frame: Frame) -> float | None:
    value = frame.meta.get("offset_s")
    return float(value) if isinstance(value, int | float) else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Pipeline:
    def __init__(self, cfg: PipelineConfig, model: LoadedModel, topics: Topics, seq: SeqAllocator) -> None:
        self.cfg = cfg
        self.model = model
        self._model_lock = threading.Lock()  # held for each inference: a swap happens between two frames
        self.topic = topics.result(cfg.name)
        self.snapshot_topic = topics.snapshot(cfg.name)
        self._snapshot_at = 0.0  # time.monotonic() of the last snapshot
        self._snapshot: tuple[np.ndarray, list[dict[str, Any]]] | None = None  # due: the frame and its detections
        self.seq = seq
        self.counters = Counters()
        self.frames: StageQueue[Frame] = StageQueue(cfg.queue_size, cfg.frame_overflow())
        self.results: StageQueue[Inferred] = StageQueue(max(cfg.queue_size, 16), "block")
        self._stop = threading.Event()
        self._stop_requested = asyncio.Event()
        self.source = build_source(cfg.source, self._emit, self._stop)
        self.error: AgentError | None = None
        self.busy_since: float | None = None  # time.monotonic() when the inference in progress began

    @property
    def name(self) -> str:
        return self.cfg.name

    def stats(self) -> dict[str, Any]:
        """Counters for logs and the status report; drops are never silent."""
        snap = self.counters.snapshot()
        snap["frames_dropped"] = self.frames.dropped  # overwritten before inference took them
        snap["bad_inputs"] += self.source.bad_inputs  # unreadable files, garbage lines, truncated audio
        snap["queue_depth"] = len(self.frames)
        snap["results_queued"] = len(self.results)  # inferred, not yet written to the outbox
        snap["unacked_at_stop"] = self.counters.unacked_at_stop
        return snap

    def inference_stuck_s(self, now: float | None = None) -> float:
        """How long the inference in progress has run; 0 when none is."""
        since = self.busy_since
        if since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - since)

    def swap_model(self, new: LoadedModel) -> LoadedModel:
        """Serve ``new`` from the next frame on and return the model it replaces (still open: the caller
        closes it, or swaps it back). Waits at most for the inference in progress; frames keep queueing."""
        with self._model_lock:
            old, self.model = self.model, new
        log.info("pipeline %s: now serving %s version %s", self.name, new.name, new.version)
        return old

    def stop(self) -> None:
        """Ask the source to stop; what is already queued is still inferred and published. Loop thread only."""
        self._stop.set()
        self._stop_requested.set()

    async def run(self, sender: OutboxSender, qos: int, flush_timeout: float) -> None:
        """Run until the source ends or stop() was called, then flush. Errors end up in ``self.error``."""
        source = run_in_thread(self._source_main, f"{self.name}-source")
        worker = run_in_thread(self._worker_main, f"{self.name}-infer")
        publisher = asyncio.ensure_future(self._publish_loop(sender, qos))
        stop_requested = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({publisher, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if not publisher.done():
                # stopping: queued frames get flush_timeout to be inferred and written to the outbox
                try:
                    await asyncio.wait_for(asyncio.shield(publisher), flush_timeout)
                except TimeoutError:
                    publisher.cancel()
                    log.warning("pipeline %s: %d frame(s) still queued for inference %.0f s after stopping",
                                self.name, len(self.frames) + len(self.results), flush_timeout)  # fmt: skip
            await asyncio.gather(publisher, return_exceptions=True)
        finally:
            stop_requested.cancel()
            self._stop.set()
            self.frames.close()
            self.results.close()
            for thread_done in (source, worker):
                try:
                    await asyncio.wait_for(asyncio.shield(thread_done), flush_timeout)
                except TimeoutError:
                    log.error("pipeline %s: a worker thread did not stop in %.0f s", self.name, flush_timeout)
                except Exception as exc:
                    self.error = self.error or as_agent_error(exc)
            if self.error is not None:  # logged as it happens; the other pipelines go on
                log.error("pipeline %s stopped: %s", self.name, self.error)

    # ---- threads -------------------------------------------------------------------------------

    def _emit(self, frame: Frame) -> None:
        self.counters.frames += 1
        try:
            self.frames.put(frame)
        except Closed:  # the pipeline is stopping while the source waited for room
            self._stop.set()

    def _source_main(self) -> None:
        try:
            self.source.run()
        finally:
            self.frames.close()

    def _worker_main(self) -> None:
        consecutive = 0
        try:
            while frames := self._next_frames():
                with self._model_lock:  # a model swap happens between two batches
                    model = self.model
                    self.busy_since = time.monotonic()
                    try:
                        results = self._infer(model, frames)
                    except InferenceError as exc:
                        consecutive += 1
                        if consecutive >= MAX_CONSECUTIVE_ERRORS:
                            raise ModelError(
                                f"pipeline {self.name!r}: {consecutive} inferences in a row failed: {exc}"
                            ) from exc
                        continue
                    finally:
                        self.busy_since = None
                if not results:
                    continue
                consecutive = 0
                self.counters.inferences += len(results)
                self.counters.batches += 1
                self.counters.inference_ms.extend(r.inference_ms for r in results)
                if len(self.counters.inference_ms) > 4000:
                    del self.counters.inference_ms[:2000]
                for result in results:
                    try:
                        self.results.put(result)
                    except Closed:
                        return
        finally:
            self.results.close()

    def _next_frames(self) -> list[Frame]:
        """The next frame, and with batching the frames queued behind it, waiting at most batch_wait_ms for
        more; empty once the queue is closed and drained."""
        try:
            frames = [self.frames.get()]
        except Closed:
            return []
        size = self.cfg.batch_size if self.cfg.batch_size > 1 and self.model.batchable else 1
        if size > 1:
            frames += self.frames.drain_nowait(size - 1)
            deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            while len(frames) < size and (left := deadline - time.monotonic()) > 0:
                try:
                    frames.append(self.frames.get(timeout=left))
                except (TimeoutError, Closed):
                    break
        return frames

    def _infer(self, model: LoadedModel, frames: list[Frame]) -> list[Inferred]:
        """Pre-process each frame (one that does not fit is counted and skipped) and infer the rest together.
        InferenceError (counted, answered) when the model failed on them."""
        prepared = []
        for frame in frames:
            try:
                prepared.append((frame, *model.pre(frame)))  # (1, H, W, C) or (1, C, H, W), or the input's shape
            except SourceError as exc:
                self._skip(frame, exc)
        if not prepared:
            return []
        try:
            return model.infer_batch(prepared)
        except SourceError as exc:
            for frame, _, _ in prepared:
                self._skip(frame, exc)
            return []
        except InferenceError as exc:
            self.counters.inference_errors += len(prepared)
            log.error("pipeline %s: inference failed: %s", self.name, exc)
            for frame, _, _ in prepared:
                _answer(frame, error=str(exc))
            raise

    def _skip(self, frame: Frame, exc: SourceError) -> None:
        self.counters.bad_inputs += 1
        log.warning("pipeline %s: skipping input: %s", self.name, exc)
        _answer(frame, error=str(exc), status=422)

    # ---- event loop ----------------------------------------------------------------------------

    async def _publish_loop(self, sender: OutboxSender, qos: int) -> None:
        while True:
            try:
                first = await self.results.get_async()
            except Closed:
                break
            burst = [first, *self.results.drain_nowait(OUTBOX_BURST - 1)]
            items = [(self.topic, payload, qos, False) for r in burst if (payload := self._payload(r)) is not None]
            if items:
                await sender.put_many(items)  # on disk from here: delivered by the sender, even after a crash
                self.counters.stored += len(items)
            if self._snapshot is not None:
                pixels, detections = self._snapshot
                self._snapshot = None
                jpeg = await asyncio.to_thread(annotated_jpeg, pixels, detections)
                await sender.put_many([(self.snapshot_topic, jpeg, qos, True)])
                self.counters.snapshots += 1

    def _maybe_snapshot(self, frame: Frame, output: dict[str, Any]) -> None:
        interval = self.cfg.snapshot_interval_s
        detections = output.get("detections")
        if not interval or not detections or frame.is_tensor or time.monotonic() - self._snapshot_at < interval:
            return
        self._snapshot_at = time.monotonic()
        self._snapshot = (frame.data, detections)

    def _payload(self, result: Inferred) -> bytes | None:
        """Post-process and serialise one result; None (counted, logged) if its outputs make no sense."""
        frame = result.frame
        post: Any = result.model.post
        try:
            if getattr(post, "takes_offset", False):  # voice activity: events say where in the stream they began
                output = post(result.outputs, result.box, offset=_offset(frame))
            else:
                output = post(result.outputs, result.box)
        except (ValueError, IndexError, KeyError) as exc:  # outputs of an unexpected shape
            self.counters.inference_errors += 1
            log.error("pipeline %s: post-processing failed for %s: %s", self.name, frame.origin, exc)
            _answer(frame, error=f"post-processing failed: {exc}")
            return None
        done = time.time()
        self._maybe_snapshot(frame, output)
        source: dict[str, Any] = {"origin": frame.origin, "ts": _iso(frame.ts), **_serialisable(frame.meta)}
        body = {
            "seq": self.seq.next(),
            "ts": _iso(done),
            "pipeline": self.name,
            "model": result.model.name,
            "version": result.model.version,
            "accelerators": list(result.accelerators),
            "latency_ms": round((done - frame.ts) * 1000, 3),
            "inference_ms": round(result.inference_ms, 3),
            "source": source,
            **output,
        }
        if result.batch > 1:  # inferred with others in one run; inference_ms is that run's
            body["batch"] = result.batch
        if result.failed:  # an accelerator failed: still serving, on what remains
            body["degraded"] = True
            body["failed"] = result.failed
        _answer(frame, result=body)  # a program that POSTed this input gets the result in its response
        return json.dumps(body, separators=(",", ":")).encode()


def _answer(frame: Frame, result: dict[str, Any] | None = None, error: str | None = None, status: int = 500) -> None:
    """Frames from the HTTP source carry the request waiting for their result (``meta["reply"]``)."""
    reply = frame.meta.get("reply")
    if reply is None:
        return
    if error is not None:
        reply.fail(error, status)
    else:
        reply.resolve(result)


def _serialisable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool | list | dict | type(None))}


def as_agent_error(exc: BaseException) -> AgentError:
    """Map anything a pipeline raised to an AgentError with one line."""
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, AcceleratorError):
        return ModelError(str(exc))
    return AgentError(f"unexpected {type(exc).__name__}: {exc}")
