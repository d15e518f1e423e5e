"""Backend selection and the errors at the backend boundary, on real model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.registry import discover, probe_all, select
from tests.conftest import DIGITS_MODEL, FACE_MODEL


def test_both_cpu_backends_are_registered_and_available() -> None:
    probes = probe_all()
    assert {"onnxruntime-cpu", "litert-cpu"} <= set(discover())
    assert probes["onnxruntime-cpu"].available and probes["litert-cpu"].available
    assert "XNNPACK" in probes["litert-cpu"].device


def test_select_by_format_and_by_name() -> None:
    assert select(FACE_MODEL).name == "litert-cpu"
    assert select(DIGITS_MODEL).name == "onnxruntime-cpu"
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu9'"):
        select(FACE_MODEL, "tpu9")
    with pytest.raises(BackendUnavailable, match=r"cannot load \.tflite"):
        select(FACE_MODEL, "onnxruntime-cpu")
    with pytest.raises(BackendUnavailable, match=r"no backend loads \.pt files"):
        select(Path("model.pt"))


@pytest.mark.parametrize("model", [FACE_MODEL, DIGITS_MODEL])
def test_truncated_and_garbage_models_are_load_errors(tmp_path: Path, model: Path) -> None:
    backend = select(model)
    truncated = tmp_path / f"truncated{model.suffix}"
    truncated.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 3])
    garbage = tmp_path / f"garbage{model.suffix}"
    garbage.write_bytes(b"\x00\x01" * 500)
    for path in (truncated, garbage):
        with pytest.raises(ModelLoadError) as info:
            backend.load(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)


def test_edgetpu_models_are_not_run_on_the_cpu(tmp_path: Path) -> None:
    """Selection routes compiled models to an Edge TPU only; with none here it says why, naming it."""
    compiled = tmp_path / "face_edgetpu.tflite"
    compiled.write_bytes(FACE_MODEL.read_bytes())
    if "edgetpu" not in discover():
        pytest.skip("an Edge TPU is plugged in here")
    reason = discover()["edgetpu"].probe().reason
    assert reason.startswith("no Edge TPU found")
    with pytest.raises(BackendUnavailable) as info:
        select(compiled)
    assert f"edgetpu: {reason}" in str(info.value) and "litert-cpu" not in str(info.value)
    with pytest.raises(ModelLoadError, match="Edge TPU"):
        discover()["litert-cpu"].load(compiled)


@pytest.mark.parametrize("model", [FACE_MODEL, DIGITS_MODEL])
def test_inputs_are_checked_before_the_runtime_sees_them(model: Path) -> None:
    session = select(model).load(model)
    spec = session.inputs[0]
    shape = tuple(1 if d is None else d for d in spec.shape)
    outputs = session.run({spec.name: np.zeros(shape, spec.dtype)})
    assert set(outputs) == {o.name for o in session.outputs}
    with pytest.raises(InferenceError, match="missing model input"):
        session.run({})
    with pytest.raises(InferenceError, match="has shape"):
        session.run({spec.name: np.zeros((1, 2), spec.dtype)})
    with pytest.raises(InferenceError, match="has dtype int64"):
        session.run({spec.name: np.zeros(shape, np.int64)})


def test_litert_falls_back_to_tflite_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that ships tflite_runtime instead of ai-edge-litert still gets the CPU backend."""
    import sys
    import types

    from ai_edge_litert.interpreter import Interpreter, load_delegate

    from accelerators.litert import LiteRtConfig, LiteRtCpu

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = Interpreter  # type: ignore[attr-defined]
    fake.load_delegate = load_delegate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    backend = LiteRtCpu(LiteRtConfig())
    assert backend.probe().device.startswith("tflite_runtime")
    assert backend.load(FACE_MODEL).outputs[0].shape == (1, 896, 16)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    probe = backend.probe()
    assert not probe.available and "pip install ai-edge-litert" in probe.reason


def test_running_a_tflite_model_does_not_load_other_sdks() -> None:
    """Listing accelerators can load an SDK (tens of MB resident): select() asks only the types that load .tflite."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from accelerators.registry import select\n"
        f"model = Path({str(FACE_MODEL)!r})\n"
        "select(model).load(model)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxruntime', 'openvino', 'onnx'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_every_backend_type_can_be_switched_off_in_the_config() -> None:
    from accelerators.host import Host
    from accelerators.registry import backend_types

    for kind, backend_type in backend_types().items():
        accelerators = backend_type.accelerators(Host(), backend_type.Config(type=kind, enabled=False))
        assert accelerators, kind
        for backend in accelerators:
            probe = backend.probe()
            assert not probe.available, backend.name
            assert probe.reason == f"disabled in the config ([[accelerators]] type = '{kind}')", backend.name
