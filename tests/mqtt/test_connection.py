"""The MQTT connection's settings against real brokers: TLS with a CA made by the test, a client certificate
and a password; MQTT 3.1.1 on request; subscriptions renewed after the broker restarts; and the jittered
backoff between reconnect attempts."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt.link import MqttLink, backoff_delays
from agent.mqtt.localbroker import Mosquitto
from agent.mqtt.settings import MqttSection
from agent.mqtt.topics import Topics
from tests.mqtt.tls_broker import tls_mosquitto
from tests.ota.https_server import Pki, make_pki


def test_backoff_doubles_to_its_ceiling_with_jitter_in_the_upper_half() -> None:
    delays = backoff_delays(1.0, 8.0, random.Random(7))
    got = [next(delays) for _ in range(8)]
    bounds = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(b / 2 <= d <= b for d, b in zip(got, bounds, strict=True)), got
    assert len({round(d, 6) for d in got[3:]}) > 1  # jittered: a fleet does not reconnect in step


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Pki]]:
    with tls_mosquitto(tmp_path) as broker:
        yield broker.port, broker.pki


async def publish_once(section: MqttSection, seconds: float = 10.0) -> bool:
    """Connect, publish one QoS 1 message and wait for its acknowledgement; False if it never connects."""
    link = MqttLink(section, Topics("edge", "conn"), asyncio.get_running_loop())
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), seconds)
        await asyncio.wait_for(link.publish("edge/conn/x", b"1", qos=1), seconds)
        return True
    except TimeoutError:
        return False
    finally:
        await link.stop(1)


def test_tls_with_the_ca_a_client_certificate_and_a_password(tls_broker: tuple[int, Pki]) -> None:
    port, pki = tls_broker
    good: dict[str, Any] = {
        "host": "localhost", "port": port, "tls": True, "ca_file": pki.ca_cert, "client_cert": pki.client_cert,
        "client_key": pki.client_key, "username": "device", "password": "s3cret", "reconnect_max_s": 1.0,
    }  # fmt: skip
    assert asyncio.run(publish_once(MqttSection(**good)))
    other = make_pki(pki.folder.parent / "other")
    # a broker whose certificate our CA did not sign is never trusted; a wrong password is refused
    assert not asyncio.run(publish_once(MqttSection(**{**good, "ca_file": other.ca_cert}), 3))
    assert not asyncio.run(publish_once(MqttSection(**{**good, "password": "wrong"}), 3))


def test_mqtt_3_1_1_on_request(mosquitto: Mosquitto) -> None:
    section = MqttSection(host="127.0.0.1", port=mosquitto.port, protocol="3.1.1")
    assert asyncio.run(publish_once(section))


def test_subscriptions_are_renewed_after_the_broker_restarts(mosquitto: Mosquitto) -> None:
    from paho.mqtt import publish

    async def scenario() -> list[bytes]:
        got: asyncio.Queue[bytes] = asyncio.Queue()
        section = MqttSection(host="127.0.0.1", port=mosquitto.port, reconnect_min_s=0.2, reconnect_max_s=0.5)
        link = MqttLink(section, Topics("edge", "resub"), asyncio.get_running_loop())
        link.subscribe("edge/resub/cmd/+", lambda topic, payload, _props: got.put_nowait(payload))
        link.start()
        await asyncio.wait_for(link.connected.wait(), 10)
        mosquitto.kill()  # no persistence: the broker forgets the subscription
        while link.connected.is_set():  # noqa: ASYNC110  (the link has no "lost" event to wait on)
            await asyncio.sleep(0.05)
        mosquitto.start()
        await asyncio.wait_for(link.connected.wait(), 10)
        messages = []
        for _ in range(50):  # the SUBACK may trail the CONNACK: publish until one arrives
            await asyncio.to_thread(
                publish.single, "edge/resub/cmd/status", b"{}", qos=1, hostname="127.0.0.1", port=mosquitto.port
            )
            try:
                messages.append(await asyncio.wait_for(got.get(), 0.2))
                break
            except TimeoutError:
                continue
        await link.stop(1)
        return messages

    assert asyncio.run(scenario()) == [b"{}"]


def test_commands_sent_while_the_agent_was_away_arrive_through_its_persistent_session(mosquitto: Mosquitto) -> None:
    from paho.mqtt import publish

    section = MqttSection(host="127.0.0.1", port=mosquitto.port, session_expiry_s=600)

    async def connect_and_collect(collect: float) -> list[bytes]:
        got: asyncio.Queue[bytes] = asyncio.Queue()
        link = MqttLink(section, Topics("edge", "away"), asyncio.get_running_loop())
        link.subscribe("edge/away/cmd/+", lambda topic, payload, _props: got.put_nowait(payload))
        link.start()
        await asyncio.wait_for(link.connected.wait(), 10)
        messages = []
        with contextlib.suppress(TimeoutError):
            messages.append(await asyncio.wait_for(got.get(), collect))
        await link.stop(1)
        return messages

    assert asyncio.run(connect_and_collect(0.1)) == []  # the session and its subscription now exist on the broker
    publish.single("edge/away/cmd/status", b'{"id": "while-away"}', qos=1, hostname="127.0.0.1", port=mosquitto.port)
    assert asyncio.run(connect_and_collect(10)) == [b'{"id": "while-away"}']
