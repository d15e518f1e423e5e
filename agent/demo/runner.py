"""``edge-agent demo``: a broker, the daemon on the bundled demo, and a subscriber that shows the results."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import DEMO_CONFIG_FILE, load_config
from agent.errors import AgentError
from agent.mqtt.localbroker import LocalBroker, free_port, reachable
from agent.mqtt.topics import Topics


def describe(result: dict[str, Any]) -> str:
    """One human line per result message."""
    head = f"seq={result.get('seq')} {result.get('source', {}).get('origin', '?'):<14}"
    if "detections" in result:
        dets = result["detections"]
        found = ", ".join(f"{d['label']} {d['score']:.2f} at {[round(v) for v in d['box']]}" for d in dets)
        body = f"{len(dets)} detection(s)" + (f": {found}" if found else "")
    elif "top" in result:
        body = "top: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in result["top"])
    else:
        body = "output: " + ", ".join(sorted(result.get("outputs", {})))
    return f"{head} {body}  [{result.get('inference_ms', 0):.1f} ms on {','.join(result.get('accelerators', []))}]"


def run_demo(host: str, port: int, count: int, timeout: float, as_json: bool, broker_kind: str = "auto") -> int:
    config = load_config(DEMO_CONFIG_FILE)
    topics = Topics(config.mqtt.prefix, config.agent.device_id)
    with ExitStack() as stack:
        if reachable(host, port):
            print(f"using the MQTT broker at {host}:{port}")
        else:
            wanted = port if not reachable("127.0.0.1", port, 0.2) else free_port()
            broker = stack.enter_context(LocalBroker(wanted, broker_kind))
            host, port = "127.0.0.1", broker.port
            print(f"no broker answered; started {broker.kind} on {host}:{port}")
        messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-demo-{os.getpid()}")
        sub.on_message = lambda c, u, m: messages.put((m.topic, bytes(m.payload), m.retain))
        sub.connect(host, port)
        sub.subscribe(f"{topics.base}/#", qos=1)
        sub.loop_start()
        stack.callback(sub.loop_stop)
        stack.callback(sub.disconnect)
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-demo-"))
        env = dict(
            os.environ,
            EDGE_AGENT_MQTT__HOST=host,
            EDGE_AGENT_MQTT__PORT=str(port),
            EDGE_AGENT_AGENT__STATE_DIR=state,
        )
        print(f"starting: edge-agent run --config {DEMO_CONFIG_FILE}")
        print(f"subscribed to {topics.base}/#\n")
        # the agent's own log is kept to warnings so that what the subscriber receives stands out
        cmd = [sys.executable, "-m", "agent", "run", "--config", str(DEMO_CONFIG_FILE), "--log-level", "warning"]
        agent = subprocess.Popen(cmd, env=env)
        stack.callback(_reap, agent)
        return _watch(agent, messages, topics, count, timeout, as_json)
    return 1  # pragma: no cover  (ExitStack does not swallow exceptions)


def _watch(
    agent: subprocess.Popen[bytes],
    messages: queue.Queue[tuple[str, bytes, bool]],
    topics: Topics,
    count: int,
    timeout: float,
    as_json: bool,
) -> int:
    deadline = time.monotonic() + timeout
    results = 0
    availability: list[str] = []
    stopping = False
    while time.monotonic() < deadline:
        if agent.poll() is not None and messages.empty() and not stopping:
            raise AgentError(f"the agent exited with status {agent.returncode} before {count} results arrived")
        try:
            topic, payload, retained = messages.get(timeout=0.5)
        except queue.Empty:
            continue
        if topic == topics.availability:
            state = payload.decode(errors="replace")
            if retained and not availability:
                continue  # an old retained value from an earlier run
            availability.append(state)
            print(f"availability: {state}")
            if stopping and state == "offline":
                break
            continue
        if topic.endswith("/result") and not stopping:
            result = json.loads(payload)
            print(payload.decode() if as_json else describe(result))
            results += 1
            if results >= count:
                print(f"\n{results} results received; stopping the agent (SIGTERM)")
                agent.send_signal(signal.SIGTERM)
                stopping = True
    else:
        raise AgentError(f"timed out after {timeout:.0f} s with {results} of {count} results")
    code = agent.wait(10)
    print(f"agent exited with status {code}; availability went {' -> '.join(availability)}")
    return 0 if code == 0 else 1


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
