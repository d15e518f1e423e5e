"""End to end: the real daemon as a subprocess, a real mosquitto, a real subscriber."""

from __future__ import annotations

import asyncio
import itertools
import signal
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.config import load_config
from agent.mqtt.localbroker import Mosquitto, free_port
from tests.conftest import ASSETS, DEMO_TOML, DIGITS_MODEL, write_config

DEVICE = "test-dev"


def demo_env(port: int, rate: float = 20.0) -> dict[str, str]:
    return {
        "EDGE_AGENT_MQTT__PORT": str(port),
        "EDGE_AGENT_AGENT__DEVICE_ID": DEVICE,
        "EDGE_AGENT_PIPELINES__0__SOURCE__RATE_HZ": str(rate),
        "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "2",
    }


def is_result(msg: Any) -> bool:
    return bool(msg.topic == f"edge/{DEVICE}/faces/result")


def contains(box: list[float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def test_demo_pipeline_publishes_faces_in_order_with_availability(
    mosquitto: Mosquitto, subscribe: Any, agent_process: Any
) -> None:
    sub = subscribe(mosquitto.port)
    agent = agent_process(["run", "--config", str(DEMO_TOML)], demo_env(mosquitto.port))

    first = sub.wait_for(lambda m: m.topic == f"edge/{DEVICE}/availability")
    assert first.payload == b"online"

    results = [sub.wait_for(is_result).json() for _ in range(12)]
    seqs = [r["seq"] for r in results]
    assert all(b > a for a, b in itertools.pairwise(seqs)), seqs
    for r in results:
        assert {"seq", "ts", "model", "version", "accelerators", "latency_ms", "detections"} <= r.keys()
        assert r["model"] == "blazeface-short-range" and r["accelerators"] == ["litert-cpu"]
        assert r["ts"].endswith("Z") and r["latency_ms"] >= r["inference_ms"] > 0
    by_file: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_file.setdefault(r["source"]["origin"], []).append(r)
    assert set(by_file) == {"astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg"}
    for r in by_file["astronaut.jpg"]:
        # the astronaut's face: one box around her face, in the 512x512 photo's pixels
        (face,) = r["detections"]
        assert face["label"] == "face" and face["score"] > 0.8
        assert contains(face["box"], 226, 128) and 60 < face["box"][2] - face["box"][0] < 140
        assert len(face["keypoints"]) == 6
    for r in by_file["camera.jpg"]:
        (face,) = r["detections"]
        assert contains(face["box"], 220, 165)
    for name in ("coffee.jpg", "chelsea.jpg"):
        assert all(r["detections"] == [] for r in by_file[name]), name

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    last = sub.wait_for(lambda m: m.topic == f"edge/{DEVICE}/availability")
    assert last.payload == b"offline"
    assert "final pipeline=faces" in "".join(agent.log)
    # a late subscriber sees the retained state
    late = subscribe(mosquitto.port, f"edge/{DEVICE}/availability")
    msg = late.next()
    assert msg.retain and msg.payload == b"offline"


def test_seq_keeps_increasing_across_restarts(mosquitto: Mosquitto, subscribe: Any, agent_process: Any) -> None:
    sub = subscribe(mosquitto.port)
    seqs = []
    for _ in range(2):
        agent = agent_process(["run", "--config", str(DEMO_TOML)], demo_env(mosquitto.port))
        seqs += [sub.wait_for(is_result).json()["seq"] for _ in range(3)]
        assert agent.stop() == 0
    assert all(b > a for a, b in itertools.pairwise(seqs)), seqs


def test_agent_waits_for_a_broker_that_is_down_at_start(subscribe: Any, agent_process: Any) -> None:
    port = free_port()
    agent = agent_process(["run", "--config", str(DEMO_TOML)], demo_env(port))
    agent.wait_log("cannot reach MQTT broker")
    assert agent.proc.poll() is None, "the daemon must keep running while the broker is away"
    with Mosquitto(port) as broker:
        sub = subscribe(broker.port)
        result = sub.wait_for(is_result).json()
        assert result["seq"] >= 1
        assert agent.stop() == 0


def test_results_resume_after_broker_restart(mosquitto: Mosquitto, subscribe: Any, agent_process: Any) -> None:
    sub = subscribe(mosquitto.port)
    agent = agent_process(["run", "--config", str(DEMO_TOML)], demo_env(mosquitto.port))
    before = sub.wait_for(is_result).json()["seq"]
    mosquitto.kill()
    agent.wait_log("lost the MQTT broker connection")
    mosquitto.start()
    agent.wait_log("connected to MQTT broker")
    after = sub.wait_for(lambda m: is_result(m) and m.json()["seq"] > before + 2).json()
    assert after["seq"] > before
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_last_will_says_offline_when_the_agent_is_killed(
    mosquitto: Mosquitto, subscribe: Any, agent_process: Any
) -> None:
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/availability")
    agent = agent_process(["run", "--config", str(DEMO_TOML)], demo_env(mosquitto.port))
    assert sub.next().payload == b"online"
    agent.kill()
    will = sub.next()
    assert will.payload == b"offline"


def test_onnx_digits_pipeline_in_process_replays_once_and_flushes(
    mosquitto: Mosquitto, subscribe: Any, tmp_path: Path
) -> None:
    config_file = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "digits"
source = {{ type = "replay", path = "{ASSETS / "digits" / "images"}", rate_hz = 0, loop = false }}
model = {{ path = "{DIGITS_MODEL}" }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 2, labels = "{ASSETS / "digits" / "labels.txt"}" }}
""",
        device_id=DEVICE,
    )
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/digits/result")
    config = load_config(config_file)
    # the source ends after one pass: the agent flushes every result and returns by itself
    assert asyncio.run(Agent(config).run()) == 0
    results = [sub.next().json() for _ in range(10)]
    assert [r["seq"] for r in results] == sorted(r["seq"] for r in results)
    assert results[0]["accelerators"] == ["onnxruntime-cpu"]
    for r in results:
        true_digit = r["source"]["origin"].removeprefix("digit_").removesuffix(".png")
        assert r["label"] == true_digit, r
        assert r["top"][0]["score"] > 0.5 and len(r["top"]) == 2


def test_sigterm_with_the_broker_away_stops_within_the_shutdown_timeout(agent_process: Any) -> None:
    env = {
        **demo_env(free_port()),  # nothing listens there
        "EDGE_AGENT_MQTT__MAX_INFLIGHT": "1",
        "EDGE_AGENT_AGENT__SHUTDOWN_TIMEOUT_S": "1",
        "EDGE_AGENT_AGENT__STATS_INTERVAL_S": "0.2",
    }
    agent = agent_process(["run", "--config", str(DEMO_TOML)], env)
    agent.wait_log("cannot reach MQTT broker")
    # results pile up behind the one unacknowledged publish
    inferences = 0
    while inferences < 3:
        line = agent.wait_log("stats pipeline=faces")
        inferences = int(line.split("inferences=")[1].split()[0])
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    log = "".join(agent.log)
    assert "not yet acknowledged stay in the outbox for the next start" in log
    assert "unacked_at_stop=0" not in log.split("final pipeline=faces")[1]
