"""systemd's notify protocol against a real unix datagram socket given as NOTIFY_SOCKET, with the real daemon:
READY only once the model is loaded, WATCHDOG pings while frames flow and none while an inference is stuck,
STOPPING on SIGTERM; and the status file that ``edge-agent status`` reads."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.status_file import read_status
from agent.systemd import Notifier
from tests.conftest import ASSETS, FACE_MODEL, ROOT, write_config

IMAGES = ASSETS / "images"

WATCHDOG_USEC = 400_000  # 0.4 s: the agent pings every 0.2 s


class NotifySocket:
    """The service manager's end: a bound datagram socket and the messages that reach it, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    def wait_for(self, key: str, timeout: float = 60.0, agent: Any = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(min(left, 1.0))
            if message is not None and key in message:
                return message
            if agent is not None and message is None and agent.proc.poll() is not None:
                break  # the agent is gone: say why instead of waiting out the timeout
        log = "".join(agent.log) if agent is not None else ""
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}\n{log}")

    def drain(self) -> list[dict[str, str]]:
        """Every message already queued on the socket."""
        out = []
        while (message := self.receive(0.001)) is not None:
            out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _env(notify: NotifySocket, status: Path) -> dict[str, str]:
    return {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "EDGE_AGENT_AGENT__STATUS_FILE": str(status),
    }


def _wait_status(path: Path, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
    """The status file once it satisfies ``predicate`` (the agent rewrites it every interval)."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = json.loads(path.read_text())
        except (OSError, ValueError):
            seen = None
        if isinstance(seen, dict) and predicate(seen):
            return seen
        time.sleep(0.05)  # polling a file another process rewrites; the predicate is the synchronisation
    raise AssertionError(f"status file never matched; last: {seen}")


def test_ready_after_load_watchdog_while_frames_flow_stopping_on_sigterm(
    tmp_path: Path, mosquitto: Any, subscribe: Any, agent_process: Any, notify: NotifySocket
) -> None:
    status = tmp_path / "status.json"
    config = write_config(
        tmp_path,
        mosquitto.port,
        f'[[pipelines]]\nname = "faces"\nsource = {{ type = "replay", path = "{IMAGES}", pattern = "*.jpg", '
        f'rate_hz = 20 }}\nmodel = {{ path = "{FACE_MODEL}", backend = "litert-cpu" }}\n'
        'preprocess = { resize = "letterbox", mean = [127.5], std = [127.5] }\n'
        'postprocess = { type = "ssd", labels = ["face"] }\n',
    )
    results = subscribe(mosquitto.port, "edge/dev/faces/result")
    agent = agent_process(["run", "--config", str(config)], _env(notify, status))
    ready = notify.wait_for("READY", agent=agent)
    # READY only after the model was loaded: the status file written just before it names the model's engine
    assert all("READY" not in m for m in notify.messages[:-1])
    assert ready["STATUS"].startswith("running")
    shown = json.loads(status.read_text())
    assert shown["state"] == "running" and shown["pid"] == agent.proc.pid
    assert shown["pipelines"]["faces"]["accelerators"] == ["litert-cpu"]
    # frames flow: results arrive, and so do watchdog pings, steadily
    for _ in range(5):
        assert results.next().json()["model"] == "face_detection_short_range"
    start = len(notify.messages)
    pings_at = []
    deadline = time.monotonic() + 3.0
    while (left := deadline - time.monotonic()) > 0:
        message = notify.receive(left)
        if message is not None and message.get("WATCHDOG") == "1":
            pings_at.append(time.monotonic())
    assert len(pings_at) >= 5, notify.messages[start:]
    gaps = [b - a for a, b in itertools.pairwise(pings_at)]
    assert max(gaps) < WATCHDOG_USEC / 1e6  # never a whole period without a ping (a loaded machine may be late)
    # the status file keeps up with the inferences
    counted = _wait_status(status, lambda s: s["pipelines"]["faces"]["inferences"] >= 5)
    assert counted["watchdog"]["pings"] >= 1 and counted["watchdog"]["stuck"] == {}
    # SIGTERM: STOPPING, then a clean exit; the file says stopped
    agent.proc.terminate()
    stopping = notify.wait_for("STOPPING", agent=agent)
    assert stopping["STOPPING"] == "1"
    assert agent.proc.wait(30) == 0
    assert json.loads(status.read_text())["state"] == "stopped"
    after = read_status([status])
    assert after is not None and not after.alive and after.state == "stopped"


def test_no_watchdog_pings_while_an_inference_is_stuck(
    tmp_path: Path, mosquitto: Any, agent_process: Any, notify: NotifySocket
) -> None:
    """The null accelerator made to take 5 s per run stands for a wedged device: the agent holds the pings
    back (systemd would restart it), says why, and pings again once the inference returns."""
    status = tmp_path / "status.json"
    config = write_config(
        tmp_path,
        mosquitto.port,
        '[[accelerators]]\ntype = "null"\ndelay_ms = 5000\n'
        f'[[pipelines]]\nname = "stuck"\nsource = {{ type = "replay", path = "{IMAGES / "astronaut.jpg"}", '
        f'rate_hz = 0, loop = true }}\nmodel = {{ path = "{FACE_MODEL}", backend = "null" }}\n',
    )
    env = {**_env(notify, status), "EDGE_AGENT_AGENT__INFERENCE_STALL_S": "1"}
    agent = agent_process(["run", "--config", str(config)], env)
    notify.wait_for("READY", agent=agent)
    stuck = _wait_status(status, lambda s: bool(s["watchdog"]["stuck"]))
    assert "stuck" in stuck["watchdog"]["stuck"]
    notify.drain()  # whatever was sent before the agent noticed
    during = []
    while True:  # every message up to the first ping after the stall
        message = notify.receive(15.0)
        assert message is not None, f"silent after the stall: {notify.messages}"
        if "WATCHDOG" in message:
            break
        during.append(message)
    # the agent writes its status file before each ping: the first one came once the inference had returned
    assert json.loads(status.read_text())["watchdog"]["stuck"] == {}
    assert during, "the agent went silent instead of saying why"
    assert all(m.get("STATUS") == "inference stuck in stuck" for m in during), during
    agent.wait_log("inference has not returned")
    # the next frame's inference is as slow, but stuck only after inference_stall_s: pings until then
    agent.proc.terminate()
    notify.wait_for("STOPPING", agent=agent)
    agent.proc.wait(30)


def test_notifier_speaks_to_an_abstract_socket_and_stays_silent_without_one() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_s == 2.0
        assert notifier.ready("up")
        assert server.recv(1024) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        server.close()
    silent = Notifier({})
    assert not silent.enabled and not silent.ready("up") and silent.watchdog_s is None
    # a watchdog meant for another process (WATCHDOG_PID) is not ours to feed
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_status_command_shows_the_running_daemon(tmp_path: Path, mosquitto: Any, agent_process: Any) -> None:
    status = tmp_path / "status.json"
    config = write_config(
        tmp_path,
        mosquitto.port,
        f'[[pipelines]]\nname = "faces"\nsource = {{ type = "replay", path = "{IMAGES}", pattern = "*.jpg", '
        f'rate_hz = 10 }}\nmodel = {{ path = "{FACE_MODEL}", backend = "litert-cpu" }}\n'
        'postprocess = { type = "ssd", labels = ["face"] }\n',
    )
    env = {"EDGE_AGENT_AGENT__STATUS_FILE": str(status), "EDGE_AGENT_AGENT__STATUS_INTERVAL_S": "0.2"}
    agent = agent_process(["run", "--config", str(config)], env)
    _wait_status(status, lambda s: s["state"] == "running" and s["pipelines"]["faces"]["inferences"] >= 3)

    def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(config)],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, check=False,
        )  # fmt: skip

    shown = edge_agent("status")
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first.startswith("edge-agent ") and f"running (pid {agent.proc.pid}" in first
    assert "pipeline faces: version" in shown.stdout and "on litert-cpu [ok]" in shown.stdout
    assert "queued:" in shown.stdout and "broker: connected" in shown.stdout
    as_json = json.loads(edge_agent("status", "--json").stdout)
    daemon = as_json["daemon"]
    assert daemon["state"] == "running" and daemon["pid"] == agent.proc.pid
    faces = daemon["pipelines"]["faces"]
    assert faces["accelerators"] == ["litert-cpu"] and faces["queue_depth"] >= 0 and "results_queued" in faces
    assert daemon["outbox"]["backlog"] >= 0 and daemon["mqtt"]["connected"] is True
    assert agent.stop() == 0
    gone = edge_agent("status")
    assert gone.returncode == 3 and "not running" in gone.stdout and "stopped cleanly" in gone.stdout
