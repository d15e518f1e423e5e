"""Timing several ways of running a model fairly on a busy device: interleaved, rotating rounds.

Runners are measured in interleaved rounds (a few runs of each, round after round, in a rotating
order) so that a busy, shared machine slows all of them alike instead of whichever happened to run
during a burst.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def to_json(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "runs": self.runs}


def measure(
    runners: Mapping[str, Callable[[], object]], runs: int, rounds: int = 5, settle: int = 1
) -> dict[str, Timing]:
    """Median and spread per runner, from ``runs`` runs each spread over ``rounds`` interleaved rounds.

    Each runner's turn in a round starts with ``settle`` untimed runs: a runtime whose threads spin-wait
    after a run (onnxruntime with an exclusive session) keeps the cores busy for a while after its turn,
    and the next runner's first run pays for it (measured: a 1.7 ms TFLite model timed at 2.8 ms right
    after a spinning session).
    """
    for run in runners.values():  # warm-up: first runs allocate and fuse
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    per_round = max(1, runs // rounds)
    order = list(runners.items())
    for r in range(rounds):
        # rotate, so no runner always follows the same neighbour
        for name, run in order[r % len(order) :] + order[: r % len(order)]:
            for _ in range(settle):
                run()
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                samples[name].append((time.perf_counter() - start) * 1e3)
    result = {}
    for name, values in samples.items():
        deciles = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
        result[name] = Timing(statistics.median(values), deciles[0], deciles[-1], len(values))
    return result
