"""Timing several ways of running a model fairly on a busy device: rotating rounds of time blocks.

Each runner is measured alone for a block of time (BLOCK_MS, after SETTLE_MS of untimed runs), the
runners taking turns in a rotating order, round after round: a burst of load on a shared machine then
slows every runner alike instead of whichever happened to run during it, and no runner is timed while
another's threads are still busy.

Why blocks and not a few runs per turn: every CPU runtime keeps a thread pool whose workers spin-wait
after a run (onnxruntime, XNNPACK's pthreadpool, OpenVINO's TBB arena), so a runner timed right after
another shares the cores with the previous runner's spinning threads. Measured on 2 cores, hand landmark
model, median (p10-p90) ms: OpenVINO 4.04 (2.62-4.95) and LiteRT 4.46 (2.51-6.06) in turns of four runs
each, against 2.55 (2.47-2.99) and 2.41 (2.36-2.89) in 300 ms blocks after 20 ms of settling, and 2.59
and 2.44 timed alone; turns of 50 ms were still off by up to 2x. The daemon runs a plan alone, so a
runner alone is what is measured.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SETTLE_MS = 50.0  # untimed runs at the start of each turn, while the previous runner's threads go idle
BLOCK_MS = 250.0  # timed runs of each turn: at least this long


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    turns_ms: tuple[float, ...] = ()  # the median of each turn, round by round

    def to_json(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "runs": self.runs}


def paired_ratio(a: Timing, b: Timing) -> float:
    """The median over rounds of a's turn median over b's in the same round.

    Load on a shared machine drifts over seconds, longer than a round; two runners' turns in one round
    see nearly the same load, so their ratio round by round cancels the drift that pooled medians keep
    (where a burst covers three rounds of ten, it weighs on whoever had more turns in it).
    """
    ratios = [x / y for x, y in zip(a.turns_ms, b.turns_ms, strict=True) if y > 0]
    return statistics.median(ratios) if ratios else a.median_ms / b.median_ms


def measure(
    runners: Mapping[str, Callable[[], object]],
    runs: int = 0,
    rounds: int = 3,
    block_ms: float = BLOCK_MS,
    settle_ms: float = SETTLE_MS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Median and spread per runner, over ``rounds`` rotating rounds of one turn each.

    A turn is untimed runs for ``settle_ms`` (one at least), then timed runs for ``block_ms`` and at
    least ``runs / rounds`` of them, so every runner gets ``runs`` timed runs at least. ``clock`` gives
    seconds (a parameter for tests).
    """
    for run in runners.values():  # warm-up: first runs allocate and fuse
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    turns: dict[str, list[float]] = {name: [] for name in runners}
    per_turn = max(1, math.ceil(runs / max(rounds, 1)))
    order = list(runners.items())
    for r in range(max(rounds, 1)):
        # rotate, so no runner always follows the same neighbour
        for name, run in order[r % len(order) :] + order[: r % len(order)]:
            started = clock()
            run()
            while (clock() - started) * 1e3 < settle_ms:
                run()
            timed: list[float] = []
            started = clock()
            while len(timed) < per_turn or (clock() - started) * 1e3 < block_ms:
                before = clock()
                run()
                timed.append((clock() - before) * 1e3)
            samples[name] += timed
            turns[name].append(statistics.median(timed))
    return {name: _timing(values, turns[name]) for name, values in samples.items()}


def _timing(values: list[float], turns: list[float]) -> Timing:
    deciles = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return Timing(statistics.median(values), deciles[0], deciles[-1], len(values), tuple(turns))
