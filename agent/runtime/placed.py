"""A pipeline's model on this device's accelerators: planned, failing over, re-planned on drift.

``backend = "auto"`` with more than one candidate accelerator: the model is planned across them
(``agent.placement``) and run by a ``FailoverExecutor``, so an accelerator that fails while running
is planned around and the frame re-run; the model keeps serving, ``degraded``. With a named backend,
or a single candidate, the model is loaded directly on it: there is nothing to place or fail over to.

Live drift: the executor keeps per-segment timings. When a segment's median runs outside
``[predicted / (1 + drift), predicted * (1 + drift)]`` over a full window, the model is planned again
from live evidence (per-layer measurement where the backends support it) and the new plan replaces
the old one between two frames.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from accelerators.base import Backend, BackendConfig, BackendOptions, Session, TensorSpec
from accelerators.errors import AcceleratorError
from accelerators.registry import discover, select
from agent.config import ModelConfig
from agent.errors import ModelError
from agent.placement import candidates, plan_variants
from agent.planner.plan import Plan

if TYPE_CHECKING:  # these import onnx: only a model that is really placed needs them
    from agent.runtime.failover import FailoverExecutor
    from agent.runtime.split import SegmentModel

DRIFT_WINDOW = 256  # runs before the first drift check (doubles after each drift re-plan)

log = logging.getLogger(__name__)

DRIFT_CHECK_EVERY = 32  # runs between two drift checks (DRIFT_WINDOW is a multiple of it)
MIN_DRIFT_MS = 0.2  # below this a segment's deviation is timer and scheduler jitter
MAX_DRIFT_WINDOW = 64 * DRIFT_WINDOW


class PlacedModel:
    """Stands in for a Session; ``accelerators``, ``degraded`` and ``failed`` describe where it runs."""

    def __init__(
        self, cfg: ModelConfig, backends: Sequence[BackendConfig], state_dir: Path | None, exclusive: bool = True
    ) -> None:
        """``exclusive``: this is the only model on the device, so a session that has the model to itself may
        let its runtime's threads spin (``BackendOptions.exclusive``); False where several models share it."""
        self.cfg = cfg
        self._exclusive = exclusive
        self._configs = tuple(backends)
        self._state_dir = state_dir
        self.plan: Plan | None = None
        self._executor: FailoverExecutor | None = None
        self._direct: Session | None = None
        self._runs_since_plan = 0
        self._drift_window = DRIFT_WINDOW  # doubles after each drift re-plan: a noisy device settles down
        # off where the runs are not what the plan timed (batches of frames, when a pipeline batches)
        self.drift_checks = True
        self.replans = 0
        try:
            self._open()
        except AcceleratorError as exc:
            raise ModelError(f"{cfg.path}: {exc}") from exc

    def _open(self) -> None:
        cfg = self.cfg
        backends: dict[str, Backend] = {}
        known = discover(configs=self._configs) if cfg.accelerators else {}  # lists every SDK: only when needed
        unknown = [name for name in cfg.accelerators if name not in known]
        if unknown:
            raise ModelError(
                f"model.accelerators names unknown accelerator(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))} (see 'edge-agent doctor')"
            )
        if cfg.backend == "auto":
            for path in self.paths:
                backends.update(candidates(path.suffix.lower(), self._configs, only=cfg.accelerators).backends)
            if len(backends) > 1 or len(self.paths) > 1:
                self._open_planned(backends)
                return
        backend = select(
            cfg.path, cfg.backend if cfg.backend != "auto" else next(iter(backends), "auto"), configs=self._configs
        )
        self._direct = backend.load(cfg.path, BackendOptions(threads=cfg.threads, exclusive=self._exclusive))
        self._direct_name = backend.name

    def _open_planned(self, backends: Mapping[str, Backend]) -> None:
        from agent.runtime.failover import FailoverExecutor

        plan, parts = self._plan(set(), use_cache=True)
        self.plan = plan
        self._executor = FailoverExecutor(
            plan, parts, backends, self._replan, threads=self.cfg.threads, exclusive=self._exclusive
        )
        log.info(
            "%s placed on %s: %d segment(s), %.2f ms predicted",
            Path(plan.model_path).name,
            ", ".join(plan.accelerators),
            len(plan.segments),
            plan.predicted_ms,
        )

    @property
    def paths(self) -> list[Path]:
        """The model file and its variants (the same model in other formats or compiled for a part)."""
        return [self.cfg.path, *self.cfg.variants]

    def _plan(self, failed: set[str], use_cache: bool, refresh: bool = False) -> tuple[Plan, list[SegmentModel]]:
        """The best plan over every variant of the model, without the ``failed`` accelerators."""
        from agent.runtime.split import split_onnx

        cfg = self.cfg
        shapes = {name: tuple(dims) for name, dims in cfg.input_shapes.items()}
        # with refresh, every file's placements are measured in the same rounds and the fastest kept
        plan, profile, _, path = plan_variants(
            self.paths,
            cfg.objective,
            self._configs,
            self._state_dir,
            shapes,
            only=cfg.accelerators,
            without=failed,
            use_cache=use_cache,
            refresh=refresh,
            measure=cfg.measure,
            threads=cfg.threads,
        )
        work = (self._state_dir / "segments") if self._state_dir else path.parent / ".edge-agent-segments"
        return plan, split_onnx(path, profile, plan.segments, work)

    def replan(self) -> Plan | None:
        """Time the model on each candidate again and re-plan on those times (the replan command); the new
        plan replaces the old between two frames. None: the model runs directly on one accelerator."""
        if self._executor is None:
            return None
        plan, parts = self._plan(set(self._executor.failed), use_cache=False, refresh=True)
        self._executor.replace(plan, parts)
        self.plan = plan
        self.replans += 1
        return plan

    def _replan(self, failed: set[str]) -> tuple[Plan, Sequence[SegmentModel]]:
        plan, parts = self._plan(failed, use_cache=False)
        self.plan = plan
        self.replans += 1
        return plan, parts

    # -- the Session face ---------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._session().inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._session().outputs

    def _session(self) -> Session:
        session = self._direct or self._executor
        assert session is not None
        return session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session().run(inputs)
        if self._executor is not None:
            self._runs_since_plan += 1
            runs = self._runs_since_plan
            # every DRIFT_CHECK_EVERY runs once the window is full: a check sorts each segment's recent timings
            due = runs >= self._drift_window and runs % DRIFT_CHECK_EVERY == 0
            if due and self.drift_checks and self.cfg.replan_drift > 0:
                self._check_drift()
        return outputs

    def close(self) -> None:
        self._session().close()

    # -- what and where -----------------------------------------------------------------------------
    @property
    def accelerators(self) -> tuple[str, ...]:
        if self._executor is not None:
            return self._executor.accelerators
        return (self._direct_name,)

    @property
    def degraded(self) -> bool:
        return self._executor is not None and self._executor.degraded

    @property
    def failed(self) -> dict[str, str]:
        return self._executor.failed if self._executor is not None else {}

    def drifted(self) -> list[str]:
        """Segments whose live median left the prediction's band, described for the log."""
        assert self._executor is not None
        bound = 1 + self.cfg.replan_drift
        out = []
        for st in self._executor.stats():
            if st.median_ms is None or st.runs < DRIFT_WINDOW or st.predicted_ms <= 0:
                continue
            ratio = st.median_ms / st.predicted_ms
            if abs(st.median_ms - st.predicted_ms) < MIN_DRIFT_MS:  # jitter of a tiny segment, not drift
                continue
            if ratio > bound or ratio < 1 / bound:
                out.append(f"layers {st.start}-{st.stop - 1} on {st.accelerator}: {st.median_ms:.2f} ms measured, "
                           f"{st.predicted_ms:.2f} ms predicted")  # fmt: skip
        return out

    def _check_drift(self) -> None:
        drifted = self.drifted()
        if not drifted:
            return
        log.warning(
            "%s: live latency drifted from the plan (%s); planning again", self.cfg.path.name, "; ".join(drifted)
        )
        assert self._executor is not None
        self._runs_since_plan = 0
        self._drift_window = min(self._drift_window * 2, MAX_DRIFT_WINDOW)
        try:
            # new evidence: the model timed layer by layer on each candidate again, planned on those times
            plan, parts = self._plan(set(self._executor.failed), use_cache=False, refresh=True)
        except (ModelError, AcceleratorError) as exc:
            log.error("re-planning %s failed, keeping the current plan: %s", self.cfg.path.name, exc)
            return
        self._executor.replace(plan, parts)
        self.plan = plan
        self.replans += 1
