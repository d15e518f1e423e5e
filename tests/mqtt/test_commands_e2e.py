"""Remote commands against the real daemon (a subprocess) over a real mosquitto, with an MQTT 5 client:
replies with the request's correlation, each command doing what it says, and fuzzed payloads that get
error replies while the daemon goes on publishing."""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.commands import sign_command
from agent.mqtt.localbroker import Mosquitto, free_port
from tests.conftest import DIGITS_MODEL, write_config
from tests.mqtt.test_delivery import pipeline

DEVICE = "ctl"
BASE = f"edge/{DEVICE}"


class Client:
    """An MQTT 5 client that sends commands and collects everything under the device's topics."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[tuple[str, bytes, Any]] = queue.Queue()
        ready: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ctl-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_connect = lambda c, *a: c.subscribe([(f"{BASE}/#", 1), ("replies/#", 1)])
        self.client.on_subscribe = lambda *a: ready.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), m.properties))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.get(timeout=10)

    def send(
        self, name: str, payload: bytes, response_topic: str | None = None, correlation: bytes | None = None
    ) -> None:
        props = None
        if response_topic or correlation:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        self.client.publish(f"{BASE}/cmd/{name}", payload, qos=1, properties=props).wait_for_publish(10)

    def next(self, topic: str, timeout: float = 30.0) -> tuple[dict[str, Any], Any]:
        while True:
            try:
                got, payload, props = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"nothing on {topic} within {timeout} s") from None
            if got == topic:
                return json.loads(payload), props

    def ask(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.send(name, json.dumps(body).encode())
        return self.next(f"{BASE}/cmd/{name}/reply")[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def daemon(mosquitto: Mosquitto, agent_process: Any, tmp_path: Path) -> Any:
    config = write_config(tmp_path, mosquitto.port, pipeline(20.0), device_id=DEVICE)
    agent = agent_process(["run", "--config", str(config)], {"EDGE_AGENT_TELEMETRY__INTERVAL_S": "0.5"})
    client = Client(mosquitto.port)
    try:
        client.next(f"{BASE}/digits/result")  # serving
    except AssertionError:
        raise AssertionError("".join(agent.log)) from None
    yield agent, client
    client.close()


def test_commands_do_what_they_say_and_answer_with_the_correlation(daemon: Any) -> None:
    agent, client = daemon
    client.send("status", b'{"id": "s-1"}', response_topic="replies/me", correlation=b"\x01corr")
    reply, props = client.next("replies/me")
    assert reply["ok"] and reply["id"] == "s-1" and props.CorrelationData == b"\x01corr"
    digits = reply["result"]["pipelines"]["digits"]
    assert digits["inferences"] > 0 and digits["rate_hz"] == 20.0 and reply["result"]["mqtt"]["connected"]

    rate = client.ask("pipeline-rate", {"pipeline": "digits", "rate_hz": 5})
    assert rate["ok"] and rate["result"] == {"pipeline": "digits", "rate_hz": 5.0, "was": 20.0}
    assert client.ask("status", {})["result"]["pipelines"]["digits"]["rate_hz"] == 5.0

    replan = client.ask("replan", {"pipeline": "digits"})
    assert replan["ok"] and "digits" in replan["result"]
    reload = client.ask("reload", {"id": "r"})
    assert reload["ok"] and reload["result"]["reloaded"]["digits"]["version"] == "1"

    before = client.next(f"{BASE}/digits/result")[0]["seq"]
    restart = client.ask("restart-pipeline", {"pipeline": "digits"})
    assert restart["ok"]
    after = client.next(f"{BASE}/digits/result")[0]
    assert after["seq"] > before and after["source"]["origin"] == "digit_0.png"  # the replay started over

    ota = client.ask("ota-check", {})
    assert not ota["ok"] and ota["error"]["code"] == "failed" and "[ota]" in ota["error"]["message"]
    telemetry = client.next(f"{BASE}/telemetry")[0]
    assert telemetry["pipelines"]["digits"]["inferences"] > 0 and telemetry["system"]["memory"]
    assert telemetry["outbox"]["backlog"] >= 0 and "digits" in telemetry["placement"]
    assert agent.proc.poll() is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["status", "pipeline-rate", "restart-pipeline", "replan", "bogus", "x"]),
    payload=st.one_of(
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
            max_leaves=6,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_fuzzed_commands_get_error_replies_and_the_daemon_keeps_publishing(
    daemon: Any, name: str, payload: bytes
) -> None:
    agent, client = daemon
    client.send(name, payload)
    reply = client.next(f"{BASE}/cmd/{name}/reply")[0]
    assert isinstance(reply["ok"], bool) and (reply["ok"] or reply["error"]["code"])
    assert agent.proc.poll() is None


def test_an_oversized_command_is_refused_and_results_go_on(daemon: Any) -> None:
    _, client = daemon
    client.send("status", b"{" + b" " * 20_000 + b"}")
    reply = client.next(f"{BASE}/cmd/status/reply")[0]
    assert not reply["ok"] and reply["error"]["code"] == "too-large"
    first = client.next(f"{BASE}/digits/result")[0]["seq"]
    assert client.next(f"{BASE}/digits/result")[0]["seq"] > first


def test_signed_commands_when_a_secret_is_configured(mosquitto: Mosquitto, agent_process: Any, tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    (tmp_path / "secret").write_text(secret)
    config = write_config(tmp_path, mosquitto.port, pipeline(20.0), device_id=DEVICE)
    env = {"EDGE_AGENT_MQTT__COMMAND_SECRET_FILE": str(tmp_path / "secret")}
    agent_process(["run", "--config", str(config)], env)
    client = Client(mosquitto.port)
    client.next(f"{BASE}/digits/result")
    unsigned = client.ask("status", {})
    assert not unsigned["ok"] and unsigned["error"]["code"] == "unauthorised"
    signed = sign_command(secret.encode(), {"id": "ok"}, name="status")
    client.send("status", signed)
    reply = client.next(f"{BASE}/cmd/status/reply")[0]
    assert reply["ok"] and reply["id"] == "ok"
    client.send("status", signed)  # the same signed message again: a replay
    assert client.next(f"{BASE}/cmd/status/reply")[0]["error"]["code"] == "unauthorised"
    client.close()


def test_home_assistant_discovery_and_prometheus_metrics(
    mosquitto: Mosquitto, agent_process: Any, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, mosquitto.port, pipeline(20.0), device_id=DEVICE)
    env = {
        "EDGE_AGENT_TELEMETRY__HOMEASSISTANT": "true",
        "EDGE_AGENT_TELEMETRY__PROMETHEUS_PORT": str(port),
        "EDGE_AGENT_TELEMETRY__INTERVAL_S": "0.5",
    }
    agent = agent_process(["run", "--config", str(config)], env)
    client = Client(mosquitto.port)
    client.client.subscribe("homeassistant/#", qos=1)
    configs: dict[str, Any] = {}
    while len(configs) < 5:
        topic, payload, _ = client.messages.get(timeout=30)
        if topic.startswith("homeassistant/") and topic.endswith("/config"):
            configs[topic] = json.loads(payload)
    assert all(c["availability_topic"] == f"{BASE}/availability" for c in configs.values() if "availability_topic" in c)
    assert any(c.get("state_topic") == f"{BASE}/digits/result" for c in configs.values())
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    client.next(f"{BASE}/telemetry")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    inferences = [
        line for line in text.splitlines() if line.startswith('edge_agent_inferences_total{pipeline="digits"}')
    ]
    assert inferences and float(inferences[0].split()[-1]) > 0
    assert "edge_agent_outbox_backlog" in text
    client.close()
    assert agent.stop() == 0


def test_a_pipeline_whose_model_cannot_load_is_reported_while_the_others_serve(
    mosquitto: Mosquitto, agent_process: Any, tmp_path: Path
) -> None:
    """A damaged model file stops its own pipeline only; once the file is fixed, restart-pipeline starts it."""
    good = tmp_path / "good.onnx"
    broken = tmp_path / "broken.onnx"
    shutil.copy(DIGITS_MODEL, good)
    broken.write_bytes(b"\x08\x07not a model at all" * 10)
    pipelines = pipeline(20.0).replace(str(DIGITS_MODEL), str(good))
    pipelines += pipeline(20.0).replace('name = "digits"', 'name = "spare"').replace(str(DIGITS_MODEL), str(broken))
    config = write_config(tmp_path, mosquitto.port, pipelines, device_id=DEVICE)
    agent = agent_process(["run", "--config", str(config)])
    client = Client(mosquitto.port)
    try:
        client.next(f"{BASE}/digits/result")  # the good pipeline serves
        line = agent.wait_log("pipeline spare not started")
        assert "broken.onnx" in line
        status = client.ask("status", {})["result"]["pipelines"]
        assert status["digits"]["inferences"] > 0 and status["digits"]["error"] is None
        assert status["spare"]["error"].startswith("not started:") and "broken.onnx" in status["spare"]["error"]
        # still broken: the restart says why, and the daemon goes on
        again = client.ask("restart-pipeline", {"pipeline": "spare"})
        assert not again["ok"] and "broken.onnx" in again["error"]["message"]
        shutil.copy(DIGITS_MODEL, broken)  # the user fixes the file
        fixed = client.ask("restart-pipeline", {"pipeline": "spare"})
        assert fixed["ok"], fixed
        result = client.next(f"{BASE}/spare/result")[0]
        assert result["pipeline"] == "spare" and result["label"] is not None
        assert client.ask("status", {})["result"]["pipelines"]["spare"]["error"] is None
    finally:
        client.close()
    assert agent.stop() == 0
