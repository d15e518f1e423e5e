"""The OpenVINO backend on the real CPU plugin, checked against onnxruntime on the demo model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from accelerators.base import BackendOptions
from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.host import Host
from accelerators.openvino import OpenVinoConfig, OpenVinoDevice, core
from accelerators.registry import discover
from tests.conftest import DIGITS_MODEL

pytest.importorskip("openvino")


def _reported() -> set[str]:
    return {str(d).partition(".")[0] for d in core().available_devices}


def test_cpu_is_available_and_absent_devices_say_why() -> None:
    backends = discover()
    probe = backends["openvino-cpu"].probe()
    assert probe.available and "OpenVINO" in probe.device
    caps = backends["openvino-cpu"].capabilities()
    assert caps.kind == "cpu" and caps.formats == {".onnx", ".xml"} and "float32" in caps.dtypes
    assert caps.peak_ops_per_s["float32"] > 0 and "estimate" not in caps.part
    for device in ("gpu", "npu"):
        assert f"openvino-{device}" in backends
        if device.upper() in _reported():
            continue  # this machine has one
        probe = backends[f"openvino-{device}"].probe()
        assert not probe.available and f"OpenVINO reports no {device.upper()} device" in probe.reason


def test_gpu_reason_depends_on_the_render_node(tmp_path: Path) -> None:
    if "GPU" in _reported():
        pytest.skip("this machine has an OpenVINO GPU")
    (tmp_path / "dev/dri").mkdir(parents=True)
    (tmp_path / "dev/dri/renderD128").write_text("")
    with_node = discover(Host(root=tmp_path))["openvino-gpu"].probe().reason
    assert "intel-opencl-icd" in with_node
    without = discover(Host(root=tmp_path / "bare"))["openvino-gpu"].probe().reason
    assert "no /dev/dri/renderD* node" in without


def test_missing_openvino_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import now raises ImportError
    probe = OpenVinoDevice("CPU", Host(), OpenVinoConfig(), reported=True).probe()
    assert not probe.available and "pip install 'edge-agent[openvino]'" in probe.reason


def test_digits_model_matches_onnxruntime() -> None:
    backends = discover()
    ov_session = backends["openvino-cpu"].load(DIGITS_MODEL, BackendOptions(threads=2))
    ort_session = backends["onnxruntime-cpu"].load(DIGITS_MODEL)
    assert [(s.name, s.shape, s.dtype) for s in ov_session.inputs] == [
        (s.name, s.shape, s.dtype) for s in ort_session.inputs
    ]
    assert [s.name for s in ov_session.outputs] == [s.name for s in ort_session.outputs]
    spec = ov_session.inputs[0]
    rng = np.random.default_rng(7)
    batch = rng.random((3, *(d or 1 for d in spec.shape[1:])), dtype=np.float32)  # dynamic batch of 3
    got = ov_session.run({spec.name: batch})
    want = ort_session.run({spec.name: batch})
    for name, value in want.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-4)
    again = ov_session.run({spec.name: batch[:1]})  # earlier outputs are copies, not request buffers
    assert again[ov_session.outputs[0].name].shape[0] == 1 and got[ov_session.outputs[0].name].shape[0] == 3
    with pytest.raises(InferenceError, match="has dtype float64"):
        ov_session.run({spec.name: batch.astype(np.float64)})
    ov_session.close()


def test_truncated_and_garbage_models_are_one_line_load_errors(tmp_path: Path) -> None:
    backend = discover()["openvino-cpu"]
    data = DIGITS_MODEL.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01" * 500)
    for path in (truncated, garbage):
        with pytest.raises(ModelLoadError) as info:
            backend.load(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)
        assert "Exception from src" not in str(info.value)
    with pytest.raises(ModelLoadError, match=r"\.onnx and \.xml"):
        backend.load(Path(__file__))


def test_absent_device_refuses_to_load() -> None:
    if "NPU" in _reported():
        pytest.skip("this machine has an OpenVINO NPU")
    with pytest.raises(BackendUnavailable, match="openvino-npu is not available"):
        discover()["openvino-npu"].load(DIGITS_MODEL)
