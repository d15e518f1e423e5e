"""The null backend: real model files for the tensor specs, zeros out, failures on request."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from accelerators.base import Session
from accelerators.errors import InferenceError, ModelLoadError
from accelerators.null import NullConfig
from accelerators.registry import discover, select
from tests.conftest import DIGITS_MODEL, FACE_MODEL


def _zeros_for(session: Session) -> dict[str, np.ndarray]:
    return {s.name: np.zeros(tuple(1 if d is None else d for d in s.shape), s.dtype) for s in session.inputs}


def test_null_is_listed_available_but_never_picked_automatically() -> None:
    backend = discover()["null"]
    assert backend.probe().available
    assert backend.capabilities().kind == "none" and backend.capabilities().formats == {".onnx", ".tflite"}
    assert select(DIGITS_MODEL).name != "null" and select(FACE_MODEL).name != "null"
    assert select(DIGITS_MODEL, "null") is backend


@pytest.mark.parametrize("model", [DIGITS_MODEL, FACE_MODEL])
def test_outputs_are_zeros_shaped_like_the_models_outputs(model: Path) -> None:
    real = select(model).load(model)
    session = discover()["null"].load(model)
    assert session.inputs == real.inputs and session.outputs == real.outputs
    outputs = session.run(_zeros_for(session))
    assert list(outputs) == [o.name for o in session.outputs]
    for spec in session.outputs:
        value = outputs[spec.name]
        assert value.shape == tuple(1 if d is None else d for d in spec.shape)  # dynamic dims -> 1
        assert value.dtype == np.dtype(spec.dtype) and not value.any()
    with pytest.raises(InferenceError, match="missing model input"):
        session.run({})


def test_fail_after_breaks_each_session_after_n_runs() -> None:
    backend = discover(configs=[NullConfig(fail_after=2)])["null"]
    session = backend.load(DIGITS_MODEL)
    inputs = _zeros_for(session)
    session.run(inputs)
    session.run(inputs)
    for _ in range(2):
        with pytest.raises(InferenceError, match="fails after 2 run"):
            session.run(inputs)
    fresh = backend.load(DIGITS_MODEL)
    assert fresh.run(inputs)


def test_delay_holds_every_run() -> None:
    session = discover(configs=[NullConfig(delay_ms=30)])["null"].load(DIGITS_MODEL)
    start = time.monotonic()
    session.run(_zeros_for(session))
    assert time.monotonic() - start >= 0.03  # a lower bound only: sleeping never takes less


def test_bad_files_are_load_errors(tmp_path: Path) -> None:
    backend = discover()["null"]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01" * 500)
    with pytest.raises(ModelLoadError) as info:
        backend.load(garbage)
    assert garbage.name in str(info.value) and "\n" not in str(info.value)
    other = tmp_path / "model.rknn"
    other.write_bytes(b"RKNN")
    with pytest.raises(ModelLoadError, match="null backend reads"):
        backend.load(other)
    disabled = discover(configs=[NullConfig(enabled=False)])["null"].probe()
    assert not disabled.available and "disabled" in disabled.reason
