"""Home Assistant discovery: payloads, topics, availability, and templates rendered as Home Assistant would."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.mqtt.homeassistant import discovery_messages, removal_messages
from agent.mqtt.topics import Topics
from agent.telemetry import LatencyWindow, telemetry_message

TOPICS = Topics("edge", "cam-1")
# Home Assistant's discovery topic pattern (homeassistant/components/mqtt/discovery.py)
DISCOVERY_TOPIC = re.compile(
    r"^(?P<prefix>.+)/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)


def _decode(messages: list[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in messages}


def _by_unique_id(messages: list[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    return {cfg["unique_id"]: cfg for cfg in _decode(messages).values()}


def test_payloads_are_json_with_unique_ids_and_ha_topics() -> None:
    messages = discovery_messages(TOPICS, "Front camera", ["cam", "mic"], "1.2.3")
    configs = _decode(messages)
    assert len(configs) == len(messages)  # no topic twice: a retained config would replace another
    ids = [cfg["unique_id"] for cfg in configs.values()]
    assert len(set(ids)) == len(ids)
    components = set()
    for topic, cfg in configs.items():
        m = DISCOVERY_TOPIC.match(topic)
        assert m, topic
        assert m["prefix"] == "homeassistant"
        assert m["node_id"] == "edge_cam-1"
        components.add(m["component"])
        assert cfg["name"]
        assert cfg["device"] == {
            "identifiers": ["edge-agent_edge_cam-1"],
            "name": "Front camera",
            "model": "edge-agent",
            "manufacturer": "edge-agent",
            "sw_version": "1.2.3",
        }
    assert components == {"sensor", "binary_sensor"}
    # per pipeline: result, latency, frames/s; device: backlog, CPU, memory, temperature; + connectivity
    assert len(messages) == 2 * 3 + 4 + 1


def test_state_topics_come_from_topics_and_availability_is_wired() -> None:
    configs = _decode(discovery_messages(TOPICS, "cam", ["cam", "mic"], "1.0"))
    sensors = {t: c for t, c in configs.items() if "/sensor/" in t}
    for cfg in sensors.values():
        assert cfg["availability_topic"] == TOPICS.availability == "edge/cam-1/availability"
        assert cfg["payload_available"] == "online"
        assert cfg["payload_not_available"] == "offline"
        assert cfg["state_topic"] in {TOPICS.result("cam"), TOPICS.result("mic"), TOPICS.telemetry}
    result = configs["homeassistant/sensor/edge_cam-1/mic_result/config"]
    assert result["state_topic"] == result["json_attributes_topic"] == "edge/cam-1/mic/result"
    assert configs["homeassistant/sensor/edge_cam-1/cpu/config"]["state_topic"] == "edge/cam-1/telemetry"
    connected = configs["homeassistant/binary_sensor/edge_cam-1/availability/config"]
    assert connected["state_topic"] == TOPICS.availability
    assert (connected["payload_on"], connected["payload_off"]) == ("online", "offline")
    assert connected["device_class"] == "connectivity"
    # it reads availability itself: with an availability topic of its own "offline" would show as unavailable
    assert "availability_topic" not in connected


def test_discovery_prefix_and_removal() -> None:
    messages = discovery_messages(TOPICS, "cam", ["cam"], "1.0", discovery_prefix="ha/disc")
    assert all(topic.startswith("ha/disc/") for topic, _ in messages)
    removal = removal_messages(messages)
    assert [t for t, _ in removal] == [t for t, _ in messages]
    assert all(payload == b"" for _, payload in removal)
    for bad in ("", "ha/#", "ha/+/x", "ha//x", " ha"):
        with pytest.raises(ConfigError, match="discovery prefix"):
            discovery_messages(TOPICS, "cam", ["cam"], "1.0", discovery_prefix=bad)


def test_names_that_need_escaping_stay_distinct() -> None:
    names = ["cam.front", "cam_front", "cam-front", "outbox", "cpu"]
    messages = discovery_messages(Topics("site/a", "dev.1"), "dev", names, "1.0")
    ids = list(_by_unique_id(messages))
    assert len(set(ids)) == len(ids) == len(messages)
    assert len({t for t, _ in messages}) == len(messages)
    for topic, _ in messages:
        assert DISCOVERY_TOPIC.match(topic), topic
    # another prefix for the same device id is another device: nothing retained is shared
    other = discovery_messages(Topics("site/b", "dev.1"), "dev", names, "1.0")
    assert not {t for t, _ in messages} & {t for t, _ in other}


def test_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kind"):
        discovery_messages(TOPICS, "cam", ["cam"], "1.0", kinds={"cam": "yolo"})
    with pytest.raises(ConfigError, match="unique"):
        discovery_messages(TOPICS, "cam", ["cam", "cam"], "1.0")
    with pytest.raises(ConfigError, match="pipeline name"):
        discovery_messages(TOPICS, "cam", ["a/b"], "1.0")


# ---- templates, rendered the way Home Assistant renders them ---------------------------------------------


def _render(template: str, payload: bytes) -> str:
    jinja2_sandbox = pytest.importorskip("jinja2.sandbox")
    env = jinja2_sandbox.ImmutableSandboxedEnvironment()  # Home Assistant's templates run in this sandbox
    return str(env.from_string(template).render(value_json=json.loads(payload), value=payload.decode()))


def _result_config(kind: str | None) -> dict[str, Any]:
    kinds = {"cam": kind} if kind else None
    configs = _decode(discovery_messages(TOPICS, "cam", ["cam"], "1.0", kinds=kinds))
    return configs["homeassistant/sensor/edge_cam-1/cam_result/config"]


RESULT = {
    "seq": 12,
    "ts": "2024-05-01T12:00:00.000Z",
    "pipeline": "cam",
    "model": "digits",
    "version": "3",
    "accelerators": ["cpu"],
    "latency_ms": 8.25,
    "inference_ms": 2.5,
    "source": {"origin": "a.png"},
}


def test_result_sensor_shows_the_top_label_for_classification() -> None:
    body = {**RESULT, "label": "seven", "top": [{"label": "seven", "index": 7, "score": 0.9}]}
    cfg = _result_config("classification")
    assert _render(cfg["value_template"], json.dumps(body).encode()) == "seven"
    assert "unit_of_measurement" not in cfg  # a label is not a number


def test_result_sensor_counts_detections_for_ssd() -> None:
    det = {"label": "face", "score": 0.8, "box": [1, 2, 3, 4]}
    cfg = _result_config("ssd")
    assert _render(cfg["value_template"], json.dumps({**RESULT, "detections": [det, det, det]}).encode()) == "3"
    assert _render(cfg["value_template"], json.dumps({**RESULT, "detections": []}).encode()) == "0"


@pytest.mark.parametrize("kind", [None, "raw"])
def test_result_sensor_shows_latency_otherwise(kind: str | None) -> None:
    cfg = _result_config(kind)
    body = {**RESULT, "outputs": {"y": [[0.1, 0.2]]}}
    assert _render(cfg["value_template"], json.dumps(body).encode()) == "8.25"
    assert cfg["unit_of_measurement"] == "ms"


def test_result_attributes_are_a_small_json_object() -> None:
    cfg = _result_config("classification")
    body = {**RESULT, "label": "seven", "top": [{"label": "seven"}] * 5, "degraded": True}
    attrs = json.loads(_render(cfg["json_attributes_template"], json.dumps(body).encode()))
    assert attrs == {
        "seq": 12,
        "model": "digits",
        "version": "3",
        "latency_ms": 8.25,
        "accelerators": ["cpu"],
        "degraded": True,
    }


def test_telemetry_sensors_read_a_real_telemetry_message() -> None:
    window = LatencyWindow()
    for ms in (2.0, 4.0, 6.0):
        window.add(ms)
    stats = {"frames": 10, "inferences": 10, "published": 10, "frames_dropped": 0, "latency_ms": window}
    system = {"cpu_percent": 37.5, "memory": {"percent": 41.2}, "temperature_c": 55.0}
    first = telemetry_message(system, {"cam.front": stats}, {}, {"backlog": 17}, {}, None, now=1000.0)
    stats = {**stats, "frames": 30}
    msg = telemetry_message(system, {"cam.front": stats}, {}, {"backlog": 17}, {}, None, now=1002.0, previous=first)
    payload = json.dumps(msg).encode()

    by_name = {cfg["name"]: cfg for cfg in _decode(discovery_messages(TOPICS, "cam", ["cam.front"], "1.0")).values()}
    expected = {
        "cam.front inference latency": "4.0",
        "cam.front frames/s": "10.0",
        "Outbox backlog": "17",
        "CPU": "37.5",
        "Memory": "41.2",
        "Temperature": "55.0",
    }
    for name, value in expected.items():
        assert _render(by_name[name]["value_template"], payload) == value, name


def test_missing_figures_render_none_which_home_assistant_shows_as_unknown() -> None:
    msg = telemetry_message({"cpu_percent": 1.0}, {}, {}, None, {}, None, now=1000.0)
    payload = json.dumps(msg).encode()
    configs = _decode(discovery_messages(TOPICS, "cam", ["cam"], "1.0"))
    rendered = {
        cfg["name"]: _render(cfg["value_template"], payload)
        for cfg in configs.values()
        if cfg.get("state_topic") == TOPICS.telemetry
    }
    # Home Assistant's MQTT sensor maps the rendered text "None" to unknown (PAYLOAD_NONE)
    assert rendered == {
        "cam inference latency": "None",
        "cam frames/s": "None",
        "Outbox backlog": "None",
        "CPU": "1.0",
        "Memory": "None",
        "Temperature": "None",
    }
