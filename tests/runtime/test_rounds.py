"""Timing runners in rotating rounds of time blocks (agent.runtime.rounds), on a simulated clock: each
runner advances the clock by what its run costs, so the arithmetic is exact and nothing waits."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.runtime.rounds import BLOCK_MS, SETTLE_MS, Timing, measure, paired_ratio


class Device:
    """A simulated device: runs cost a fixed time, more for the first few after another runner ran
    (the previous runtime's threads still spinning), and every run is logged in order."""

    def __init__(self, after_switch_ms: float = 0.0, switch_runs: int = 0) -> None:
        self.now_s = 0.0
        self.log: list[str] = []
        self.after_switch_ms = after_switch_ms
        self.switch_runs = switch_runs

    def clock(self) -> float:
        return self.now_s

    def runner(self, name: str, ms: float) -> Callable[[], None]:
        def run() -> None:
            recent = self.log[-self.switch_runs :] if self.switch_runs else []
            disturbed = len(recent) < self.switch_runs or any(n != name for n in recent)
            self.now_s += (ms + (self.after_switch_ms if disturbed else 0.0)) / 1e3
            self.log.append(name)

        return run


def _turns(log: list[str]) -> list[str]:
    """Who ran, turn by turn (consecutive runs of one runner are one turn)."""
    return [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]


def test_each_turn_times_a_whole_block_after_settling() -> None:
    device = Device()
    timings = measure(
        {"a": device.runner("a", 10.0), "b": device.runner("b", 2.0)}, runs=0, rounds=3, clock=device.clock
    )
    # a turn: SETTLE_MS untimed (one run at least), then BLOCK_MS timed (give or take the last run of each,
    # where the simulated clock's sums round a hair under the mark)
    for name, ms in (("a", 10.0), ("b", 2.0)):
        assert 3 * int(BLOCK_MS / ms) <= timings[name].runs <= 3 * (int(BLOCK_MS / ms) + 1)
    assert timings["a"].median_ms == pytest.approx(10.0) and timings["b"].median_ms == pytest.approx(2.0)
    settling = len(device.log) - timings["a"].runs - timings["b"].runs - 2 * 2  # less the warm-up runs
    per_round = int(SETTLE_MS / 10.0) + int(SETTLE_MS / 2.0)
    assert 3 * per_round <= settling <= 3 * (per_round + 2)


def test_a_slow_model_still_gets_its_runs() -> None:
    device = Device()
    timings = measure({"slow": device.runner("slow", 400.0)}, runs=7, rounds=3, clock=device.clock)
    assert timings["slow"].runs == 9  # ceil(7 / 3) per turn, though one run already outlasts a block


def test_runs_right_after_another_runner_are_not_what_is_timed() -> None:
    # the first three runs after a switch cost 8 ms more: the settling absorbs them
    device = Device(after_switch_ms=8.0, switch_runs=3)
    timings = measure({"a": device.runner("a", 1.0), "b": device.runner("b", 3.0)}, rounds=4, clock=device.clock)
    assert timings["a"].p90_ms == pytest.approx(1.0) and timings["b"].p90_ms == pytest.approx(3.0)


def test_the_order_rotates_round_after_round() -> None:
    device = Device()
    runners = {name: device.runner(name, 5.0) for name in "abc"}
    measure(runners, rounds=4, clock=device.clock)
    turns = _turns(device.log)
    assert turns[:1] == ["a"] and turns[-12:] == list("abcbcacababc")  # after the warm-up


def test_each_turn_is_kept_and_ratios_pair_turns_of_one_round() -> None:
    device = Device()
    costs = {"a": 2.0, "b": 3.0}

    def loaded(name: str) -> Callable[[], None]:
        def run() -> None:  # load triples from the third round on: every turn after 2 * 2 turns' time
            base = costs[name] * (3.0 if device.now_s > 2 * 2 * 0.3 + 0.1 else 1.0)
            device.now_s += base / 1e3
            device.log.append(name)

        return run

    timings = measure({n: loaded(n) for n in costs}, rounds=6, clock=device.clock)
    assert [len(t.turns_ms) for t in timings.values()] == [6, 6]
    assert timings["a"].turns_ms[0] == pytest.approx(2.0) and timings["a"].turns_ms[-1] == pytest.approx(6.0)
    # pooled, a's and b's medians mix quiet and loaded turns; paired by round, the ratio is exact
    assert paired_ratio(timings["a"], timings["b"]) == pytest.approx(2.0 / 3.0)


def test_paired_ratio_of_hand_made_timings() -> None:
    a = Timing(2.0, 1.0, 3.0, 30, (1.0, 3.0, 1.0))
    b = Timing(2.2, 1.1, 3.3, 30, (1.1, 3.3, 1.1))
    assert paired_ratio(a, b) == pytest.approx(1 / 1.1)
    assert paired_ratio(Timing(2.0, 1.0, 3.0, 3), Timing(4.0, 1.0, 5.0, 3)) == 0.5  # no turns: the medians'
