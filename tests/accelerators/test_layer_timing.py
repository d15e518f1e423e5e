"""Per-node timing from the runtimes' own profilers, on a real model: onnxruntime and OpenVINO on the CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from accelerators.base import Backend
from accelerators.errors import InferenceError
from accelerators.layer_timing import LayerProfiler, median_per_node, profile_layers, time_whole
from accelerators.null import NullConfig
from accelerators.registry import discover
from tests.models.nets_onnx import build_small_convnet

ORT, OV = "onnxruntime-cpu", "openvino-cpu"
CONV_NODES = ("conv_3", "conv_7", "conv_11")  # build_small_convnet's three convolutions, by node name


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_convnet(tmp_path_factory.mktemp("net") / "small.onnx")


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    found = discover(configs=[NullConfig(delay_ms=5.0)])
    for name in (ORT, OV):
        probe = found[name].probe()
        assert probe.available, f"{name}: {probe.reason}"
    return found


def image() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}


def profiles() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob("edge-agent-ort-profile-*"))


def test_onnxruntime_times_every_node_and_leaves_no_trace_file(model: Path, backends: dict[str, Backend]) -> None:
    backend = backends[ORT]
    assert isinstance(backend, LayerProfiler)
    before = profiles()
    times = profile_layers(backend, model, image(), runs=5)
    assert profiles() == before  # the JSON trace went with its temporary folder
    assert times.runs == 5 and times.wall_ms > 0
    # ORT fuses each Conv with its Relu and names the fused node after one of them (the "_nchwc"
    # decoration of its layout pass is removed); every node it ran ran a Conv, a pool or the Gemm.
    assert {"Conv", "Gemm"} <= set(times.node_ops.values())
    assert all(ms >= 0 for ms in times.node_ms.values())
    assert not any(name.endswith("_nchwc") for name in times.node_ms)
    # a 0.2 ms net: the call itself may take most of a run, the nodes never much more than all of it
    assert 0 < times.total_ms < 1.5 * times.wall_ms, (times.total_ms, times.wall_ms)


def test_openvino_times_nodes_and_says_what_it_fused(model: Path, backends: dict[str, Backend]) -> None:
    backend = backends[OV]
    assert isinstance(backend, LayerProfiler)
    times = profile_layers(backend, model, image(), runs=5)
    assert times.runs == 5 and times.wall_ms > 0
    # OpenVINO's ONNX front end names a Conv without its bias "<node>/WithoutBiases"; the plugin fuses
    # the Relu into it, reports the Relu NOT_RUN (0 ms) and lists both under the executed node.
    for conv in CONV_NODES:
        assert times.node_ms[f"{conv}/WithoutBiases"] > 0
        assert conv + "/WithoutBiases" in times.fused[f"{conv}/WithoutBiases"]
    assert any(len(names) > 1 for names in times.fused.values())
    assert 0 < times.total_ms < 1.5 * times.wall_ms, (times.total_ms, times.wall_ms)


def test_backends_without_a_profiler_are_timed_whole(model: Path, backends: dict[str, Backend]) -> None:
    null = backends["null"]  # sleeps 5 ms per run, reports no nodes
    assert not isinstance(null, LayerProfiler)
    times = profile_layers(null, model, image(), runs=3)
    assert times.node_ms == {} and times.runs == 3
    assert 5.0 <= times.wall_ms < 200.0
    assert time_whole(null, model, image(), runs=1).node_ms == {}


def test_median_per_node_counts_a_missing_node_as_zero() -> None:
    runs = [{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 2.0, "b": 4.0}]
    assert median_per_node(runs) == {"a": 2.0, "b": 2.0}


def test_a_failing_run_raises_and_still_leaves_no_trace_file(model: Path, backends: dict[str, Backend]) -> None:
    before = profiles()
    wrong = {"input": np.zeros((1, 3, 16, 16), np.float32)}  # the model takes 32x32
    for name in (ORT, OV):
        with pytest.raises(InferenceError, match="input 'input' has shape"):
            profile_layers(backends[name], model, wrong, runs=2)
    assert profiles() == before
