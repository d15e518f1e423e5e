#!/usr/bin/env python3
"""MQTT delivery benchmark, in one run against a local mosquitto:

- sustained results/s at QoS 1 through the durable outbox (the agent's path: bursts appended in one
  transaction, drained in order with a window in flight, deleted on PUBACK) vs bare paho publishing
  the same messages with the same window;
- delivered/expected across a broker outage in the middle of the stream (a persistent subscriber);
- memory growth per minute while the broker is away and results keep coming.

  .venv/bin/python scripts/bench_mqtt.py [--messages 20000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.mqtt.link import MqttLink  # noqa: E402
from agent.mqtt.localbroker import Mosquitto, free_port  # noqa: E402
from agent.mqtt.outbox import Outbox, OutboxSettings  # noqa: E402
from agent.mqtt.sender import OutboxSender  # noqa: E402
from agent.mqtt.settings import MqttSection  # noqa: E402
from agent.mqtt.topics import Topics  # noqa: E402

PAYLOAD = json.dumps({"seq": 0, "label": "7", "top": [{"label": "7", "score": 0.99}], "pad": "x" * 200}).encode()
WINDOW = 256
BURST = 16  # results per outbox transaction (a pipeline appends what has queued up since its last write)


def bare_paho(port: int, n: int) -> float:
    """Messages/s publishing QoS 1 with paho alone, at most WINDOW unacknowledged."""
    done = threading.Semaphore(WINDOW)
    acked = threading.Event()
    count = [0]

    def on_publish(*_: Any) -> None:
        done.release()
        count[0] += 1
        if count[0] == n:
            acked.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for _ in range(n):
        done.acquire()
        client.publish("bench/bare", PAYLOAD, qos=1)
    acked.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return n / elapsed


async def through_outbox(port: int, n: int, folder: Path, burst: int = BURST) -> float:
    """Messages/s from appends to the outbox until the broker acknowledged every one."""
    loop = asyncio.get_running_loop()
    outbox = Outbox(folder / f"bench-{burst}.sqlite", OutboxSettings())
    link = MqttLink(MqttSection(port=port, host="127.0.0.1"), Topics("bench", f"outbox{burst}"), loop)
    sender = OutboxSender(outbox, link, WINDOW)
    link.start()
    await link.connected.wait()
    runner = asyncio.create_task(sender.run())
    start = time.perf_counter()
    for i in range(0, n, burst):
        await sender.put_many([("bench/outbox", PAYLOAD, 1, False)] * min(burst, n - i))
    left = await sender.drain(120)
    elapsed = time.perf_counter() - start
    runner.cancel()
    await link.stop(5)
    outbox.close()
    assert left == 0, f"{left} messages not acknowledged"
    return n / elapsed


class Persistent:
    """A subscriber whose session the broker keeps across its restarts."""

    def __init__(self, port: int, n: int) -> None:
        self.got: set[int] = set()
        self.copies = 0
        self.n = n
        self.complete = threading.Event()
        ready: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-persistent", clean_session=False)
        self.client.on_connect = lambda c, *a: c.subscribe("bench/outage", qos=1)
        self.client.on_subscribe = lambda *a: ready.put(True)
        self.client.on_message = lambda c, u, m: self._got(int(m.payload))
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.get(timeout=10)

    def _got(self, i: int) -> None:
        self.copies += 1
        self.got.add(i)
        if len(self.got) == self.n:
            self.complete.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def outage(broker: Mosquitto, n: int, folder: Path) -> dict[str, Any]:
    """Stream n messages; the broker is stopped after a third and started again after two thirds."""
    sub = Persistent(broker.port, n)
    outbox = Outbox(folder / "outage.sqlite", OutboxSettings())
    section = MqttSection(port=broker.port, host="127.0.0.1", reconnect_max_s=1)
    link = MqttLink(section, Topics("bench", "outage"), asyncio.get_running_loop())
    sender = OutboxSender(outbox, link, WINDOW)
    link.start()
    await link.connected.wait()
    runner = asyncio.create_task(sender.run())
    for i in range(n):
        if i == n // 3:
            broker.stop()
        if i == 2 * n // 3:
            broker.start()
        await sender.put_many([("bench/outage", str(i).encode(), 1, False)])
        await asyncio.sleep(0.0005)  # a steady stream, ~2,000 results/s at most
    left = await sender.drain(60)
    await asyncio.to_thread(sub.complete.wait, 30)  # the subscriber's own delivery, after the acknowledgements
    runner.cancel()
    await link.stop(5)
    outbox.close()
    sub.close()
    return {"expected": n, "delivered": len(sub.got), "duplicates": sub.copies - len(sub.got), "left": left}


async def offline_memory(folder: Path, seconds: float, rate: float) -> dict[str, float]:
    """RSS growth while nothing answers on the broker's port and results keep being stored."""
    outbox = Outbox(folder / "offline.sqlite", OutboxSettings())
    link = MqttLink(
        MqttSection(port=free_port(), host="127.0.0.1"), Topics("bench", "offline"), asyncio.get_running_loop()
    )
    sender = OutboxSender(outbox, link, WINDOW)
    link.start()
    runner = asyncio.create_task(sender.run())
    process = psutil.Process()
    stored = 0
    start = time.monotonic()
    warm = start + seconds / 4  # the window fills and SQLite's cache warms up first
    rss0 = None
    while (now := time.monotonic()) - start < seconds:
        if rss0 is None and now >= warm:
            rss0, t0 = process.memory_info().rss, now
        await sender.put_many([("bench/offline", PAYLOAD, 1, False)] * 10)
        stored += 10
        await asyncio.sleep(10 / rate)
    rss1, t1 = process.memory_info().rss, time.monotonic()
    runner.cancel()
    await link.stop(0.1)
    backlog = outbox.stats().backlog
    outbox.close()
    assert rss0 is not None
    return {"stored": stored, "backlog": backlog, "mb_per_min": (rss1 - rss0) / 1e6 / ((t1 - t0) / 60)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--offline-s", type=float, default=40.0, help="seconds of the offline memory run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-mqtt-") as tmp, Mosquitto(free_port()) as broker:
        folder = Path(tmp)
        bare = bare_paho(broker.port, args.messages)
        durable = asyncio.run(through_outbox(broker.port, args.messages, folder))
        single = asyncio.run(through_outbox(broker.port, args.messages // 4, folder, burst=1))
        with Mosquitto(free_port(), persistence=True) as persistent:
            lost = asyncio.run(outage(persistent, 3000, folder))
        memory = asyncio.run(offline_memory(folder, args.offline_s, 500.0))
    result = {"bare_paho_per_s": bare, "outbox_per_s": durable, "outbox_one_by_one_per_s": single,
              "outbox_vs_bare": durable / bare, "outage": lost, "offline": memory}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"QoS 1, {args.messages:,} messages of {len(PAYLOAD)} bytes, {WINDOW} in flight:")
    print(f"  bare paho                        {bare:>9,.0f} msg/s")
    print(f"  through the outbox, bursts of {BURST:<3}{durable:>9,.0f} msg/s  ({durable / bare:.2f}x bare paho)")
    print(f"  through the outbox, one by one   {single:>9,.0f} msg/s")
    print(
        f"broker stopped for the middle third of {lost['expected']:,} messages: delivered {lost['delivered']:,}/"
        f"{lost['expected']:,} ({100 * lost['delivered'] / lost['expected']:.1f}%), {lost['duplicates']} duplicate(s)"
    )
    print(f"offline {args.offline_s:.0f} s at 500 results/s: {memory['stored']:,} stored, "
          f"backlog {memory['backlog']:,}, RSS growth {memory['mb_per_min']:+.2f} MB/min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
