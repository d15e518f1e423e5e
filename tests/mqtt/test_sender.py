"""The outbox sender with the real link and a real mosquitto: a fast stream arrives complete and in order
(two threads writing to paho's socket at once used to swap neighbours), and every message is deleted from
the outbox once acknowledged."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.link import MqttLink
from agent.mqtt.localbroker import Mosquitto
from agent.mqtt.outbox import Outbox, OutboxSettings
from agent.mqtt.sender import OutboxSender
from agent.mqtt.settings import MqttSection
from agent.mqtt.topics import Topics

N = 5000


def test_a_fast_stream_arrives_complete_and_in_order(mosquitto: Mosquitto, tmp_path: Path) -> None:
    got: list[int] = []
    complete, ready = threading.Event(), threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        got.append(int(message.payload))
        if len(got) == N:
            complete.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="order-check")
    sub.on_connect = lambda c, *a: c.subscribe("order/#", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    assert ready.wait(10)

    async def stream() -> int:
        outbox = Outbox(tmp_path / "outbox.sqlite", OutboxSettings())
        section = MqttSection(host="127.0.0.1", port=mosquitto.port)
        link = MqttLink(section, Topics("edge", "order"), asyncio.get_running_loop())
        sender = OutboxSender(outbox, link, 256)
        link.start()
        await link.connected.wait()
        runner = asyncio.create_task(sender.run())
        for start in range(0, N, 7):
            await sender.put_many([("order/x", str(i).encode(), 1, False) for i in range(start, min(start + 7, N))])
        left = await sender.drain(60)
        runner.cancel()
        await link.stop(5)
        backlog = outbox.stats().backlog
        outbox.close()
        assert left == 0
        return backlog

    assert asyncio.run(stream()) == 0  # all acknowledged, none left on disk
    assert complete.wait(30)
    sub.loop_stop()
    swapped = [(a, b) for a, b in itertools.pairwise(got) if b != a + 1]
    assert got[0] == 0 and not swapped, swapped[:5]
