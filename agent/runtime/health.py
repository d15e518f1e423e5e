"""A loaded model's live health: runs, errors, non-finite outputs and recent latencies, thread-safe.

The OTA watch reads it after a new model took over, to decide between keeping and rolling back.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

WINDOW = 1024  # recent latencies kept


@dataclass(frozen=True)
class HealthSnapshot:
    runs: int
    errors: int
    non_finite: int  # runs whose float outputs held NaN or infinity
    p50_ms: float | None
    p99_ms: float | None


class ModelHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._errors = 0
        self._non_finite = 0
        self._ms: deque[float] = deque(maxlen=WINDOW)

    def ran(self, ms: float, outputs: Mapping[str, np.ndarray]) -> bool:
        """Record one run; False if an output is not finite."""
        finite = all(np.isfinite(a).all() for a in outputs.values() if a.dtype.kind == "f")
        with self._lock:
            self._runs += 1
            self._ms.append(ms)
            if not finite:
                self._non_finite += 1
        return finite

    def failed(self) -> None:
        with self._lock:
            self._errors += 1

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            ms = np.array(self._ms) if self._ms else None
            return HealthSnapshot(
                self._runs,
                self._errors,
                self._non_finite,
                None if ms is None else float(np.percentile(ms, 50)),
                None if ms is None else float(np.percentile(ms, 99)),
            )
