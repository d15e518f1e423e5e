"""Tests for the embedded MQTT broker, using real paho-mqtt 2 clients (and raw sockets for edge cases)
over loopback connections to a broker started in the test."""

from __future__ import annotations

import asyncio
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.embedded_broker import BrokerThread, EmbeddedBroker, topic_matches

TIMEOUT = 5.0
V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
PROTOCOLS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class PahoClient:
    """A paho client whose callbacks are recorded for the test thread to wait on."""

    def __init__(
        self,
        port: int,
        protocol: MQTTProtocolVersion,
        client_id: str = "",
        *,
        will: tuple[str, bytes, int, bool] | None = None,
        threaded: bool = True,
    ) -> None:
        self.threaded = threaded
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, reconnect_on_failure=False
        )
        self._cond = threading.Condition()
        self.messages: queue.Queue[Received] = queue.Queue()
        self.raw_messages: list[mqtt.MQTTMessage] = []
        self.published: set[int] = set()
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: set[int] = set()
        self.connect_reason: int | None = None
        self.disconnect_reason: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        if will is not None:
            self.client.will_set(*will)
        if threaded:
            self.client.connect_async("127.0.0.1", port, keepalive=60)
            self.client.loop_start()
        else:
            self.client.connect("127.0.0.1", port, keepalive=60)
        self.wait_for(lambda: self.connect_reason is not None, "CONNACK")
        assert self.connect_reason == 0

    # paho callbacks (run on the paho thread) -------------------------------------------------
    def _record(self, update: Callable[[], None]) -> None:
        with self._cond:
            update()
            self._cond.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._record(lambda: setattr(self, "connect_reason", reason.value))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._record(lambda: setattr(self, "disconnect_reason", reason.value))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.raw_messages.append(msg)
        self.messages.put(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        self._record(lambda: self.published.add(mid))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        self._record(lambda: self.subacks.__setitem__(mid, [r.value for r in reasons]))

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, _reasons: Any, _props: Any) -> None:
        self._record(lambda: self.unsubacks.add(mid))

    # test-thread API ---------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        if self.threaded:
            with self._cond:
                ok = self._cond.wait_for(predicate, TIMEOUT)
        else:  # no network thread: drive the client's I/O until the condition holds
            deadline = time.monotonic() + TIMEOUT
            while not predicate() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
            ok = predicate()
        assert ok, f"timed out waiting for {what}"

    def subscribe(self, topic: str, qos: int) -> list[int]:
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        self.wait_for(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return self.subacks[mid]

    def unsubscribe(self, topic: str) -> None:
        result, mid = self.client.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self.wait_for(lambda: mid in self.unsubacks, f"UNSUBACK for {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait for on_publish (after PUBACK for QoS 1, PUBCOMP for QoS 2)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.wait_for(lambda: info.mid in self.published, f"on_publish for {topic}")

    def expect(self) -> Received:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail("timed out waiting for a message")

    def collect_until(self, marker_topic: str) -> list[Received]:
        """Messages received up to and including the first one on ``marker_topic``."""
        received = [self.expect()]
        while received[-1].topic != marker_topic:
            received.append(self.expect())
        return received

    def close(self) -> None:
        if self.threaded:
            self.client.disconnect()
            self.client.loop_stop()
        # paho leaves its wake-up socket pair open when the connection ended without loop_stop().
        self.client._reset_sockets()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def raw_connect(
    client_id: str,
    *,
    level: int = 4,
    keepalive: int = 60,
    will: tuple[str, bytes, int] | None = None,
    name: bytes = b"MQTT",
) -> bytes:
    flags = 0x02  # clean session
    props = b"\x00" if level == 5 else b""
    payload = _str(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | qos << 3
        payload += props + _str(topic) + _str(message)
    return _packet(0x10, _str(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + props + payload)


class RawClient:
    """A hand-driven MQTT connection for what paho will not send (malformed packets, abrupt ends)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "connection closed mid-packet"
            data += chunk
        return data

    def read_packet(self) -> tuple[int, bytes]:
        first = self._recv_exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._recv_exact(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._recv_exact(length)

    def connect(self, client_id: str, **kwargs: Any) -> None:
        self.send(raw_connect(client_id, **kwargs))
        first, body = self.read_packet()
        assert first == 0x20
        assert body[:2] == b"\x00\x00", f"CONNACK refused: {body!r}"

    def read_until_closed(self) -> bytes:
        """Everything the broker sends until it closes the connection (fails on timeout)."""
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            except TimeoutError:
                pytest.fail(f"broker did not close the connection (got {data!r})")
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread() as thread:
        yield thread


@pytest.fixture
def make_client(broker: BrokerThread) -> Iterator[Callable[..., PahoClient]]:
    clients: list[PahoClient] = []

    def factory(protocol: MQTTProtocolVersion = V311, client_id: str = "", **kwargs: Any) -> PahoClient:
        client = PahoClient(broker.port, protocol, client_id, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def make_raw(broker: BrokerThread) -> Iterator[Callable[[], RawClient]]:
    raws: list[RawClient] = []

    def factory() -> RawClient:
        raws.append(RawClient(broker.port))
        return raws[-1]

    yield factory
    for raw in raws:
        raw.close()


# --------------------------------------------------------------------------- topic matching


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/b/c", "a/b", False),
        ("a/b", "a/b/c", False),
        ("A/b", "a/b", False),
        ("a/+/c", "a/x/c", True),
        ("a/+/c", "a/x/y/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("sport/#", "sport", True),  # '#' also matches the parent level
        ("sport/#", "sport/tennis/player1", True),
        ("sport/tennis/#", "sport/tennis", True),
        ("sport/tennis/#", "sport/ten", False),
        ("sport/#", "sports", False),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("+/tennis/#", "sport/tennis/player1/ranking", True),
        ("#", "$SYS/broker/uptime", False),  # wildcards at the first level skip '$' topics
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("+", "$SYS", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+/uptime", "$SYS/broker/uptime", True),
        ("a/#", "a/$SYS", True),  # '$' only matters at the first level
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# --------------------------------------------------------------------------- publish / subscribe


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos1_publish_is_acknowledged_and_delivered(
    make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion
) -> None:
    subscriber = make_client(protocol)
    publisher = make_client(protocol)
    assert subscriber.subscribe("sensors/+/temp", 1) == [1]

    publisher.publish("sensors/a/humidity", b"55", qos=1)  # does not match
    publisher.publish("sensors/a/temp", b"21.5", qos=1)  # returns only once on_publish fired (PUBACK)

    assert subscriber.expect() == Received("sensors/a/temp", b"21.5", 1, False)
    assert subscriber.messages.empty()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delivery_qos_is_min_of_publish_and_granted(
    make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion
) -> None:
    high = make_client(protocol)
    low = make_client(protocol)
    publisher = make_client(protocol)
    assert high.subscribe("q/#", 2) == [1]  # the broker grants at most QoS 1
    assert low.subscribe("q/#", 0) == [0]

    publisher.publish("q/two", b"2", qos=2)  # full PUBREC/PUBREL/PUBCOMP handshake
    publisher.publish("q/one", b"1", qos=1)
    publisher.publish("q/zero", b"0", qos=0)

    assert high.collect_until("q/zero") == [
        Received("q/two", b"2", 1, False),
        Received("q/one", b"1", 1, False),
        Received("q/zero", b"0", 0, False),
    ]
    assert low.collect_until("q/zero") == [
        Received("q/two", b"2", 0, False),
        Received("q/one", b"1", 0, False),
        Received("q/zero", b"0", 0, False),
    ]


def test_wildcard_subscriptions_end_to_end(make_client: Callable[..., PahoClient]) -> None:
    everything = make_client(V311)
    system = make_client(V5)
    publisher = make_client(V5)
    assert everything.subscribe("#", 0) == [0]
    assert system.subscribe("$SYS/#", 0) == [0]
    assert system.subscribe("sport/#", 1) == [1]
    assert system.subscribe("sport/+/player1", 0) == [0]  # overlaps: delivered once, at the highest QoS
    assert system.subscribe("done", 0) == [0]

    for topic in ("$SYS/broker/uptime", "sport", "sport/tennis/player1", "news/today"):
        publisher.publish(topic, topic.encode(), qos=1)
    publisher.publish("done", b"", qos=1)

    assert [m.topic for m in everything.collect_until("done")] == [
        "sport",
        "sport/tennis/player1",
        "news/today",
        "done",
    ]
    assert system.collect_until("done") == [
        Received("$SYS/broker/uptime", b"$SYS/broker/uptime", 0, False),
        Received("sport", b"sport", 1, False),
        Received("sport/tennis/player1", b"sport/tennis/player1", 1, False),
        Received("done", b"", 0, False),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unsubscribe_stops_delivery(make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion) -> None:
    subscriber = make_client(protocol)
    publisher = make_client(protocol)
    subscriber.subscribe("u/#", 1)
    subscriber.subscribe("marker", 1)
    subscriber.unsubscribe("u/#")

    publisher.publish("u/x", b"gone", qos=1)
    publisher.publish("marker", b"m", qos=1)

    assert [m.topic for m in subscriber.collect_until("marker")] == ["marker"]


def test_mqtt5_application_properties_are_forwarded(make_client: Callable[..., PahoClient]) -> None:
    v5 = make_client(V5)
    v311 = make_client(V311)
    publisher = make_client(V5)
    v5.subscribe("props", 1)
    v311.subscribe("props", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("origin", "camera-1")
    props.ContentType = "application/json"

    publisher.publish("props", b"{}", qos=1, properties=props)

    assert v5.expect() == Received("props", b"{}", 1, False)
    assert v311.expect() == Received("props", b"{}", 1, False)
    forwarded = v5.raw_messages[0].properties
    assert forwarded is not None
    assert forwarded.UserProperty == [("origin", "camera-1")]
    assert forwarded.ContentType == "application/json"


# --------------------------------------------------------------------------- retained messages


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained_message_delivered_to_late_subscriber_and_cleared(
    make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion
) -> None:
    early = make_client(protocol)
    publisher = make_client(protocol)
    early.subscribe("status/#", 1)

    publisher.publish("status/dev1", b"online", qos=1, retain=True)
    # A live delivery to an existing subscription carries retain=0.
    assert early.expect() == Received("status/dev1", b"online", 1, False)

    late = make_client(protocol)
    assert late.subscribe("status/+", 1) == [1]
    assert late.expect() == Received("status/dev1", b"online", 1, True)

    publisher.publish("status/dev1", b"", qos=1, retain=True)  # empty retained payload deletes
    publisher.publish("status/dev2", b"up", qos=0, retain=True)
    later = make_client(protocol)
    later.subscribe("status/#", 1)
    publisher.publish("status/marker", b"m", qos=1)
    assert later.collect_until("status/marker") == [
        Received("status/dev2", b"up", 0, True),
        Received("status/marker", b"m", 1, False),
    ]


# --------------------------------------------------------------------------- last will


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_published_when_socket_closes_abruptly(
    make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion
) -> None:
    watcher = make_client(protocol)
    watcher.subscribe("clients/+/state", 1)
    doomed = make_client(protocol, "dev1", will=("clients/dev1/state", b"offline", 1, True), threaded=False)

    sock = doomed.client.socket()
    assert isinstance(sock, socket.socket)
    sock.close()  # no DISCONNECT: the broker just sees the connection end

    assert watcher.expect() == Received("clients/dev1/state", b"offline", 1, False)
    late = make_client(protocol)
    late.subscribe("clients/#", 0)
    assert late.expect() == Received("clients/dev1/state", b"offline", 0, True)  # will retain honoured


@pytest.mark.parametrize("level", [4, 5])
def test_no_will_after_clean_disconnect(
    make_client: Callable[..., PahoClient], make_raw: Callable[[], RawClient], level: int
) -> None:
    watcher = make_client()
    watcher.subscribe("clients/+/state", 1)
    raw = make_raw()
    raw.connect("polite", level=level, will=("clients/polite/state", b"offline", 1))

    raw.send(b"\xe0\x00")  # DISCONNECT (MQTT 5: remaining length 0 means reason 0x00)
    assert raw.read_until_closed() == b""  # the broker has finished with the connection

    make_client().publish("clients/marker/state", b"m", qos=1)
    assert [m.topic for m in watcher.collect_until("clients/marker/state")] == ["clients/marker/state"]


def test_mqtt5_disconnect_with_will_message_publishes_will(
    make_client: Callable[..., PahoClient], make_raw: Callable[[], RawClient]
) -> None:
    watcher = make_client(V5)
    watcher.subscribe("clients/+/state", 1)
    raw = make_raw()
    raw.connect("leaver", level=5, will=("clients/leaver/state", b"bye", 1))

    raw.send(b"\xe0\x02\x04\x00")  # DISCONNECT, reason 0x04 "Disconnect with Will Message"

    assert watcher.expect() == Received("clients/leaver/state", b"bye", 1, False)


def test_will_published_on_keepalive_expiry(
    make_client: Callable[..., PahoClient], make_raw: Callable[[], RawClient]
) -> None:
    watcher = make_client()
    watcher.subscribe("clients/+/state", 1)
    raw = make_raw()
    raw.connect("sleepy", keepalive=1, will=("clients/sleepy/state", b"timeout", 0))

    # Nothing is sent; after 1.5 x keepalive the broker drops the connection and publishes the will.
    assert raw.read_until_closed() == b""
    assert watcher.expect() == Received("clients/sleepy/state", b"timeout", 0, False)


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    ("connect_first", "bad_bytes"),
    [
        pytest.param(False, b"\x10\x04\x00\x04MQ", id="truncated-connect"),
        pytest.param(False, b"\x30\x00", id="first-packet-not-connect"),
        # A well-formed PUBLISH except that its (small) remaining length is spread over 5 bytes.
        pytest.param(True, b"\x30\x85\x80\x80\x80\x00" + _str("a") + b"xx", id="remaining-length-5-bytes"),
        pytest.param(True, b"\x30\xff\xff\xff\x7f", id="packet-over-size-cap"),
        pytest.param(True, _packet(0x30, _str(b"\xff\xfe") + b"x"), id="topic-not-utf8"),
        pytest.param(True, _packet(0x30, _str("a/+") + b"x"), id="wildcard-in-topic"),
        pytest.param(True, _packet(0x36, _str("a") + b"\x00\x01x"), id="publish-qos-3"),
        pytest.param(True, _packet(0x80, b"\x00\x01" + _str("a") + b"\x00"), id="subscribe-bad-flags"),
        pytest.param(True, raw_connect("again"), id="second-connect"),
    ],
)
def test_malformed_packet_closes_only_that_connection(
    make_client: Callable[..., PahoClient],
    make_raw: Callable[[], RawClient],
    connect_first: bool,
    bad_bytes: bytes,
) -> None:
    healthy = make_client(V5)
    healthy.subscribe("#", 1)
    raw = make_raw()
    if connect_first:
        raw.connect("bad", will=("clients/bad/state", b"broken", 1))

    raw.send(bad_bytes)
    assert raw.read_until_closed() == b""

    if connect_first:  # a protocol error is an abnormal end: the will goes out
        assert healthy.expect() == Received("clients/bad/state", b"broken", 1, False)
    healthy.publish("health/check", b"ok", qos=1)
    assert healthy.expect() == Received("health/check", b"ok", 1, False)
    make_client(V311).publish("health/check", b"new client", qos=1)
    assert healthy.expect() == Received("health/check", b"new client", 1, False)


@pytest.mark.parametrize(("name", "level"), [(b"MQIsdp", 3), (b"MQTT", 6)])
def test_unsupported_protocol_level_is_refused(make_raw: Callable[[], RawClient], name: bytes, level: int) -> None:
    raw = make_raw()
    raw.send(raw_connect("old", level=level, name=name))
    assert raw.read_until_closed() == b"\x20\x02\x00\x01"  # CONNACK "unacceptable protocol version"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_id_takeover(make_client: Callable[..., PahoClient], protocol: MQTTProtocolVersion) -> None:
    watcher = make_client(protocol)
    watcher.subscribe("takeover/#", 1)
    old = make_client(protocol, "dup", will=("takeover/will", b"old gone", 1, False))

    new = make_client(protocol, "dup")

    old.wait_for(lambda: old.disconnect_reason is not None, "old connection to be closed")
    if protocol == V5:
        assert old.disconnect_reason == 0x8E  # "Session taken over"
    assert watcher.expect() == Received("takeover/will", b"old gone", 1, False)
    new.publish("takeover/new", b"still here", qos=1)
    assert watcher.expect() == Received("takeover/new", b"still here", 1, False)
    assert new.disconnect_reason is None


# --------------------------------------------------------------------------- lifecycle


def test_bind_failure_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        thread = BrokerThread(port=taken.getsockname()[1])
        with pytest.raises(OSError):
            thread.start()
        thread.stop()


def test_embedded_broker_in_event_loop_stop_closes_clients() -> None:
    async def scenario() -> None:
        broker = EmbeddedBroker()
        await broker.start()
        assert broker.port != 0
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            writer.write(raw_connect("async") + b"\xc0\x00")  # CONNECT, PINGREQ
            assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"\x20\x02\x00\x00\xd0\x00"
            await broker.stop()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(scenario())
