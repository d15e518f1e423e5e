"""A pipeline's model placed on real accelerators: planned, re-planned on drift, failing over."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accelerators.null import NullConfig
from accelerators.registry import discover
from agent.config import ModelConfig
from agent.runtime.placed import DRIFT_WINDOW, PlacedModel
from tests.conftest import DIGITS_MODEL, FACE_MODEL


def _digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 1, 8, 8), np.float32)  # the MLP's (?, 1, 8, 8) input


def _reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = discover()["onnxruntime-cpu"].load(DIGITS_MODEL)
    try:
        return session.run(inputs)
    finally:
        session.close()


def test_auto_places_across_accelerators_and_a_named_backend_runs_alone(tmp_path: Path) -> None:
    placed = PlacedModel(ModelConfig(path=DIGITS_MODEL), (), tmp_path)
    assert placed.plan is not None and set(placed.accelerators) <= {"onnxruntime-cpu", "openvino-cpu"}
    name = placed.inputs[0].name
    out = placed.run({name: _digit(0)})
    ref = _reference({name: _digit(0)})
    for key, value in ref.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-4, atol=1e-5)
    placed.close()
    named = PlacedModel(ModelConfig(path=DIGITS_MODEL, backend="openvino-cpu"), (), tmp_path)
    assert named.plan is None and named.accelerators == ("openvino-cpu",)
    named.close()
    single = PlacedModel(ModelConfig(path=FACE_MODEL), (), tmp_path)  # one candidate: loaded directly
    assert single.plan is None and single.accelerators == ("litert-cpu",)
    single.close()


def test_live_drift_beyond_the_bound_re_plans_from_measurements(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The null part is "infinitely fast" to the planner but sleeps 1 ms a run: live latency drifts.
    # (Planned from estimates alone: measured at its first start, the sleeping part would never be chosen.)
    configs = (NullConfig(delay_ms=1.0),)
    cfg = ModelConfig(path=DIGITS_MODEL, accelerators=["null", "onnxruntime-cpu"], replan_drift=0.5, measure=False)
    placed = PlacedModel(cfg, configs, tmp_path)
    assert placed.accelerators == ("null",) and placed.replans == 0
    name = placed.inputs[0].name
    with caplog.at_level(logging.WARNING):
        for i in range(DRIFT_WINDOW):
            placed.run({name: _digit(i)})
    assert placed.replans == 1
    assert any("drifted from the plan" in m for m in caplog.messages)
    assert placed.plan is not None
    reasons = " ".join(placed.plan.reasons)
    assert "measured" in reasons  # the new plan rests on the model timed layer by layer / whole
    assert placed.accelerators == ("onnxruntime-cpu",)  # measured, the sleeping part is the slow one
    out = placed.run({name: _digit(7)})
    assert set(out) == {o.name for o in placed.outputs}
    placed.close()


def test_a_single_candidate_model_never_loads_the_planning_stack(tmp_path: Path) -> None:
    """Planning imports onnx (~8 MB resident); the demo's one-accelerator TFLite model does not need it."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.app import Agent\n"
        "from agent.config import ModelConfig\n"
        "from agent.runtime.placed import PlacedModel\n"
        f"PlacedModel(ModelConfig(path=Path({str(FACE_MODEL)!r})), (), Path({str(tmp_path)!r})).close()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'openvino'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_variants_of_a_model_are_planned_and_the_fastest_is_run(tmp_path: Path) -> None:
    from tests.test_zoo import _script

    onnx_face = tmp_path / "face.onnx"
    _script("tflite_to_onnx").convert(FACE_MODEL, onnx_face)  # the same model, as ONNX (same tensor names)
    cfg = ModelConfig(path=onnx_face, variants=[FACE_MODEL])
    placed = PlacedModel(cfg, (), tmp_path)
    assert placed.plan is not None and placed.plan.model_path in {str(onnx_face), str(FACE_MODEL)}
    engines = {"litert-cpu"} if placed.plan.model_path == str(FACE_MODEL) else {"onnxruntime-cpu", "openvino-cpu"}
    assert set(placed.accelerators) <= engines
    image = np.random.default_rng(0).random((1, 128, 128, 3), np.float32)
    out = placed.run({placed.inputs[0].name: image})
    reference = discover()["litert-cpu"].load(FACE_MODEL)
    want = reference.run({reference.inputs[0].name: image})
    reference.close()
    for name, value in want.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(value).max())))
    placed.close()


def test_an_unknown_accelerator_in_the_config_is_a_clear_error(tmp_path: Path) -> None:
    from agent.errors import ModelError

    with pytest.raises(ModelError, match=r"unknown accelerator.*onnxrutime-cpu.*edge-agent doctor"):
        PlacedModel(ModelConfig(path=DIGITS_MODEL, accelerators=["onnxrutime-cpu"]), (), tmp_path)


def test_measured_at_first_start_the_slow_part_is_never_chosen(tmp_path: Path) -> None:
    """The daemon's default: the same promise-more-than-it-delivers part is caught before the first frame."""
    configs = (NullConfig(delay_ms=1.0),)
    cfg = ModelConfig(path=DIGITS_MODEL, accelerators=["null", "onnxruntime-cpu"])
    assert cfg.measure
    placed = PlacedModel(cfg, configs, tmp_path)
    try:
        assert placed.accelerators == ("onnxruntime-cpu",) and placed.replans == 0
        assert placed.plan is not None and placed.plan.verified  # the placements were measured before adoption
    finally:
        placed.close()
