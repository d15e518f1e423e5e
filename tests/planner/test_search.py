"""The placement search: optimal on small graphs, sensible plans, reasons a person can read."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from accelerators.base import Capabilities, Family, FamilyRate
from accelerators.calibration_layers import SPECS
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.models.onnx_profile import profile_onnx
from agent.planner.cost import CostTable
from agent.planner.plan import Objective, Plan, Segment
from agent.planner.search import exhaustive, make_plan, objective_ms, plan_latency, plan_throughput
from tests.models.nets_onnx import build_mobilenet_v2
from tests.planner.profiles import MIB, Spec, build, cpu, device, edgetpu, random_profile

TPU = "edgetpu-usb0"


def check_cover(segments: tuple[Segment, ...] | list[Segment], n: int) -> None:
    """Every layer exactly once, in order, in contiguous segments; neighbours on different accelerators."""
    assert segments[0].start == 0 and segments[-1].stop == n
    for before, after in itertools.pairwise(segments):
        assert before.stop == after.start and before.accelerator != after.accelerator
    assert all(s.start < s.stop for s in segments)


def rate(family: Family, macs_per_s: float) -> FamilyRate:
    """A calibration figure for a compute-bound family at ``macs_per_s`` (bytes never the limit)."""
    spec = SPECS[family]
    seconds = spec.macs / macs_per_s
    return FamilyRate(macs_per_s=macs_per_s, bytes_per_s=1e13, layer_ms=seconds * 1e3)


def accelerator_sets(seed: int) -> dict[str, Capabilities]:
    sets = [
        {"cpu": cpu(), "gpu": device()},
        {"cpu": cpu(), "gpu": device(macs_per_s=100e9, link=0.5e9), TPU: edgetpu(on_chip_memory_bytes=4 * MIB)},
        {"cpu": cpu(), "slow": cpu("slow", 20e9), TPU: edgetpu(on_chip_memory_bytes=2 * MIB)},
        {"a": cpu("a", measured={"conv": rate(Family.CONV, 5e10)}), "b": device("b", link=5e8)},
    ]
    return sets[seed % len(sets)]


@pytest.mark.parametrize("seed", range(24))
def test_dynamic_programmes_find_the_exhaustive_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    profile = random_profile(rng, int(rng.integers(3, 9)))
    table = CostTable(profile, accelerator_sets(seed))
    cases: list[tuple[Objective, list[Segment], list[Segment]]] = [
        ("latency", plan_latency(table), exhaustive(table, "latency")),
        ("throughput", plan_throughput(table, stages_max=None), exhaustive(table, "throughput")),
        ("throughput", plan_throughput(table, stages_max=2), exhaustive(table, "throughput", stages_max=2)),
    ]
    for objective, found, best in cases:
        check_cover(found, table.n)
        assert objective_ms(found, objective) == pytest.approx(objective_ms(best, objective), rel=1e-9)


def test_skip_connections_are_paid_for_at_every_cut_they_cross() -> None:
    # layer 0's 4 MB output is read by the last layer: cutting anywhere in between moves it
    specs = [Spec(Family.CONV, macs=10**8, out_bytes=4_000_000)]
    specs += [Spec(Family.FULLY_CONNECTED, macs=10**8, out_bytes=1000) for _ in range(3)]
    specs.append(Spec(Family.ELEMENTWISE, out_bytes=1000, reads=("t3", "t0")))
    table = CostTable(build(specs), {"a": cpu("a"), "b": device("b", link=1e9)})
    assert table.cut_bytes[1] == 4_001_000
    for objective in ("latency", "throughput"):
        found = plan_latency(table) if objective == "latency" else plan_throughput(table, None)
        assert objective_ms(found, objective) == pytest.approx(objective_ms(exhaustive(table, objective), objective))


def test_float_model_cannot_go_to_the_int8_edge_tpu() -> None:
    profile = build([Spec(Family.CONV, macs=10**8, param_bytes=10**5)] * 3)
    plan = make_plan(profile, {"cpu": cpu(), TPU: edgetpu()})
    assert plan.accelerators == ("cpu",)
    assert "needs an int8 variant of the model" in plan.excluded[TPU]
    assert any(r.startswith(f"{TPU} excluded: the model is float32") for r in plan.reasons)
    assert plan.single[TPU] is None


def test_unsupported_op_in_the_middle_splits_around_it_when_worth_it() -> None:
    big = Spec(Family.CONV, macs=500_000_000, param_bytes=200_000, out_bytes=10_000, dtype="int8")
    softmax = Spec(Family.NORMALIZATION, out_bytes=10_000, dtype="int8")
    profile = build([big] * 3 + [softmax] + [big] * 3, input_bytes=10_000)
    plan = make_plan(profile, {"cpu": cpu(macs_per_s=20e9), TPU: edgetpu()})
    assert [s.accelerator for s in plan.segments] == [TPU, "cpu", TPU]
    assert [(s.start, s.stop) for s in plan.segments] == [(0, 3), (3, 4), (4, 7)]
    assert plan.single[TPU] is None and plan.predicted_ms < (plan.single["cpu"] or 0) / 5
    assert any("SOFTMAX" in r for r in plan.reasons)
    assert any(r.startswith("split at layer 3: moving 10.0 kB") for r in plan.reasons)

    # tiny layers: two USB round trips cost more than the Edge TPU saves
    tiny = Spec(Family.CONV, macs=100_000, param_bytes=1000, out_bytes=100_000, dtype="int8")
    profile = build([tiny] * 3 + [softmax] + [tiny] * 3, input_bytes=100_000)
    plan = make_plan(profile, {"cpu": cpu(macs_per_s=20e9), TPU: edgetpu()})
    assert plan.accelerators == ("cpu",) and len(plan.segments) == 1


def test_parameters_beyond_on_chip_memory_stream_on_every_call() -> None:
    layer = Spec(Family.CONV, macs=1_200_000_000, param_bytes=5 * MIB, out_bytes=100_000, dtype="int8")
    profile = build([layer, layer], input_bytes=100_000)
    plan = make_plan(profile, {"cpu": cpu(), TPU: edgetpu()})
    # per layer: 1.2e9 MACs / (2e12 MAC/s x 0.6) = 1 ms, plus a 1 us launch; one 0.5 ms dispatch;
    # 10 MiB of parameters, 8 MiB on chip: 2 MiB over USB at 350 MB/s; 100 kB in and 100 kB back out
    link = 350e6
    by_hand = 2 * 1.001 + 0.5 + 2 * MIB / link * 1e3 + 2 * 100_000 / link * 1e3
    assert plan.single[TPU] == pytest.approx(by_hand)
    assert plan.accelerators == (TPU,) and plan.predicted_ms == pytest.approx(by_hand)
    assert any("stream over the link on every call (+5.992 ms)" in r for r in plan.reasons)


@pytest.mark.parametrize("seed", range(8))
def test_never_worse_than_the_best_single_accelerator(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    profile = random_profile(rng, int(rng.integers(5, 60)))
    for objective in ("latency", "throughput"):
        plan = make_plan(profile, accelerator_sets(seed), objective)
        check_cover(plan.segments, len(profile.layers))
        runnable = [ms for ms in plan.single.values() if ms is not None]
        assert plan.predicted_ms <= min(runnable) * (1 + 1e-9)
        assert plan.predicted_ms == pytest.approx(objective_ms(plan.segments, objective))


def test_one_accelerator_that_wins_everything_gets_one_segment() -> None:
    profile = build([Spec(f, macs=10**7 if f is Family.CONV else 0) for f in (Family.CONV, Family.ELEMENTWISE) * 5])
    plan = make_plan(profile, {"slow": cpu("slow", 10e9, 2e9), "fast": cpu("fast", 500e9, 50e9)})
    assert [(s.accelerator, s.start, s.stop) for s in plan.segments] == [("fast", 0, 10)]
    assert "slow alone" in plan.reasons[-2] and "fast alone" in plan.reasons[-1] and "(the plan)" in plan.reasons[-1]


def conv_then_fc() -> ModelProfile:
    return build(
        [Spec(Family.CONV, macs=10**8, out_bytes=100_000)] * 4
        + [Spec(Family.FULLY_CONNECTED, macs=10**8, out_bytes=100_000)] * 4,
        input_bytes=100_000,
    )


def test_families_favouring_different_accelerators_split_when_transfers_are_cheap() -> None:
    a = cpu("a", measured={"conv": rate(Family.CONV, 1e11), "fully_connected": rate(Family.FULLY_CONNECTED, 1e9)})
    b = cpu("b", measured={"conv": rate(Family.CONV, 1e9), "fully_connected": rate(Family.FULLY_CONNECTED, 1e11)})
    plan = make_plan(conv_then_fc(), {"a": a, "b": b})
    assert [(s.accelerator, s.start, s.stop) for s in plan.segments] == [("a", 0, 4), ("b", 4, 8)]
    assert plan.reasons[0].startswith("layers 0-3 (conv 100% of MACs) on a: ")
    assert plan.reasons[2].startswith("split at layer 4: moving 100.0 kB costs 0.013 ms, saves ")

    # the same strengths behind a link that moves 1 kB/s: nothing is worth sending there
    b_far = device("b", link=1e3, measured=b.measured)
    plan = make_plan(conv_then_fc(), {"a": a, "b": b_far})
    assert plan.accelerators == ("a",) and len(plan.segments) == 1


def test_measured_figures_override_the_catalog() -> None:
    profile = build([Spec(Family.CONV, macs=10**8, out_bytes=10_000)] * 4)
    a, b = cpu("a", macs_per_s=100e9), cpu("b", macs_per_s=50e9)
    assert make_plan(profile, {"a": a, "b": b}).accelerators == ("a",)
    # calibration: b runs convolutions at 10x its catalog figure
    b_measured = cpu("b", macs_per_s=50e9, measured={"conv": rate(Family.CONV, 500e9 * 0.6)})
    assert make_plan(profile, {"a": a, "b": b_measured}).accelerators == ("b",)


def test_splits_below_the_minimum_gain_are_not_made() -> None:
    a = cpu("a", measured={"conv": rate(Family.CONV, 1.02e10), "fully_connected": rate(Family.FULLY_CONNECTED, 1e10)})
    b = cpu("b", measured={"conv": rate(Family.CONV, 1e10), "fully_connected": rate(Family.FULLY_CONNECTED, 1.02e10)})
    plan = make_plan(conv_then_fc(), {"a": a, "b": b})
    assert len(plan.segments) == 1
    assert any(r.startswith("splitting would save only") for r in plan.reasons)
    eager = make_plan(conv_then_fc(), {"a": a, "b": b}, split_penalty_ms=0.0, min_gain=0.0, min_gain_ms=0.0)
    assert len(eager.segments) == 2 and eager.predicted_ms < plan.predicted_ms


def test_throughput_pipelines_two_accelerators() -> None:
    profile = build([Spec(Family.CONV, macs=10**8, out_bytes=10_000)] * 8)
    caps = {"a": cpu("a"), "b": cpu("b")}
    latency = make_plan(profile, caps, "latency")
    throughput = make_plan(profile, caps, "throughput", fingerprint="hw1")
    assert len(latency.segments) == 1
    assert len(throughput.segments) == 2
    assert throughput.predicted_ms < 0.6 * latency.predicted_ms
    assert any(r.startswith("pipelined in 2 stages") for r in throughput.reasons)
    again = Plan.from_json(json.loads(json.dumps(throughput.to_json())))
    assert again == throughput


def test_stages_on_one_accelerator_add_up() -> None:
    # a b a: the Edge TPU runs both ends, so its two stages together set the pipeline's rate
    big = Spec(Family.CONV, macs=500_000_000, param_bytes=200_000, out_bytes=10_000, dtype="int8")
    softmax = Spec(Family.NORMALIZATION, out_bytes=10_000, dtype="int8")
    profile = build([big] * 3 + [softmax] + [big] * 3, input_bytes=10_000)
    plan = make_plan(profile, {"cpu": cpu(macs_per_s=20e9), TPU: edgetpu()}, "throughput")
    tpu_stages = [s for s in plan.segments if s.accelerator == TPU]
    busiest = sum(s.predicted_ms + s.transfer_ms + s.return_ms for s in tpu_stages)
    assert len(tpu_stages) == 2 and plan.predicted_ms == pytest.approx(busiest)


def test_accelerators_that_cannot_load_the_format_are_explained() -> None:
    profile = build([Spec(Family.CONV, macs=10**6)] * 2, fmt="onnx")
    plan = make_plan(profile, {"cpu": cpu(), TPU: edgetpu()}, excluded={"npu0": "not available: no driver"})
    assert plan.excluded[TPU] == "it loads .tflite models, not .onnx"
    assert plan.excluded["npu0"] == "not available: no driver"
    assert f"{TPU} excluded: it loads .tflite models, not .onnx" in plan.reasons


def test_a_layer_nothing_runs_is_a_model_error() -> None:
    profile = build([Spec(Family.CONV, macs=10**6, dtype="int8"), Spec(Family.NORMALIZATION, dtype="int8")])
    with pytest.raises(ModelError, match=r"layer 1 'layer1' \(SOFTMAX\) runs on no accelerator"):
        make_plan(profile, {TPU: edgetpu()})
    with pytest.raises(ModelError, match="no accelerator can run"):
        make_plan(profile, {TPU: edgetpu()}, excluded={TPU: "unplugged"})


def test_three_hundred_layers_on_four_accelerators() -> None:
    profile = random_profile(np.random.default_rng(7), 300)
    caps = {"cpu": cpu(), "little": cpu("little", 15e9), "gpu": device(macs_per_s=80e9), TPU: edgetpu()}
    for objective in ("latency", "throughput"):
        plan = make_plan(profile, caps, objective)
        check_cover(plan.segments, 300)


def test_plan_for_a_real_onnx_profile(tmp_path: Path) -> None:
    profile = profile_onnx(build_mobilenet_v2(tmp_path / "m.onnx"))
    n = len(profile.layers)
    caps = {
        "onnxruntime-cpu": cpu("onnxruntime-cpu", 40e9, 8e9, formats=frozenset({".onnx"})),
        "openvino-cpu": cpu(
            "openvino-cpu",
            30e9,
            8e9,
            formats=frozenset({".onnx"}),
            measured={"depthwise_conv": rate(Family.DEPTHWISE_CONV, 2e10)},
        ),
    }
    for objective in ("latency", "throughput"):
        plan = make_plan(profile, caps, objective, fingerprint="test")
        check_cover(plan.segments, n)
        produced = {t.name for t in profile.inputs}
        for segment in plan.segments:
            assert set(segment.inputs) <= produced
            produced |= {t for layer in profile.layers[segment.start : segment.stop] for t in layer.outputs}
        assert plan.segments[-1].outputs == tuple(t.name for t in profile.outputs)
        assert plan.predicted_ms <= min(ms for ms in plan.single.values() if ms is not None) * (1 + 1e-9)
        assert Plan.from_json(json.loads(plan.dumps())) == plan
