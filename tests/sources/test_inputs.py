"""Inputs from other programs: the MQTT source against a real mosquitto, the HTTP source as a real server."""

from __future__ import annotations

import io
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from pydantic import ValidationError

from agent.errors import SourceError
from agent.mqtt.localbroker import Mosquitto, free_port
from agent.sources.base import Frame
from agent.sources.http_input import HttpInputRunner, HttpInputSource, PendingReply
from agent.sources.mqtt_input import MqttInputRunner, MqttInputSource

WAIT_S = 20.0


class Frames:
    """What a source emitted, in order; tests wait on it with timeouts, never sleeps."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Frame] = queue.Queue()

    def emit(self, frame: Frame) -> None:
        self.queue.put(frame)

    def next(self, timeout: float = WAIT_S) -> Frame:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout} s") from None


def png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


PIXELS = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)  # (H, W, C)


def run_in_thread(runner: Any, stop: threading.Event) -> Iterator[None]:
    errors: list[BaseException] = []

    def main() -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name="test-source")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the source did not return after stop was set"
        assert not errors, errors


# ---- MQTT ----------------------------------------------------------------------------------------


class Publisher:
    """Publishes at QoS 1 and waits for each acknowledgement; ``client`` set up for TLS where the broker wants it."""

    def __init__(self, port: int, client: mqtt.Client | None = None, host: str = "127.0.0.1") -> None:
        self.client = client or mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str | float) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_input(mosquitto: Mosquitto) -> Iterator[Callable[..., tuple[MqttInputRunner, Frames, Publisher]]]:
    cleanups: list[Iterator[None]] = []
    publishers: list[Publisher] = []

    def start(**kw: Any) -> tuple[MqttInputRunner, Frames, Publisher]:
        cfg = MqttInputSource(type="mqtt", host="127.0.0.1", port=mosquitto.port, **kw)
        frames = Frames()
        stop = threading.Event()
        runner = MqttInputRunner(cfg, frames.emit, stop)
        running = run_in_thread(runner, stop)
        next(running)
        cleanups.append(running)
        assert runner.subscribed.wait(WAIT_S), "the source's subscription was not acknowledged"
        publisher = Publisher(mosquitto.port)
        publishers.append(publisher)
        return runner, frames, publisher

    yield start
    for publisher in publishers:
        publisher.close()
    for running in cleanups:
        next(running, None)


def test_mqtt_json_numbers_in_windows_with_wildcards(mqtt_input: Any) -> None:
    runner, frames, pub = mqtt_input(topic="sensors/+/temp", window=3)
    for value in range(1, 8):
        pub.send("sensors/kitchen/temp", json.dumps(value))
    first, second = frames.next(), frames.next()
    assert first.is_tensor and first.data.dtype == np.float32 and first.data.shape == (3, 1)
    np.testing.assert_array_equal(first.data[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(second.data[:, 0], [4, 5, 6])
    assert first.meta == {"topic": "sensors/kitchen/temp", "offset": 0, "fields": ["value"]}
    assert second.meta["offset"] == 3
    assert first.origin == "sensors/kitchen/temp"
    assert runner.bad_inputs == 0


def test_mqtt_json_objects_pick_fields_with_overlapping_windows(mqtt_input: Any) -> None:
    _, frames, pub = mqtt_input(topic="imu", fields=["ay", "ax"], window=2, hop=1)
    pub.send("imu", json.dumps({"ax": 1, "ay": 2, "name": "left"}))
    pub.send("imu", json.dumps({"ax": 3, "ay": 4}))
    pub.send("imu", json.dumps({"ay": 6, "ax": 5, "extra": 9}))
    first, second = frames.next(), frames.next()
    np.testing.assert_array_equal(first.data, [[2, 1], [4, 3]])
    np.testing.assert_array_equal(second.data, [[4, 3], [6, 5]])
    assert second.meta["fields"] == ["ay", "ax"] and second.meta["offset"] == 1


def test_mqtt_each_topic_has_its_own_window(mqtt_input: Any) -> None:
    _, frames, pub = mqtt_input(topic="room/#", window=2)
    pub.send("room/a", "[1, 2]")
    pub.send("room/b", "[10, 20]")
    pub.send("room/a", "[3, 4]")
    pub.send("room/b", "[30, 40]")
    first, second = frames.next(), frames.next()
    assert first.meta["topic"] == "room/a" and second.meta["topic"] == "room/b"
    np.testing.assert_array_equal(first.data, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(second.data, [[10, 20], [30, 40]])
    assert first.meta["fields"] == ["0", "1"]


def test_mqtt_garbage_is_counted_skipped_and_warned_once_per_kind(
    mqtt_input: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner, frames, pub = mqtt_input(topic="t")
    with caplog.at_level(logging.WARNING, logger="agent.sources.payloads"):
        for garbage in (b"\xff\xfe", b"{not json", b"NaN", b'"text"', b"[1, true]", b"{}"):
            pub.send("t", garbage)
        pub.send("t", b"42")
        first = frames.next()  # messages are taken in order: every bad one before it was counted
        assert runner.bad_inputs == 6  # not UTF-8; bad JSON x2 (NaN is no reading); not a number x3
        pub.send("t", b"[1, 2]")  # the first reading had one value
        pub.send("t", b"43")
        second = frames.next()
    np.testing.assert_array_equal(first.data, [[42]])
    np.testing.assert_array_equal(second.data, [[43]])
    assert (first.meta["offset"], second.meta["offset"]) == (0, 1)
    assert runner.bad_inputs == 7
    kinds = [r.getMessage().split("(")[1].split(":")[0] for r in caplog.records]
    assert sorted(kinds) == ["bad JSON", "not a number", "not like the first reading", "not text"], kinds


def test_mqtt_image_and_npy_payloads(mqtt_input: Any) -> None:
    runner, frames, pub = mqtt_input(topic="cam/+", payload="image")
    pub.send("cam/1", b"\x89PNG garbage")
    pub.send("cam/1", png(PIXELS))
    pub.send("cam/2", png(PIXELS[:, :, 0], "L"))
    color, gray = frames.next(), frames.next()
    np.testing.assert_array_equal(color.data, PIXELS)
    assert not color.is_tensor and color.meta == {"topic": "cam/1", "width": 5, "height": 4}
    assert gray.data.shape == (4, 5, 3)  # always RGB
    np.testing.assert_array_equal(gray.data[:, :, 2], PIXELS[:, :, 0])
    assert runner.bad_inputs == 1

    runner, frames, pub = mqtt_input(topic="tensors", payload="npy")
    tensor = np.arange(6, dtype=np.int16).reshape(2, 3)
    pub.send("tensors", npy(tensor)[:-2])  # truncated
    pub.send("tensors", npy(tensor))
    frame = frames.next()
    assert frame.is_tensor and frame.data.dtype == np.int16
    np.testing.assert_array_equal(frame.data, tensor)
    assert runner.bad_inputs == 1


def test_mqtt_config_defaults_and_mistakes() -> None:
    runner = MqttInputRunner(MqttInputSource(type="mqtt", topic="x"), lambda f: None, threading.Event())
    assert (runner.host, runner.port) == ("localhost", 1883)  # unset: the agent's broker, filled by the agent
    assert runner.client_id.startswith("edge-agent-input-")
    named = MqttInputRunner(MqttInputSource(type="mqtt", topic="x", client_id="me"), lambda f: None, threading.Event())
    assert named.client_id == "me"
    with pytest.raises(ValidationError, match="apply to payload"):
        MqttInputSource(type="mqtt", topic="x", payload="image", window=4)
    with pytest.raises(ValidationError, match="extra"):
        MqttInputSource(type="mqtt", topic="x", qos=2)  # type: ignore[call-arg]


# ---- HTTP ----------------------------------------------------------------------------------------


def answer(frame: Frame) -> dict[str, Any]:
    return {"shape": list(frame.data.shape), "sum": float(frame.data.sum()), "tensor": frame.is_tensor}


@pytest.fixture
def http_input() -> Iterator[Callable[..., tuple[HttpInputRunner, Frames, threading.Event]]]:
    cleanups: list[Iterator[None]] = []

    def start(**kw: Any) -> tuple[HttpInputRunner, Frames, threading.Event]:
        cfg = HttpInputSource(type="http", port=kw.pop("port", None) or free_port(), **kw)
        frames = Frames()
        stop = threading.Event()
        runner = HttpInputRunner(cfg, frames.emit, stop)
        running = run_in_thread(runner, stop)
        next(running)
        cleanups.append(running)
        return runner, frames, stop

    yield start
    for running in cleanups:
        next(running, None)


def pipeline(frames: Frames, count: int) -> threading.Thread:
    """Stands in for the pipeline: answers ``count`` frames through their reply."""

    def main() -> None:
        for _ in range(count):
            frame = frames.next()
            reply = frame.meta["reply"]
            assert isinstance(reply, PendingReply)
            reply.resolve(answer(frame))

    thread = threading.Thread(target=main, name="test-pipeline", daemon=True)
    thread.start()
    return thread


def test_http_json_png_and_npy_are_answered_with_their_results(http_input: Any) -> None:
    runner, frames, _ = http_input()
    worker = pipeline(frames, 3)
    got = httpx.post(runner.url, json=[[1, 2], [3, 4.5]], timeout=WAIT_S)
    assert got.status_code == 200, got.text
    assert got.json() == {"shape": [2, 2], "sum": 10.5, "tensor": True}
    got = httpx.post(runner.url, content=png(PIXELS), headers={"Content-Type": "image/png"}, timeout=WAIT_S)
    assert got.json() == {"shape": [4, 5, 3], "sum": float(PIXELS.sum()), "tensor": False}
    got = httpx.post(
        runner.url, content=npy(np.ones((3, 2), np.float32)), headers={"Content-Type": "application/octet-stream"}
    )
    assert got.json() == {"shape": [3, 2], "sum": 6.0, "tensor": True}
    assert got.headers["Content-Type"] == "application/json"
    worker.join(WAIT_S)
    assert runner.bad_inputs == 0


def test_http_concurrent_requests_get_their_own_results(http_input: Any) -> None:
    runner, frames, _ = http_input()
    worker = pipeline(frames, 8)
    results: dict[int, Any] = {}

    def client(i: int) -> None:
        results[i] = httpx.post(runner.url, json=[i, i], timeout=WAIT_S).json()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(WAIT_S)
    assert results == {i: {"shape": [2], "sum": 2.0 * i, "tensor": True} for i in range(8)}
    worker.join(WAIT_S)


def test_http_no_result_in_time_is_504_and_a_failure_carries_its_status(http_input: Any) -> None:
    runner, frames, _ = http_input(timeout_s=0.3)
    got = httpx.post(runner.url, json=[1], timeout=WAIT_S)
    assert got.status_code == 504 and "no result within 0.3 s" in got.json()["error"]
    frames.next().meta["reply"].resolve({"late": True})  # too late: harmless

    def refuse() -> None:
        frames.next().meta["reply"].fail("input of shape (1,) does not fit the model's (1, 28, 28)", 422)

    threading.Thread(target=refuse, daemon=True).start()
    got = httpx.post(runner.url, json=[1], timeout=WAIT_S)
    assert got.status_code == 422
    assert got.json() == {"error": "input of shape (1,) does not fit the model's (1, 28, 28)"}


def test_http_malformed_bodies_are_400_and_counted(http_input: Any) -> None:
    runner, frames, _ = http_input()
    bad = [
        (b"{oops", "application/json"),
        (b"[[1, 2], [3]]", "application/json"),
        (b'["1", 2]', "application/json"),
        (b"[]", "application/json"),
        (b"not a png", "image/png"),
        (npy(np.ones(4))[:-1], "application/octet-stream"),
    ]
    for body, kind in bad:
        got = httpx.post(runner.url, content=body, headers={"Content-Type": kind}, timeout=WAIT_S)
        assert got.status_code == 400, (body, got.text)
        assert "\n" not in got.json()["error"]
    got = httpx.post(runner.url, content=b"1,2", headers={"Content-Type": "text/csv"}, timeout=WAIT_S)
    assert got.status_code == 415 and "send one of" in got.json()["error"]
    assert runner.bad_inputs == len(bad) + 1
    assert frames.queue.empty()


def test_http_oversized_wrong_path_and_wrong_method(http_input: Any) -> None:
    runner, frames, _ = http_input(max_bytes=100, path="/v1/run")
    got = httpx.post(runner.url, content=b"x" * 1000, headers={"Content-Type": "image/png"}, timeout=WAIT_S)
    assert got.status_code == 413 and "over 100" in got.json()["error"]
    base = runner.url.removesuffix("/v1/run")
    got = httpx.post(f"{base}/infer", json=[1], timeout=WAIT_S)
    assert got.status_code == 404 and "POST to /v1/run" in got.json()["error"]
    got = httpx.get(runner.url, timeout=WAIT_S)
    assert got.status_code == 405 and got.headers["Allow"] == "POST"
    assert runner.bad_inputs == 0 and frames.queue.empty()


def test_http_stopping_answers_waiting_requests_503(http_input: Any) -> None:
    runner, frames, stop = http_input()
    responses: queue.Queue[httpx.Response] = queue.Queue()
    client = threading.Thread(target=lambda: responses.put(httpx.post(runner.url, json=[1], timeout=WAIT_S)))
    client.start()
    frames.next()  # the request is waiting for its result
    stop.set()
    got = responses.get(timeout=WAIT_S)
    assert got.status_code == 503 and got.json() == {"error": "the agent is stopping"}


def test_http_taken_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SourceError, match=rf"cannot listen on 127.0.0.1:{port} .*: choose another port"):
            HttpInputRunner(HttpInputSource(type="http", port=port), lambda f: None, threading.Event())


def test_pending_reply_first_answer_wins() -> None:
    reply = PendingReply()
    assert not reply.wait(0)
    reply.resolve({"a": 1})
    reply.fail("late")
    assert reply.wait(0) and reply.result == {"a": 1} and reply.error is None
