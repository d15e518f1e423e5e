"""Keep a model running when one of its accelerators fails: re-plan without it, re-run the same frame.

``FailoverExecutor`` wraps a ``PlanExecutor``. When that raises ``AcceleratorFailed`` (see the policy
in ``agent.runtime.executor``), the accelerator is marked failed with its reason, the caller's
``replan`` callback is asked for a plan (and its segment models) that avoids every failed accelerator,
a new ``PlanExecutor`` is loaded, and the frame that hit the failure runs again from its first
segment, so no result is lost. Accelerators stay failed for the executor's lifetime: one that fails
repeatedly would otherwise cost a reload per frame. ``degraded`` and ``failed`` say so for logs and
results. When the callback cannot plan without the failed accelerators, its error propagates as a
ModelError naming them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from accelerators.base import Backend, TensorSpec
from accelerators.errors import AcceleratorError
from agent.errors import AgentError, ModelError
from agent.planner.plan import Plan
from agent.runtime.executor import DEFAULT_ATTEMPTS, AcceleratorFailed, PlanExecutor, SegmentStats
from agent.runtime.split import SegmentModel

log = logging.getLogger(__name__)

# failed accelerators (a copy) -> a plan avoiding all of them, and its segment models
Replan = Callable[[set[str]], tuple[Plan, Sequence[SegmentModel]]]


class FailoverExecutor:
    """A PlanExecutor that re-plans around failed accelerators. One thread runs it at a time (a lock
    serialises ``run`` and the swap); ``degraded``, ``failed`` and ``stats`` may be read from any thread."""

    def __init__(
        self,
        plan: Plan,
        segment_models: Sequence[SegmentModel],
        backends: Mapping[str, Backend],
        replan: Replan,
        threads: int = 1,
        exclusive: bool = False,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self._backends = backends
        self._replan = replan
        self._threads = threads
        self._exclusive = exclusive
        self._attempts = attempts
        self._failed: dict[str, str] = {}
        self._lock = threading.RLock()
        self._executor = self._build(plan, segment_models)
        self._names = _names(self._executor)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._executor.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._executor.outputs

    @property
    def plan(self) -> Plan:
        return self._executor.plan

    @property
    def accelerators(self) -> tuple[str, ...]:
        return self._executor.accelerators

    @property
    def degraded(self) -> bool:
        """True once any accelerator failed: the model runs on a fallback plan."""
        return bool(self._failed)

    @property
    def failed(self) -> dict[str, str]:
        """accelerator -> why it was given up."""
        with self._lock:
            return dict(self._failed)

    def stats(self) -> list[SegmentStats]:
        return self._executor.stats()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one frame; on an accelerator failure, re-plan and run the same frame again."""
        with self._lock:
            while True:
                executor = self._executor
                try:
                    return executor.run(inputs)
                except AcceleratorFailed as exc:
                    self._mark(exc)
                    executor.close()
                    plan, parts = self._plan_without()
                    replacement = self._build(plan, parts)
                    if _names(replacement) != self._names:
                        replacement.close()
                        raise ModelError(
                            f"{plan.model_path}: the re-planned model has tensors {_names(replacement)}, "
                            f"not {self._names}; the replan callback must plan the same model"
                        ) from exc
                    self._executor = replacement

    def replace(self, plan: Plan, segment_models: Sequence[SegmentModel]) -> None:
        """Swap in a new plan between two frames (a re-plan on drift); the old sessions are closed."""
        replacement = self._build(plan, segment_models)
        if _names(replacement) != self._names:
            replacement.close()
            raise ModelError(f"{plan.model_path}: the new plan's model has other inputs or outputs")
        with self._lock:
            old, self._executor = self._executor, replacement
        old.close()

    def close(self) -> None:
        with self._lock:
            self._executor.close()

    def _build(self, plan: Plan, parts: Sequence[SegmentModel]) -> PlanExecutor:
        """A PlanExecutor for ``plan``; an accelerator that cannot load its segment fails over too."""
        while True:
            reused = sorted(set(plan.accelerators) & set(self._failed))
            if reused:
                raise ModelError(f"{plan.model_path}: the re-plan still uses failed accelerator(s) "
                                 f"{', '.join(reused)}; the replan callback must leave them out")  # fmt: skip
            try:
                return PlanExecutor(plan, parts, self._backends, self._threads, self._attempts, self._exclusive)
            except AcceleratorFailed as exc:
                self._mark(exc)
                plan, parts = self._plan_without()

    def _mark(self, exc: AcceleratorFailed) -> None:
        with self._lock:
            self._failed[exc.accelerator] = exc.reason
        log.error("accelerator %s failed, re-planning without it: %s", exc.accelerator, exc.reason)

    def _plan_without(self) -> tuple[Plan, Sequence[SegmentModel]]:
        failed = set(self._failed)
        try:
            plan, parts = self._replan(set(failed))
        except (AgentError, AcceleratorError) as exc:
            raise ModelError(f"cannot run the model without {', '.join(sorted(failed))}: {exc}") from exc
        log.warning("re-planned onto %s (failed: %s)", ", ".join(plan.accelerators), ", ".join(sorted(failed)))
        return plan, parts


def _names(executor: PlanExecutor) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(s.name for s in executor.inputs), tuple(s.name for s in executor.outputs)
