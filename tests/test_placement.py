"""Placement end to end: plans from real model files, the plan/bench commands, and failover in the daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import load_config
from agent.mqtt.localbroker import Mosquitto
from agent.placement import plan_for
from agent.planner.plan import Plan
from tests.conftest import ASSETS, DIGITS_MODEL, FACE_MODEL, write_config
from tests.models.nets_onnx import build_resnet18
from tests.test_cli import assert_one_line_error, cli

DEVICE = "place-dev"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_resnet18(tmp_path_factory.mktemp("nets") / "resnet18.onnx")


def test_plan_covers_every_layer_and_is_cached(resnet: Path, tmp_path: Path) -> None:
    plan, profile, found = plan_for(resnet, state_dir=tmp_path)
    assert {"onnxruntime-cpu", "openvino-cpu"} <= set(found.backends)
    covered = [i for seg in plan.segments for i in seg.layers]
    assert covered == list(range(len(profile.layers)))  # contiguous, ordered, each layer once
    runnable = [ms for ms in plan.single.values() if ms is not None]
    assert plan.predicted_ms <= min(runnable) + 1e-9  # never worse than the best single accelerator
    assert "onnxruntime-cuda" in plan.excluded and plan.reasons
    cached = list((tmp_path / "plans").glob("*.json"))
    assert len(cached) == 1
    again, _, _ = plan_for(resnet, state_dir=tmp_path)
    assert again == plan  # from the cache
    assert Plan.from_json(json.loads(cached[0].read_text())) == plan


def test_tflite_models_run_whole_on_one_accelerator(tmp_path: Path) -> None:
    plan, profile, _ = plan_for(FACE_MODEL, state_dir=tmp_path)
    assert len(plan.segments) == 1 and plan.segments[0].stop == len(profile.layers)
    assert plan.accelerators == ("litert-cpu",)


def test_plan_command_prints_json_and_draws_a_picture(resnet: Path, tmp_path: Path) -> None:
    env = {"EDGE_AGENT_AGENT__STATE_DIR": str(tmp_path / "state")}
    picture = tmp_path / "plan.svg"
    proc = cli("plan", str(resnet), "--json", "--picture", str(picture), env=env)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["segments"] and plan["predicted_ms"] > 0 and set(plan["single"]) >= {"onnxruntime-cpu"}
    root = ET.fromstring(picture.read_text())  # well-formed SVG
    assert root.tag.endswith("svg")
    text = picture.read_text()
    assert all(acc in text for acc in plan["accelerators"]) and "ms" in text
    table = cli("plan", str(resnet), env=env)
    assert table.returncode == 0 and "each accelerator alone:" in table.stdout and "why:" in table.stdout
    assert_one_line_error(cli("plan", str(tmp_path / "nope.onnx"), env=env), "nope.onnx")
    assert_one_line_error(cli("plan", str(resnet), "--accelerator", "tpu9", env=env), "tpu9")


def test_bench_command_measures_plan_and_single_accelerators(tmp_path: Path) -> None:
    env = {"EDGE_AGENT_AGENT__STATE_DIR": str(tmp_path / "state")}
    proc = cli("bench", str(DIGITS_MODEL), "--json", "--runs", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["plan_ms"] > 0
    assert {"onnxruntime-cpu", "openvino-cpu"} <= set(result["single"])
    assert all(ms > 0 for ms in result["single"].values())
    for seg in result["segments"]:
        assert seg["predicted_ms"] > 0 and seg["measured_ms"] > 0


def test_an_accelerator_failing_mid_stream_is_planned_around_without_losing_a_result(
    mosquitto: Mosquitto, subscribe: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The null accelerator takes the plan (it is the fastest part there is) and fails on its 4th run.
    config_file = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[accelerators]]
type = "null"
fail_after = 3

[[pipelines]]
name = "digits"
source = {{ type = "replay", path = "{ASSETS / "digits" / "images"}", rate_hz = 0, loop = false }}
model = {{ path = "{DIGITS_MODEL}", accelerators = ["null", "onnxruntime-cpu"] }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 2, labels = "{ASSETS / "digits" / "labels.txt"}" }}
""",
        device_id=DEVICE,
    )
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/digits/result")
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(Agent(load_config(config_file)).run()) == 0
    results = [sub.next().json() for _ in range(10)]
    assert [r["seq"] for r in results] == sorted({r["seq"] for r in results})  # all ten, in order, none twice
    before, after = results[:3], results[3:]
    assert all(r["accelerators"] == ["null"] and "degraded" not in r for r in before)
    for r in after:
        assert r["accelerators"] == ["onnxruntime-cpu"] and r["degraded"] is True
        assert "null" in r["failed"]
        assert r["label"] == r["source"]["origin"].removeprefix("digit_").removesuffix(".png")  # real results again
    assert any("null failed" in m and "re-planning" in m for m in caplog.messages)


def test_bench_runs_a_tflite_model_whole(tmp_path: Path) -> None:
    env = {"EDGE_AGENT_AGENT__STATE_DIR": str(tmp_path / "state")}
    proc = cli("bench", str(FACE_MODEL), "--json", "--runs", "5", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["accelerators"] == ["litert-cpu"] and set(result["single"]) == {"litert-cpu"}
    assert len(result["segments"]) == 1 and result["segments"][0]["measured_ms"] > 0
