"""A plan measured against the whole-model placements before it is adopted (agent.runtime.verify), with
real sessions: onnxruntime and OpenVINO on a reference net, and the null backend slowed down on purpose
to stand for an accelerator whose estimates promise more than it delivers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from accelerators.base import Backend
from accelerators.errors import AcceleratorError
from accelerators.host import Host
from accelerators.null import NullConfig
from accelerators.registry import discover
from agent.models.ir import ModelProfile
from agent.placement import open_plan, plan_for
from agent.planner.plan import Plan
from agent.planner.search import make_plan
from agent.runtime.executor import PlanExecutor
from agent.runtime.verify import SPLIT, ExecutorFactory, verify_plan
from tests.runtime.test_split import even_cuts
from tests.runtime.test_split import make_plan as hand_made_plan

ORT, OV, NULL = "onnxruntime-cpu", "openvino-cpu", "null"
DELAY_MS = 25.0  # the null accelerator's every run: far slower than the small net anywhere


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    found = discover(Host(), [NullConfig(delay_ms=DELAY_MS)], ".onnx")
    return {name: found[name] for name in (ORT, OV, NULL)}


def opener(path: Path, profile: ModelProfile, backends: dict[str, Backend], work: Path) -> ExecutorFactory:
    return lambda plan: open_plan(path, plan, profile, backends, work, exclusive=True)


def test_a_plan_on_an_accelerator_slower_than_promised_is_replaced_by_the_fastest_measured(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    path, profile = nets["small_convnet"], profiles["small_convnet"]
    caps = {name: backends[name].capabilities() for name in (ORT, NULL)}
    promised = make_plan(profile, caps)  # by its capabilities, the null part is far faster than the CPU
    assert promised.accelerators == (NULL,)
    verified = verify_plan(promised, profile, caps, None, opener(path, profile, backends, tmp_path))
    assert verified.accelerators == (ORT,) and len(verified.segments) == 1
    assert set(verified.verified) == {ORT, NULL}
    assert verified.verified[NULL] >= DELAY_MS > verified.verified[ORT]
    assert verified.single == promised.single  # the whole-model predictions stay for the report
    assert f"runs whole on {ORT}, faster than {NULL}" in verified.reasons[-1]


def test_a_split_is_kept_only_where_it_is_measured_fastest(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    path, profile = nets["mobilenet_v2"], profiles["mobilenet_v2"]
    caps = {name: backends[name].capabilities() for name in (ORT, OV)}
    whole = make_plan(profile, caps)
    split = replace(hand_made_plan(profile, even_cuts(profile, 2), [ORT, OV]), single=whole.single)
    verified = verify_plan(split, profile, caps, None, opener(path, profile, backends, tmp_path))
    assert set(verified.verified) == {SPLIT, ORT, OV}
    fastest = min(verified.verified, key=verified.verified.__getitem__)
    if fastest == SPLIT:
        assert verified.segments == split.segments and verified.reasons[-1].endswith("the plan is fastest")
    else:
        assert verified.accelerators == (fastest,) and len(verified.segments) == 1
    assert all(ms > 0 for ms in verified.verified.values())


def test_what_cannot_be_loaded_or_compared_leaves_the_plan_as_it_is(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], backends: dict[str, Backend], tmp_path: Path
) -> None:
    path, profile = nets["small_convnet"], profiles["small_convnet"]
    caps = {name: backends[name].capabilities() for name in (ORT, NULL)}
    plan = make_plan(profile, caps)
    load = opener(path, profile, backends, tmp_path)

    def only_null(candidate: Plan) -> PlanExecutor:
        if candidate.accelerators != (NULL,):
            raise AcceleratorError(f"{candidate.accelerators[0]} is gone")
        return load(candidate)

    assert verify_plan(plan, profile, caps, None, only_null) == plan  # nothing to compare it with
    throughput = replace(plan, objective="throughput")  # stages overlap: one-at-a-time runs would mislead
    assert verify_plan(throughput, profile, caps, None, load) is throughput
    alone = make_plan(profile, {ORT: caps[ORT]})
    assert verify_plan(alone, profile, {ORT: caps[ORT]}, None, load) is alone  # a single candidate


def test_plan_for_with_measure_verifies_and_caches_the_verified_plan(nets: dict[str, Path], tmp_path: Path) -> None:
    path = nets["small_convnet"]
    plan, _, _ = plan_for(path, state_dir=tmp_path, measure=True)
    assert {ORT, OV} <= set(plan.verified)
    assert plan.reasons[-1].startswith("measured before adoption, in interleaved rounds")
    again, _, _ = plan_for(path, state_dir=tmp_path)  # from the cache, verified figures and all
    assert again.verified == plan.verified and again.segments == plan.segments


def test_the_files_of_one_model_are_verified_in_the_same_rounds_and_the_fastest_measured_is_adopted(
    tmp_path: Path,
) -> None:
    from agent.placement import plan_variants
    from tests.conftest import FACE_MODEL
    from tests.test_zoo import _script

    onnx_face = tmp_path / "face.onnx"
    _script("tflite_to_onnx").convert(FACE_MODEL, onnx_face)  # the same model as ONNX
    plan, profile, found, path = plan_variants([onnx_face, FACE_MODEL], state_dir=tmp_path / "state", measure=True)
    # engines that load the TFLite file and engines that load the ONNX file, in one measurement
    assert {ORT, OV, "litert-cpu"} <= set(plan.verified)
    fastest = min(plan.verified, key=plan.verified.__getitem__)
    assert plan.accelerators == (fastest,) and path.suffix == (".tflite" if fastest == "litert-cpu" else ".onnx")
    assert profile.format == path.suffix.removeprefix(".") and fastest in found.backends
    # predictions calibrated to what was measured; the cost model's figure kept beside it
    assert plan.predicted_ms == plan.verified[fastest]
    assert all(seg.estimated_ms is not None for seg in plan.segments)
    assert any(r.startswith("predictions calibrated to these runs") for r in plan.reasons)
    # from the cache, each file's adopted plan: the same choice without measuring again
    again, _, _, again_path = plan_variants([onnx_face, FACE_MODEL], state_dir=tmp_path / "state")
    assert again_path == path and again.segments == plan.segments


def test_a_split_only_a_little_faster_than_a_whole_placement_is_not_adopted(
    nets: dict[str, Path],
    profiles: dict[str, ModelProfile],
    backends: dict[str, Backend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.runtime import verify

    path, profile = nets["mobilenet_v2"], profiles["mobilenet_v2"]
    caps = {name: backends[name].capabilities() for name in (ORT, OV)}
    split = replace(hand_made_plan(profile, even_cuts(profile, 2), [ORT, OV]), single=make_plan(profile, caps).single)
    real = verify._measure

    def split_ahead_by_2_percent(*args: object) -> dict[str, object]:
        trials = real(*args)  # type: ignore[arg-type]
        best_whole = min(t.median_ms for k, t in trials.items() if k != SPLIT)
        return {**trials, SPLIT: replace(trials[SPLIT], median_ms=0.98 * best_whole)}

    monkeypatch.setattr(verify, "_measure", split_ahead_by_2_percent)
    verified = verify_plan(split, profile, caps, None, opener(path, profile, backends, tmp_path))
    assert len(verified.segments) == 1 and verified.accelerators[0] in {ORT, OV}
    assert "the split is not 5% faster" in verified.reasons[-1]
