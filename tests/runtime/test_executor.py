"""Running plans on real backends: onnxruntime and OpenVINO on the CPU, segment after segment, pipelined,
and failing over when an accelerator breaks mid-stream (the null backend's ``fail_after``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from accelerators.base import Backend, Session
from accelerators.errors import InferenceError, InputError
from accelerators.null import NullConfig
from accelerators.registry import discover
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.planner.plan import Plan, Segment
from agent.runtime.executor import (
    TIMING_WINDOW,
    AcceleratorFailed,
    PlanExecutor,
    SegmentStats,
    _Timing,
    segment_shares,
)
from agent.runtime.failover import FailoverExecutor
from agent.runtime.pipelined import Completed, PipelinedExecutor
from agent.runtime.queues import Closed
from agent.runtime.split import SegmentModel, split_onnx
from tests.runtime.test_split import assert_same, even_cuts, make_plan, random_inputs, reference

ORT, OV, NULL = "onnxruntime-cpu", "openvino-cpu", "null"
MIXED = [ORT, OV]


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    found = discover(configs=[NullConfig(fail_after=3)])  # the null accelerator breaks on its 4th run
    for name in (ORT, OV):
        probe = found[name].probe()
        assert probe.available, f"{name}: {probe.reason}"
    return found


class Model:
    """A test net with its profile, split for a plan, and the whole-model reference."""

    def __init__(self, path: Path, profile: ModelProfile, out: Path) -> None:
        self.path, self.profile, self.out = path, profile, out

    def split(self, cuts: Sequence[int], accelerators: Sequence[str]) -> tuple[Plan, list[SegmentModel]]:
        plan = make_plan(self.profile, cuts, accelerators)
        return plan, split_onnx(self.path, self.profile, plan.segments, self.out)

    def frames(self, count: int) -> list[dict[str, np.ndarray]]:
        return [random_inputs(self.profile, seed) for seed in range(count)]

    def reference(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return reference(self.path, inputs)


@pytest.fixture
def model(nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path) -> Model:
    return Model(nets["mobilenet_v2"], profiles["mobilenet_v2"], tmp_path)


def _model(name: str, nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path) -> Model:
    return Model(nets[name], profiles[name], tmp_path)


@pytest.mark.parametrize(
    ("name", "parts"),
    [("mobilenet_v2", 2), ("mobilenet_v2", 4), ("mobilenet_v2_fp16", 3), ("resnet18", 3), ("transformer_block", 3),
     ("lstm", 3), ("small_convnet_constants", 3), ("small_convnet_int8", 2), ("digits", 2), ("digits", 5)],
)  # fmt: skip
def test_alternating_onnxruntime_and_openvino_matches_the_whole_model(
    name: str,
    parts: int,
    nets: dict[str, Path],
    profiles: dict[str, ModelProfile],
    backends: dict[str, Backend],
    tmp_path: Path,
) -> None:
    m = _model(name, nets, profiles, tmp_path)
    for first in (MIXED, MIXED[::-1]):
        plan, split = m.split(even_cuts(m.profile, parts), first)
        executor = PlanExecutor(plan, split, backends)
        try:
            assert isinstance(executor, Session)  # stands in for one in LoadedModel
            assert [s.name for s in executor.inputs] == [t.name for t in m.profile.inputs]
            assert [s.name for s in executor.outputs] == [t.name for t in m.profile.outputs]
            for inputs in m.frames(2):
                assert_same(executor.run(inputs), m.reference(inputs))
            stats = executor.stats()
            assert [(s.accelerator, s.start, s.stop) for s in stats] == [
                (s.accelerator, s.start, s.stop) for s in plan.segments
            ]
            assert all(s.runs == 2 and s.failures == 0 and s.median_ms is not None for s in stats)
        finally:
            executor.close()


def test_a_one_segment_plan_runs_the_model_file_itself(model: Model, backends: dict[str, Backend]) -> None:
    plan, split = model.split([], [OV])
    assert split[0].path == model.path
    executor = PlanExecutor(plan, split, backends)
    inputs = model.frames(1)[0]
    assert_same(executor.run(inputs), model.reference(inputs))
    executor.close()


def test_live_tensors_are_dropped_once_no_later_segment_reads_them(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    m = _model("transformer_block", nets, profiles, tmp_path)  # 'tokens' is read again by the last segment
    plan, split = m.split(even_cuts(m.profile, 4), MIXED)
    executor = PlanExecutor(plan, split, backends)
    live = executor.start(m.frames(1)[0])
    for index in range(len(split)):
        executor.run_stage(index, live)
        later = {n for part in split[index + 1 :] for n in part.inputs}
        made = {n for part in split[: index + 1] for n in part.outputs} | {"tokens"}
        assert set(live) == (later | set(split[0].graph_outputs)) & made
    executor.close()


@pytest.mark.parametrize(
    ("cuts", "accelerators"),
    [([30], MIXED), ([], [ORT]), ([], [OV])],  # a one-segment plan leaves the check to its session
    ids=["split", "whole-ort", "whole-ov"],
)
def test_bad_inputs_are_the_callers_error_not_the_accelerators(
    model: Model, backends: dict[str, Backend], cuts: list[int], accelerators: list[str]
) -> None:
    executor = PlanExecutor(*model.split(cuts, accelerators), backends)
    good = model.frames(1)[0]
    bad = [
        ({"input": np.zeros((1, 3, 100, 100), np.float32)}, "shape"),
        ({"input": good["input"].astype(np.float64)}, "dtype"),
        ({"image": good["input"]}, "missing model input"),
    ]
    for frame, what in bad:
        with pytest.raises(InputError, match=what) as raised:
            executor.run(frame)
        assert not isinstance(raised.value, AcceleratorFailed)
    assert all(s.failures == 0 for s in executor.stats())
    assert_same(executor.run(good), model.reference(good))  # and the next good frame runs
    executor.close()


def test_a_failing_accelerator_raises_accelerator_failed(model: Model, backends: dict[str, Backend]) -> None:
    executor = PlanExecutor(*model.split([30], [ORT, NULL]), backends)
    frames = model.frames(4)
    for inputs in frames[:3]:
        executor.run(inputs)  # the null accelerator answers zeros three times
    with pytest.raises(AcceleratorFailed) as raised:
        executor.run(frames[3])
    assert raised.value.accelerator == NULL and raised.value.segment == 1
    assert "fail_after" in raised.value.reason
    assert executor.stats()[1].failures == 2  # tried once more before giving up
    executor.close()


def test_failover_replans_and_loses_no_frame(model: Model, backends: dict[str, Backend]) -> None:
    asked: list[set[str]] = []

    def replan(failed: set[str]) -> tuple[Plan, Sequence[SegmentModel]]:
        asked.append(failed)
        usable = [a for a in (NULL, OV, ORT) if a not in failed]
        return model.split([30, 60], usable[-2:])

    frames = model.frames(8)
    executor = FailoverExecutor(*model.split([30], [ORT, NULL]), backends, replan)
    assert isinstance(executor, Session) and not executor.degraded
    results = [executor.run(inputs) for inputs in frames]
    assert len(results) == len(frames)
    for inputs, got in zip(frames[3:], results[3:], strict=True):  # from the failing frame on
        assert_same(got, model.reference(inputs))
    assert asked == [{NULL}]
    assert executor.degraded
    assert list(executor.failed) == [NULL] and "fail_after" in executor.failed[NULL]
    assert NULL not in executor.accelerators and executor.plan.accelerators == (OV, ORT)
    assert [s.name for s in executor.inputs] == ["input"]
    executor.close()


def test_failover_at_load_when_an_accelerator_is_missing(model: Model, backends: dict[str, Backend]) -> None:
    executor = FailoverExecutor(
        *model.split([30], [ORT, "edgetpu-usb-0"]), backends, lambda failed: model.split([], [ORT])
    )
    assert executor.degraded and "no such accelerator" in executor.failed["edgetpu-usb-0"]
    inputs = model.frames(1)[0]
    assert_same(executor.run(inputs), model.reference(inputs))
    executor.close()


def test_failover_without_a_fallback_is_a_model_error(model: Model, backends: dict[str, Backend]) -> None:
    def no_plan(failed: set[str]) -> tuple[Plan, Sequence[SegmentModel]]:
        raise ModelError("no accelerator left that runs this model")

    executor = FailoverExecutor(*model.split([30], [ORT, NULL]), backends, no_plan)
    frames = model.frames(4)
    for inputs in frames[:3]:
        executor.run(inputs)
    with pytest.raises(ModelError, match="without null: no accelerator left"):
        executor.run(frames[3])

    with pytest.raises(ModelError, match="still uses failed"):
        FailoverExecutor(*model.split([30], [ORT, "gone"]), backends, lambda failed: model.split([], ["gone"]))


def test_pipelined_frames_come_out_in_order_and_match(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    m = _model("resnet18", nets, profiles, tmp_path)
    plan, split = m.split(even_cuts(m.profile, 3), [ORT, OV, ORT])
    frames = m.frames(12)
    pipe: PipelinedExecutor[int] = PipelinedExecutor(PlanExecutor(plan, split, backends), depth=1)
    done = list(pipe.stream(enumerate(frames)))
    pipe.close()
    assert [c.token for c in done] == list(range(len(frames)))
    for c in done:
        assert c.error is None and c.latency_ms > 0
        assert_same(c.result(), m.reference(frames[c.token]))


def test_pipelined_errors_come_with_their_frame(model: Model, backends: dict[str, Backend]) -> None:
    pipe: PipelinedExecutor[str] = PipelinedExecutor(PlanExecutor(*model.split([30], [ORT, NULL]), backends))
    frames = [(f"f{i}", inputs) for i, inputs in enumerate(model.frames(6))]
    frames.insert(1, ("bad", {"input": np.zeros((1, 3, 8, 8), np.float32)}))
    done: list[Completed[str]] = list(pipe.stream(frames))
    pipe.close()
    assert [c.token for c in done] == [token for token, _ in frames]
    assert [c.error is None for c in done] == [True, False, True, True, False, False, False]
    assert isinstance(done[1].error, InferenceError) and not isinstance(done[1].error, AcceleratorFailed)
    for failed in done[4:]:
        assert isinstance(failed.error, AcceleratorFailed) and failed.error.accelerator == NULL
        with pytest.raises(AcceleratorFailed):
            failed.result()


def test_pipelined_close_with_frames_in_flight_returns(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    m = _model("resnet18", nets, profiles, tmp_path)
    plan, split = m.split(even_cuts(m.profile, 3), [OV, ORT, OV])
    pipe: PipelinedExecutor[int] = PipelinedExecutor(PlanExecutor(plan, split, backends), depth=2)
    frames = m.frames(pipe.capacity)
    for token, inputs in enumerate(frames):  # fills every queue and stage; nobody takes results
        pipe.submit(token, inputs)
    pipe.close()
    assert not any(t.is_alive() for t in pipe._threads)
    drained = []
    with pytest.raises(Closed):
        while True:
            drained.append(pipe.get())
    assert [c.token for c in drained] == list(range(len(drained)))  # what finished came out in order
    with pytest.raises(Closed):
        pipe.submit(99, frames[0])
    pipe.close()  # idempotent


def _stats(median_ms: float | None) -> SegmentStats:
    return SegmentStats("x", 0, 1, 1.0, runs=1, failures=0, last_ms=median_ms, ewma_ms=median_ms, median_ms=median_ms)


def test_segments_get_their_shares_of_the_whole_runs_median() -> None:
    # the segments' own medians cover only their last runs: the plan's median over every timed run is split
    # between them in proportion
    assert segment_shares([_stats(1.0), _stats(3.0)], 8.0) == pytest.approx((2.0, 6.0))
    assert segment_shares([_stats(0.97)], 0.73) == pytest.approx((0.73,))
    assert segment_shares([_stats(1.0), _stats(None)], 8.0) == (1.0, None)  # nothing to share by


def test_segment_timings_count_and_summarise_the_recent_runs() -> None:
    timing = _Timing(Segment(accelerator="x", start=0, stop=1, predicted_ms=1.0))
    assert timing.stats().median_ms is None and timing.stats().ewma_ms is None
    for ms in [1.0] * 50 + [3.0] * 50:  # a step: the moving average follows it within a few tens of runs
        timing.record(ms)
    stats = timing.stats()
    assert stats.runs == 100 and stats.last_ms == 3.0 and stats.median_ms == 2.0
    assert 2.9 < stats.ewma_ms < 3.0  # type: ignore[operator]
    for _ in range(TIMING_WINDOW):
        timing.record(5.0)
    assert timing.stats().median_ms == 5.0 and timing.stats().runs == 100 + TIMING_WINDOW  # a window, a count
