"""The MQTT input over TLS against a real mosquitto (a CA made by the test, a client certificate, a password):
with a broker of its own, and without one, where it connects as the agent's [mqtt] does; a wrong CA or
password is logged once and retried, and a file that cannot be loaded is a one-line error at start."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError

from agent.config import load_config
from agent.errors import ConfigError
from agent.sources.mqtt_input import MqttInputRunner, MqttInputSource
from tests.conftest import write_config
from tests.mqtt.tls_broker import PASSWORD, USER, TlsBroker, tls_mosquitto
from tests.ota.https_server import make_pki
from tests.sources.test_inputs import WAIT_S, Frames, Publisher, run_in_thread
from tests.test_multi_pipeline import mean_model

LOGGER = "agent.sources.mqtt_input"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TlsBroker]:
    with tls_mosquitto(tmp_path / "broker") as tls:
        yield tls


def password_file(folder: Path, password: str = PASSWORD) -> Path:
    path = folder / f"password-{password}"
    path.write_text(password + "\n")  # as `echo s3cret > file` writes it
    return path


def own_broker(broker: TlsBroker, folder: Path, **kw: Any) -> MqttInputSource:
    """An input with a broker of its own: this TLS broker, its CA, the client certificate, the user."""
    settings: dict[str, Any] = {
        "type": "mqtt", "topic": "sensors/+/temp", "host": "localhost", "port": broker.port, "tls": True,
        "ca_file": broker.pki.ca_cert, "client_cert": broker.pki.client_cert, "client_key": broker.pki.client_key,
        "username": USER, "password_file": password_file(folder),
    }  # fmt: skip
    return MqttInputSource(**{**settings, **kw})


def tls_publisher(broker: TlsBroker) -> Publisher:
    return Publisher(broker.port, broker.client(f"test-pub-{time.monotonic_ns()}"), host="localhost")


@pytest.fixture
def start_input() -> Iterator[Callable[[MqttInputSource], tuple[MqttInputRunner, Frames]]]:
    cleanups: list[Iterator[None]] = []

    def start(cfg: MqttInputSource) -> tuple[MqttInputRunner, Frames]:
        frames = Frames()
        stop = threading.Event()
        runner = MqttInputRunner(cfg, frames.emit, stop)
        running = run_in_thread(runner, stop)
        next(running)
        cleanups.append(running)
        return runner, frames

    yield start
    for running in cleanups:
        next(running, None)


def test_readings_published_over_tls_arrive_as_frames(
    broker: TlsBroker, tmp_path: Path, start_input: Callable[..., tuple[MqttInputRunner, Frames]]
) -> None:
    runner, frames = start_input(own_broker(broker, tmp_path, window=2))
    assert runner.subscribed.wait(WAIT_S), "the input never subscribed over TLS"
    publisher = tls_publisher(broker)
    try:
        for value in (1.5, 2.5):
            publisher.send("sensors/kitchen/temp", json.dumps(value))
        frame = frames.next()
    finally:
        publisher.close()
    np.testing.assert_array_equal(frame.data[:, 0], [1.5, 2.5])
    assert frame.meta["topic"] == "sensors/kitchen/temp"


def test_mqtt_3_1_1_over_tls_on_request(
    broker: TlsBroker, tmp_path: Path, start_input: Callable[..., tuple[MqttInputRunner, Frames]]
) -> None:
    runner, _ = start_input(own_broker(broker, tmp_path, protocol="3.1.1", client_id="input-311"))
    assert runner.subscribed.wait(WAIT_S), "the input never subscribed with MQTT 3.1.1 over TLS"


def test_a_broker_signed_by_another_ca_gives_no_frames_and_one_clear_log_line(
    broker: TlsBroker,
    tmp_path: Path,
    start_input: Callable[..., tuple[MqttInputRunner, Frames]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = make_pki(tmp_path / "other")
    cfg = own_broker(broker, tmp_path, ca_file=other.ca_cert)
    attempts: queue.Queue[None] = queue.Queue()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runner = MqttInputRunner(cfg, Frames().emit, threading.Event())
        failed = runner._on_connect_fail

        def counting(client: mqtt.Client, userdata: Any) -> None:
            failed(client, userdata)
            attempts.put(None)

        monkeypatch.setattr(runner, "_on_connect_fail", counting)
        running = run_in_thread(runner, runner.stop)
        next(running)
        try:
            for _ in range(3):  # paho retries after 1 s, then 2 s
                attempts.get(timeout=WAIT_S)
            publisher = tls_publisher(broker)  # the broker itself is fine: the right CA gets through
            publisher.send("sensors/kitchen/temp", "20")
            publisher.close()
            assert not runner.subscribed.is_set()
        finally:
            next(running, None)  # stops the runner; it must neither crash nor hang
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines  # three failed attempts, one line
    assert f"cannot connect to localhost:{broker.port}" in lines[0]
    assert "TLS handshake failed" in lines[0] and "certificate verify failed" in lines[0]
    assert "\n" not in lines[0]


def test_a_wrong_password_is_logged_once_and_retried_until_the_broker_takes_it(
    broker: TlsBroker,
    tmp_path: Path,
    start_input: Callable[..., tuple[MqttInputRunner, Frames]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cfg = own_broker(broker, tmp_path, username="sensor-reader", password_file=password_file(tmp_path, "n3w"))
        runner, frames = start_input(cfg)
        # refused (not authorised) at every attempt: wait for the line, and for two retries after it
        deadline = time.monotonic() + WAIT_S
        while not any("refused the connection" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the refusal was never logged"
            time.sleep(0.05)  # the refusal happens in paho's thread; nothing to wait on but the log
        assert not runner.subscribed.wait(3.5)  # paho retried after 1 s and 2 s meanwhile
        broker.set_password("sensor-reader", "n3w")  # the broker learns the user: the next attempt gets in
        assert runner.subscribed.wait(WAIT_S), "the input did not retry after the refusal"
        publisher = tls_publisher(broker)
        publisher.send("sensors/hall/temp", "21")
        publisher.close()
        assert frames.next().data[0, 0] == 21
    refusals = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "check username and password" in refusals[0]


def test_an_input_without_host_connects_as_the_agent_does(
    broker: TlsBroker,
    tmp_path: Path,
    agent_process: Any,
) -> None:
    """The daemon: [mqtt] over TLS with a password; the input names no broker, so it takes [mqtt]'s."""
    mean = mean_model(tmp_path / "mean.onnx", 3, 1)
    pki = broker.pki
    config = write_config(
        tmp_path,
        broker.port,
        f"""tls = true
ca_file = "{pki.ca_cert}"
client_cert = "{pki.client_cert}"
client_key = "{pki.client_key}"
username = "{USER}"
password = "{PASSWORD}"

[[pipelines]]
name = "remote"
source = {{ type = "mqtt", topic = "sensors/+/temp", window = 3 }}
model = {{ path = "{mean}" }}
postprocess = {{ type = "scalar", name = "mean" }}
""",
        device_id="tls",
    )
    loaded = load_config(config).pipelines[0].source
    assert isinstance(loaded, MqttInputSource)
    assert (loaded.tls, loaded.ca_file, loaded.username, loaded.protocol) == (True, pki.ca_cert, USER, "5")
    assert PASSWORD not in loaded.model_dump_json()  # the `config` command shows no inherited password

    results: queue.Queue[dict[str, Any]] = queue.Queue()
    subscriber = broker.client(f"test-sub-{time.monotonic_ns()}")
    subscriber.on_connect = lambda c, *a: c.subscribe("edge/tls/remote/result", qos=1)
    subscriber.on_message = lambda c, u, m: results.put(json.loads(m.payload))
    subscriber.connect("localhost", broker.port)
    subscriber.loop_start()
    publisher = tls_publisher(broker)
    agent = agent_process(["run", "--config", str(config)])
    try:
        agent.wait_log("mqtt input subscribed to sensors/+/temp")
        for value in (20.0, 22.0, 24.0):
            publisher.send("sensors/kitchen/temp", str(value))
        result = results.get(timeout=WAIT_S)
        assert result["mean"] == 22.0 and result["source"]["topic"] == "sensors/kitchen/temp"
        assert agent.stop() == 0
    finally:
        publisher.close()
        subscriber.disconnect()
        subscriber.loop_stop()
    assert "certificate verify failed" not in "".join(agent.log)


def test_a_bad_ca_certificate_or_password_file_is_a_one_line_error_at_start(
    broker: TlsBroker, tmp_path: Path, agent_process: Any
) -> None:
    missing = tmp_path / "missing-ca.pem"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = [
        ({"ca_file": missing}, f"cannot load the CA bundle ca_file = {missing}: No such file or directory"),
        ({"ca_file": not_pem}, "cannot load the CA bundle"),
        ({"client_key": broker.pki.ca_key}, "cannot load the client certificate"),  # not the certificate's key
        ({"password_file": tmp_path / "nope"}, f"password_file {tmp_path / 'nope'} does not exist"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            MqttInputRunner(own_broker(broker, tmp_path, **change), Frames().emit, threading.Event())
        assert str(caught.value).startswith("mqtt input sensors/+/temp: ")
        assert "\n" not in str(caught.value)

    # the daemon: the same, one line on stderr and exit status 2, before it connects to anything
    mean = mean_model(tmp_path / "mean.onnx", 3, 1)
    config = write_config(
        tmp_path,
        broker.port,
        f"""
[[pipelines]]
name = "remote"
source = {{ type = "mqtt", topic = "t", host = "localhost", tls = true, ca_file = "{missing}" }}
model = {{ path = "{mean}" }}
postprocess = {{ type = "scalar", name = "mean" }}
""",
    )
    agent = agent_process(["run", "--config", str(config)])
    assert agent.proc.wait(60) == 2
    agent._reader.join(10)
    errors = [line for line in agent.log if "error" in line.lower()]
    expected = f"mqtt input t: cannot load the CA bundle ca_file = {missing}: No such file or directory; give a PEM"
    assert errors == [f"edge-agent: error: {expected} file of CA certificates\n"], agent.log
    assert "Traceback" not in "".join(agent.log)


def test_tls_settings_are_checked_like_the_agents() -> None:
    with pytest.raises(ValidationError, match="apply to the input's own broker: set host too"):
        MqttInputSource(type="mqtt", topic="t", tls=True)
    with pytest.raises(ValidationError, match="set host too"):
        MqttInputSource(type="mqtt", topic="t", username="u", password_file=Path("p"))
    with pytest.raises(ValidationError, match="set client_cert and client_key together"):
        MqttInputSource(type="mqtt", topic="t", host="h", tls=True, client_cert=Path("c.pem"))
    with pytest.raises(ValidationError, match="need tls = true"):
        MqttInputSource(type="mqtt", topic="t", host="h", ca_file=Path("ca.pem"))
    with pytest.raises(ValidationError, match="password or password_file, not both"):
        MqttInputSource(type="mqtt", topic="t", host="h", username="u", password="p", password_file=Path("p"))
    with pytest.raises(ValidationError, match="a password needs a username"):
        MqttInputSource(type="mqtt", topic="t", host="h", password_file=Path("p"))
    own = MqttInputSource(type="mqtt", topic="t", host="h", tls=True)
    assert MqttInputRunner(own, Frames().emit, threading.Event()).port == 8883  # TLS's port when none is given
