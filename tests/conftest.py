"""Shared fixtures: a real mosquitto per test on a free loopback port, a subscriber, the demo assets."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.localbroker import Mosquitto, find_mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "agent" / "demo" / "assets"
DEMO_TOML = ROOT / "agent" / "demo" / "demo.toml"
FACE_MODEL = ASSETS / "face_detection_short_range.tflite"
DIGITS_MODEL = ASSETS / "digits" / "digits_mlp.onnx"


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is required in CI (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Mosquitto(free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message; tests wait on it with timeouts, never sleeps."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}")
        self.client.on_message = lambda c, u, m: self.messages.put(Message(m.topic, bytes(m.payload), m.retain))
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def next(self, timeout: float = 20.0) -> Message:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no MQTT message within {timeout} s") from None

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            if predicate(msg):
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe() -> Iterator[Any]:
    subs: list[Subscriber] = []

    def make(port: int, topic: str = "edge/#") -> Subscriber:
        sub = Subscriber(port, topic)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


class AgentProcess:
    """``python -m agent run`` as a real subprocess, with its stderr read line by line in a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",  # a native library may write bytes that are not UTF-8 (OpenCV on a damaged file)
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_log(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"agent never logged {text!r}; log:\n{''.join(self.log)}") from None
            if text in line:
                return line

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Any]:
    procs: list[AgentProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> AgentProcess:
        proc = AgentProcess(args, {"EDGE_AGENT_AGENT__STATE_DIR": str(tmp_path / "state"), **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        if proc.proc.stdout:
            proc.proc.stdout.close()
        if proc.proc.stderr:
            proc.proc.stderr.close()


def write_config(tmp_path: Path, port: int, pipelines: str, device_id: str = "dev") -> Path:
    """A config file for an in-process agent: this device, a state folder under tmp_path, the test broker."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\ndevice_id = "{device_id}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n{pipelines}'
    )
    return path
