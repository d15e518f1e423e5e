"""The cost model against numbers worked out by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from accelerators.base import Family, FamilyRate
from accelerators.calibration_layers import SPECS
from agent.models.ir import Layer
from agent.planner.cost import (
    HOST_COPY_BYTES_PER_S_ESTIMATE,
    CostTable,
    layer_ms,
    segment_ms,
    streaming_ms,
    transfer_ms,
    unsupported,
)
from tests.planner.profiles import MIB, Spec, build, cpu, device, edgetpu

LAUNCH_CPU_MS = 2e-3  # LAUNCH_S_ESTIMATE["cpu"], in ms
LAUNCH_TPU_MS = 1e-3  # NPUs and TPUs


def one(spec: Spec) -> Layer:
    return build([spec]).layers[0]


def test_compute_bound_layer_is_macs_over_rate() -> None:
    caps = cpu(macs_per_s=1e9, bandwidth=1e9)
    layer = one(Spec(Family.CONV, macs=6_000_000, param_bytes=500_000, out_bytes=250_000))  # 1000 B in
    # compute: 6e6 / (1e9 x 0.6) = 10 ms; memory: 751,000 B / (1e9 x 0.7) = 1.07 ms
    assert layer_ms(layer, caps) == pytest.approx(10.0 + LAUNCH_CPU_MS)


def test_memory_bound_layer_is_bytes_over_bandwidth() -> None:
    caps = cpu(macs_per_s=1e9, bandwidth=1e9)
    layer = one(Spec(Family.ELEMENTWISE, out_bytes=999_000))  # 1000 B in, 999,000 out
    assert layer_ms(layer, caps) == pytest.approx(1e6 / (1e9 * 0.5) * 1e3 + LAUNCH_CPU_MS)  # 2 ms


def test_depthwise_runs_far_below_peak() -> None:
    caps = cpu()
    conv = one(Spec(Family.CONV, macs=100_000_000))
    depthwise = one(Spec(Family.DEPTHWISE_CONV, macs=100_000_000))
    assert layer_ms(depthwise, caps) > 3 * layer_ms(conv, caps)


def test_unsupported_op_and_dtype_are_infinite_with_reasons() -> None:
    tpu = edgetpu()
    softmax = one(Spec(Family.NORMALIZATION, dtype="int8"))
    assert math.isinf(layer_ms(softmax, tpu))
    assert "SOFTMAX" in str(unsupported(softmax, tpu))
    float_conv = one(Spec(Family.CONV, macs=1000, dtype="float32"))
    assert math.isinf(layer_ms(float_conv, tpu))
    assert "needs an int8 variant of the model" in str(unsupported(float_conv, tpu))
    assert math.isfinite(layer_ms(one(Spec(Family.CONV, macs=1000, dtype="int8")), tpu))


def test_conversions_and_bookkeeping_dtypes_are_not_refused() -> None:
    # a QUANTIZE reads float32 by nature: an int8-only part that lists the op runs it
    quantize = one(Spec(Family.QUANTIZE, op="QUANTIZE", dtype="float32"))
    assert unsupported(quantize, edgetpu()) is None
    # an int64 shape computation is bookkeeping to a CPU, though its dtypes list only compute dtypes
    shape = one(Spec(Family.RESHAPE, op="Shape", dtype="int64"))
    assert unsupported(shape, cpu()) is None
    assert unsupported(shape, dataclasses.replace(edgetpu(), supported_ops=None)) is not None


def test_measured_rate_overrides_catalog_and_reproduces_the_calibration_layer() -> None:
    spec = SPECS[Family.CONV]
    layer = one(Spec(Family.CONV, macs=spec.macs, out_bytes=spec.moved_bytes - 1000))  # moved = spec's bytes
    rate = FamilyRate(macs_per_s=spec.macs / 0.004, bytes_per_s=spec.moved_bytes / 0.004, layer_ms=4.0)
    caps = cpu(macs_per_s=1e12, measured={"conv": rate})
    assert layer_ms(layer, caps) == pytest.approx(4.0)
    # twice the MACs at the same bytes: the compute-bound part doubles, the launch does not
    bigger = one(Spec(Family.CONV, macs=2 * spec.macs, out_bytes=spec.moved_bytes - 1000))
    assert layer_ms(bigger, caps) == pytest.approx(LAUNCH_CPU_MS + 2 * (4.0 - LAUNCH_CPU_MS))


def test_unmeasured_family_scales_with_the_measured_ones() -> None:
    base = cpu()
    spec = SPECS[Family.CONV]
    spec_layer = one(Spec(Family.CONV, macs=spec.macs, out_bytes=spec.moved_bytes - 1000))
    estimate = layer_ms(spec_layer, base)
    # calibration found convolutions twice as slow as the catalog says
    seconds = 2 * estimate / 1e3
    rate = FamilyRate(macs_per_s=spec.macs / seconds, bytes_per_s=spec.moved_bytes / seconds, layer_ms=2 * estimate)
    measured = dataclasses.replace(base, measured={"conv": rate})
    pointwise = one(Spec(Family.POINTWISE_CONV, macs=50_000_000, param_bytes=100_000))
    assert layer_ms(pointwise, measured) == pytest.approx(2 * layer_ms(pointwise, base))
    # memory-bound families scale by the measured memory-bound ones only, when there are some
    add = one(Spec(Family.ELEMENTWISE, out_bytes=100_000))
    assert layer_ms(add, measured) == pytest.approx(2 * layer_ms(add, base))


def test_segment_adds_dispatch_and_streams_parameters_beyond_on_chip_memory() -> None:
    tpu = edgetpu()
    layers = build([Spec(Family.CONV, macs=1_200_000_000, param_bytes=5 * MIB, dtype="int8")] * 2).layers
    # int8 peak 2e12 MAC/s x 0.6: 1 ms per layer; 10 MiB of params, 8 MiB on chip: 2 MiB over USB at 350 MB/s
    stream = 2 * MIB / 350e6 * 1e3
    assert streaming_ms(10 * MIB, tpu) == pytest.approx(stream)
    assert streaming_ms(8 * MIB, tpu) == 0.0
    assert segment_ms(layers, tpu) == pytest.approx(2 * (1.0 + LAUNCH_TPU_MS) + 0.5 + stream)
    assert streaming_ms(10 * MIB, cpu()) == 0.0  # no on-chip memory: parameters are read from DRAM


def test_transfers() -> None:
    a, b, gpu, tpu = cpu("a"), cpu("b"), device(link=2e9), edgetpu()
    assert transfer_ms(1e6, a, a) == 0.0
    assert transfer_ms(1e6, None, a) == 0.0  # the caller's arrays are already in host memory
    assert transfer_ms(1e6, a, b) == pytest.approx(1e6 / HOST_COPY_BYTES_PER_S_ESTIMATE * 1e3)
    assert transfer_ms(1e6, a, gpu) == pytest.approx(0.5)
    assert transfer_ms(1e6, gpu, None) == pytest.approx(0.5)
    assert transfer_ms(1e6, gpu, tpu) == pytest.approx(0.5 + 1e6 / 350e6 * 1e3)  # through the host
    assert transfer_ms(0, a, gpu) == 0.0


def test_cut_bytes_of_a_dag_with_a_skip_connection() -> None:
    # x(50) -> 0 -> a(100) -> 1 -> b(200) -> 2 -> c(300); 3 reads a and c -> d(400), the output
    profile = build(
        [
            Spec(Family.CONV, out_bytes=100),
            Spec(Family.CONV, out_bytes=200),
            Spec(Family.CONV, out_bytes=300),
            Spec(Family.ELEMENTWISE, out_bytes=400, reads=("t0", "t2")),
        ],
        input_bytes=50,
    )
    table = CostTable(profile, {"a": cpu("a")})
    assert table.input_bytes == 50
    assert list(table.cut_bytes) == [100, 300, 400, 400]  # after layer 1: a and b; after 2: a and c
    assert table.tensors_in(1, 3) == ("t0",)
    assert table.tensors_out(1, 3) == ("t2",)
    assert table.tensors_out(0, 2) == ("t0", "t1")
    assert table.tensors_in(3, 4) == ("t0", "t2")
    assert table.tensors_out(3, 4) == ("t3",)


def test_table_matches_the_functions_and_explains_inf() -> None:
    profile = build(
        [Spec(Family.CONV, macs=10**7, param_bytes=6 * MIB, dtype="int8")] * 2
        + [Spec(Family.NORMALIZATION, dtype="int8")]
    )
    caps = {"cpu": cpu(), "tpu": edgetpu()}
    table = CostTable(profile, caps)
    for a, c in enumerate(caps.values()):
        for i, layer in enumerate(profile.layers):
            assert table.ms[i, a] == pytest.approx(layer_ms(layer, c))
    assert table.segment_ms(0, 2, 1) == pytest.approx(segment_ms(profile.layers[:2], caps["tpu"]))
    assert table.segment_ms(0, 3, 0) == pytest.approx(segment_ms(profile.layers, caps["cpu"]))
    assert math.isinf(table.segment_ms(0, 3, 1))
    assert "SOFTMAX" in str(table.reason(2, "tpu"))
    assert table.reason(0, "tpu") is None
    starts = table.segments_ending(2, 1)
    assert list(starts) == pytest.approx([table.segment_ms(0, 2, 1), table.segment_ms(1, 2, 1)])


def test_a_boundary_crossed_by_a_tensor_of_unknown_shape_cannot_be_cut() -> None:
    from accelerators.base import Capabilities, Family
    from agent.models.ir import Layer, ModelProfile, TensorInfo
    from agent.planner.cost import CostTable

    def layer(i: int, src: str, dst: str) -> Layer:
        return Layer(i, f"l{i}", "Conv", Family.CONV, (src,), (dst,), 10**6, 100, 400, 4000, 4000, "float32")

    tensors = {
        "x": TensorInfo("x", (1, 1000), "float32"),
        "a": TensorInfo("a", (0, 1000), "float32"),  # shape inference failed for this one
        "b": TensorInfo("b", (1, 1000), "float32"),
        "y": TensorInfo("y", (1, 1000), "float32"),
    }
    profile = ModelProfile(
        "m.onnx", "onnx", "d", (tensors["x"],), (tensors["y"],),
        (layer(0, "x", "a"), layer(1, "a", "b"), layer(2, "b", "y")), tensors,
    )  # fmt: skip
    caps = {n: Capabilities(n, "cpu", frozenset({".onnx"}), peak_ops_per_s={"float32": 1e10}) for n in ("p", "q")}
    table = CostTable(profile, caps)
    assert math.isinf(table.transfer_ms(1, 0, 1))  # between layers 0 and 1: "a" crosses it
    assert not math.isinf(table.transfer_ms(2, 0, 1))  # between 1 and 2: only "b", whose shape is known
    assert not math.isinf(table.transfer_ms(0, None, 0))  # the model input still reaches either part
