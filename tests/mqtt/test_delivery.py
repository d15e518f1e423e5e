"""Nothing lost: the real daemon (a subprocess) through broker outages and a kill -9, with a real mosquitto
and a subscriber whose persistent session makes the broker keep what it could not deliver yet."""

from __future__ import annotations

import json
import queue
import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.localbroker import Mosquitto, find_mosquitto, free_port
from tests.conftest import ASSETS, DIGITS_MODEL, write_config

DEVICE = "durable"
RESULTS = f"edge/{DEVICE}/digits/result"


def pipeline(rate_hz: float) -> str:
    return f"""
[[pipelines]]
name = "digits"
source = {{ type = "replay", path = "{ASSETS / "digits" / "images"}", rate_hz = {rate_hz}, loop = true }}
model = {{ path = "{DIGITS_MODEL}" }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 1, labels = "{ASSETS / "digits" / "labels.txt"}" }}
"""


class Durable:
    """A QoS 1 subscriber with a persistent session: what the broker holds for it survives its restarts."""

    def __init__(self, port: int) -> None:
        self.seqs: queue.Queue[int] = queue.Queue()
        self.ready: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="durable-sub", clean_session=False)
        self.client.on_connect = lambda c, *a: c.subscribe(RESULTS, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.put(True)
        self.client.on_message = lambda c, u, m: self.seqs.put(json.loads(m.payload)["seq"])
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.ready.get(timeout=10)

    def until(self, seq: int, timeout: float = 60.0) -> list[int]:
        """Every seq received until ``seq`` arrives (duplicates included)."""
        got: list[int] = []
        deadline = time.monotonic() + timeout
        while seq not in got:
            try:
                got.append(self.seqs.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"seq {seq} never arrived; got {len(got)}: ...{got[-5:]}") from None
        return got

    def take(self, n: int, timeout: float = 60.0) -> list[int]:
        return [self.seqs.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker() -> Any:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with Mosquitto(free_port(), persistence=True) as b:
        yield b


def stored_seqs(state: Path) -> list[int]:
    """The seqs of the results waiting in the outbox (read straight from its SQLite file)."""
    with sqlite3.connect(state / "outbox.sqlite") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
        table = "outbox" if "outbox" in tables else tables[0]
        return sorted(json.loads(bytes(p))["seq"] for (p,) in db.execute(f"select payload from {table}"))


def test_a_broker_outage_loses_nothing_and_order_is_kept(broker: Mosquitto, agent_process: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port, pipeline(40.0), device_id=DEVICE)
    sub = Durable(broker.port)
    env = {"EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1", "EDGE_AGENT_AGENT__STATS_INTERVAL_S": "0.2"}
    agent = agent_process(["run", "--config", str(config)], env)
    before = sub.until(20)
    broker.stop()  # clean stop: the broker saves what it holds for the persistent subscriber
    agent.wait_log("lost the MQTT broker connection")
    # results go on piling up in the agent's outbox while the broker is away
    line = ""
    while "stored=" not in line or int(line.split("stored=")[1].split(maxsplit=1)[0]) < before[-1] + 40:
        line = agent.wait_log("stats pipeline=digits", timeout=60)
    broker.start()
    agent.wait_log("connected to MQTT broker")
    last = int(line.split("stored=")[1].split()[0])
    after = sub.until(last)
    agent.stop()
    sub.close()
    seqs = before + after
    missing = sorted(set(range(min(seqs), max(seqs) + 1)) - set(seqs))
    assert not missing, f"results went missing: {missing[:20]} ({len(missing)})"
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen), "older results must arrive before newer ones"
    duplicates = len(seqs) - len(set(seqs))
    print(f"delivered {len(set(seqs))} distinct results across the outage, {duplicates} duplicate(s)")


def test_a_backlog_survives_kill_9_and_is_delivered_first(
    broker: Mosquitto, agent_process: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker.port, pipeline(40.0), device_id=DEVICE)
    sub = Durable(broker.port)
    broker.stop()
    agent = agent_process(["run", "--config", str(config)], {"EDGE_AGENT_AGENT__STATS_INTERVAL_S": "0.2"})
    line = ""
    while "stored=" not in line or int(line.split("stored=")[1].split(maxsplit=1)[0]) < 30:
        line = agent.wait_log("stats pipeline=digits", timeout=60)
    agent.kill()  # SIGKILL, with everything still undelivered
    backlog = stored_seqs(tmp_path / "state")
    assert len(backlog) >= 30
    broker.start()
    again = agent_process(["run", "--config", str(config)])
    again.wait_log("still undelivered; sending them first")
    got = sub.until(backlog[-1])
    newer = sub.take(5)  # and then the new results, after the old ones
    assert again.stop() == 0
    sub.close()
    assert set(backlog) <= set(got), "a stored result was lost"
    assert list(dict.fromkeys(got)) == sorted(set(got))
    assert min(newer) > backlog[-1]


def test_a_full_outbox_drops_the_oldest_and_counts_them(broker: Mosquitto, agent_process: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port, pipeline(50.0), device_id=DEVICE)
    broker.stop()
    env = {
        "EDGE_AGENT_OUTBOX__MAX_MESSAGES": "20",
        "EDGE_AGENT_AGENT__STATS_INTERVAL_S": "0.2",
        "EDGE_AGENT_TELEMETRY__INTERVAL_S": "0.3",
        "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1",
    }
    agent = agent_process(["run", "--config", str(config)], env)
    line = ""
    while "stored=" not in line or int(line.split("stored=")[1].split(maxsplit=1)[0]) < 60:
        line = agent.wait_log("stats pipeline=digits", timeout=60)
    assert len(stored_seqs(tmp_path / "state")) <= 20  # bounded on disk while the broker is away
    sub = None
    broker.start()
    sub = Durable(broker.port)
    telemetry = queue.Queue[dict[str, Any]]()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tele-watch")
    watcher.on_connect = lambda c, *a: c.subscribe(f"edge/{DEVICE}/telemetry", qos=1)
    watcher.on_message = lambda c, u, m: telemetry.put(json.loads(m.payload))
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    outbox = telemetry.get(timeout=30)["outbox"]
    while outbox["evicted_full"] < 40:
        outbox = telemetry.get(timeout=30)["outbox"]
    first = sub.take(1)[0]
    watcher.loop_stop()
    sub.close()
    assert agent.stop() == 0
    # oldest first: what reached the broker after the outage is the newest of the stored results
    assert first > int(line.split("stored=")[1].split()[0]) - 20 - 1
    assert outbox["evicted_full"] >= 40 and outbox["backlog"] <= 20
