"""Several pipelines in one daemon, each with its own source, model and post-processing: images to a
classifier, CSV sensor readings to a regression model, and audio windows to an energy model whose
voice-activity post-processing turns the loud stretch into start and end events. All run at once
against a real mosquitto; each source replays once, so the agent stops by itself after flushing."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from agent.app import Agent
from agent.config import load_config
from agent.mqtt.localbroker import Mosquitto
from tests.conftest import ASSETS, DIGITS_MODEL, write_config

RATE = 16_000
WINDOW = 1_600  # 0.1 s


def save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def mean_model(path: Path, window: int, fields: int) -> Path:
    """(1, window, fields) readings -> (1, fields) their mean: a stand-in regression model."""
    return save(
        helper.make_graph(
            [helper.make_node("ReduceMean", ["readings", "axis"], ["mean"], keepdims=0)],
            "mean",
            [helper.make_tensor_value_info("readings", TensorProto.FLOAT, [1, window, fields])],
            [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, fields])],
            [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
        ),
        path,
    )


def energy_model(path: Path) -> Path:
    """(1, WINDOW) samples -> (1, 1) a loudness probability: clip(rms * 4, 0, 1)."""
    return save(
        helper.make_graph(
            [
                helper.make_node("Mul", ["audio", "audio"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axis"], ["ms"], keepdims=1),
                helper.make_node("Sqrt", ["ms"], ["rms"]),
                helper.make_node("Mul", ["rms", "four"], ["scaled"]),
                helper.make_node("Clip", ["scaled", "zero", "one"], ["probability"]),
            ],
            "energy",
            [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, WINDOW])],
            [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1])],
            [
                helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
                helper.make_tensor("four", TensorProto.FLOAT, [], [4.0]),
                helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            ],
        ),
        path,
    )


def write_wav(path: Path) -> Path:
    """1 s of silence, 1 s of a 440 Hz tone at half scale, 1 s of silence."""
    t = np.arange(RATE) / RATE
    samples = np.concatenate([np.zeros(RATE), 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros(RATE)])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def test_three_pipelines_with_different_sources_and_models_in_one_daemon(
    mosquitto: Mosquitto, subscribe: Any, tmp_path: Path
) -> None:
    csv = tmp_path / "readings.csv"
    rows = [(float(i), 20.0 + i % 3) for i in range(12)]
    csv.write_text("step,temperature\n" + "".join(f"{a},{b}\n" for a, b in rows) + "garbage,line\n")
    mean = mean_model(tmp_path / "mean.onnx", 4, 2)
    energy = energy_model(tmp_path / "energy.onnx")
    wav = write_wav(tmp_path / "tone.wav")
    config = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "digits"
source = {{ type = "replay", path = "{ASSETS / "digits" / "images"}", rate_hz = 0, loop = false }}
model = {{ path = "{DIGITS_MODEL}" }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 1, labels = "{ASSETS / "digits" / "labels.txt"}" }}

[[pipelines]]
name = "sensors"
source = {{ type = "lines", path = "{csv}", format = "csv", window = 4, loop = false }}
model = {{ path = "{mean}" }}
postprocess = {{ type = "scalar", name = "mean" }}

[[pipelines]]
name = "voice"
source = {{ type = "wav", path = "{wav}", window = {WINDOW}, realtime = false, loop = false }}
model = {{ path = "{energy}" }}
postprocess = {{ type = "vad", start_threshold = 0.5, end_threshold = 0.3 }}
""",
        device_id="multi",
    )
    sub = subscribe(mosquitto.port, "edge/multi/+/result")
    agent = Agent(load_config(config))
    assert asyncio.run(agent.run()) == 0
    results: dict[str, list[dict[str, Any]]] = {"digits": [], "sensors": [], "voice": []}
    while sum(map(len, results.values())) < 10 + 3 + 30:
        msg = sub.next()
        results[msg.topic.split("/")[2]].append(msg.json())
    # the classifier reads its digits
    assert all(
        r["label"] == r["source"]["origin"].removeprefix("digit_").removesuffix(".png") for r in results["digits"]
    )
    # the sensor windows: 3 windows of 4 readings each, their means; the garbage line counted, not fatal
    means = [r["mean"] for r in sorted(results["sensors"], key=lambda r: r["seq"])]
    expected = [np.mean(rows[i : i + 4], axis=0).tolist() for i in (0, 4, 8)]
    assert np.allclose(means, expected, atol=1e-5)
    sensors = next(p for p in agent.pipelines if p.name == "sensors").stats()
    assert sensors["bad_inputs"] == 1
    # voice activity where the tone is: one start at 1.0 s, one end at 2.0 s
    voice = sorted(results["voice"], key=lambda r: r["seq"])
    events = [(r["event"], r["source"]["offset_s"]) for r in voice if r["event"]]
    assert events == [("speech_start", 1.0), ("speech_end", 2.0)], events
    assert all(r["speech"] == (1.0 <= r["source"]["offset_s"] < 2.0) for r in voice)


def test_snapshots_of_frames_with_detections_are_published_retained(
    mosquitto: Mosquitto, subscribe: Any, tmp_path: Path
) -> None:
    import io

    from PIL import Image

    config = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "faces"
source = {{ type = "replay", path = "{ASSETS / "images"}", pattern = "astronaut.jpg", rate_hz = 0, loop = false }}
model = {{ path = "{ASSETS / "face_detection_short_range.tflite"}" }}
preprocess = {{ resize = "letterbox", mean = [127.5], std = [127.5] }}
postprocess = {{ type = "ssd", labels = ["face"], score_threshold = 0.6 }}
snapshot_interval_s = 0.001
""",
        device_id="snap",
    )
    assert asyncio.run(Agent(load_config(config)).run()) == 0
    late = subscribe(mosquitto.port, "edge/snap/faces/snapshot").next()  # subscribed afterwards: retained
    assert late.retain
    image = Image.open(io.BytesIO(late.payload))
    assert image.format == "JPEG" and image.size == (512, 512)
    # what was drawn (pixels far from the photo's own) lies around her face, near (226, 128)
    original = np.asarray(Image.open(ASSETS / "images" / "astronaut.jpg").convert("RGB")).astype(int)
    drawn = np.abs(np.asarray(image.convert("RGB")).astype(int) - original).max(axis=2) > 120
    ys, xs = np.nonzero(drawn)
    assert drawn.sum() > 200
    assert 140 < xs.min() < 226 < xs.max() < 320 and 30 < ys.min() < 128 < ys.max() < 230


def test_inputs_posted_over_http_and_readings_from_mqtt_in_one_daemon(
    mosquitto: Mosquitto, subscribe: Any, agent_process: Any, tmp_path: Path
) -> None:
    import httpx
    from paho.mqtt import publish

    from agent.mqtt.localbroker import free_port

    port = free_port()
    mean = mean_model(tmp_path / "mean.onnx", 3, 1)
    config = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "posted"
source = {{ type = "http", port = {port} }}
model = {{ path = "{DIGITS_MODEL}" }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 1, labels = "{ASSETS / "digits" / "labels.txt"}" }}

[[pipelines]]
name = "remote"
source = {{ type = "mqtt", topic = "sensors/+/temp", payload = "json", window = 3 }}
model = {{ path = "{mean}" }}
postprocess = {{ type = "scalar", name = "mean" }}
""",
        device_id="inputs",
    )
    sub = subscribe(mosquitto.port, "edge/inputs/+/result")
    agent = agent_process(["run", "--config", str(config)])
    agent.wait_log("mqtt input subscribed to sensors/+/temp")
    png = (ASSETS / "digits" / "images" / "digit_7.png").read_bytes()
    response = httpx.post(f"http://127.0.0.1:{port}/infer", content=png, headers={"Content-Type": "image/png"},
                          timeout=30)  # fmt: skip
    assert response.status_code == 200 and response.json()["label"] == "7"
    posted = sub.wait_for(lambda m: m.topic == "edge/inputs/posted/result").json()
    assert posted["seq"] == response.json()["seq"]  # the same result, on MQTT too
    bad = httpx.post(f"http://127.0.0.1:{port}/infer", content=b"not an image", headers={"Content-Type": "image/png"},
                     timeout=30)  # fmt: skip
    assert bad.status_code == 400 and "error" in bad.json()
    for value in (20.0, 22.0, 24.0):
        publish.single("sensors/kitchen/temp", str(value), qos=1, hostname="127.0.0.1", port=mosquitto.port)
    remote = sub.wait_for(lambda m: m.topic == "edge/inputs/remote/result").json()
    assert remote["mean"] == 22.0 and remote["source"]["topic"] == "sensors/kitchen/temp"
    assert agent.stop() == 0
