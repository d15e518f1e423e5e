"""Embedded pure-Python MQTT broker for the demo command.

``edge-agent demo`` falls back to this broker when no real broker (mosquitto) is reachable or
installable, so the demo can still publish results and show them over a loopback connection.
It speaks MQTT 3.1.1 and MQTT 5 (chosen per client) and supports QoS 0 and 1 (QoS 2 publishes are
accepted with the full PUBREC/PUBREL/PUBCOMP handshake, but subscriptions are granted at most
QoS 1), ``+``/``#`` wildcards, retained messages, Last Will and client-id takeover.

Limits -- this is not a production broker:

* no persistence and no persistent sessions: every connection starts clean, Session Present is
  always 0, and nothing is redelivered after a reconnect;
* no authentication or authorisation (user name and password are accepted and ignored), no TLS,
  no WebSockets;
* MQTT 5 extras are not implemented: no shared subscriptions, topic aliases, subscription
  identifiers, message expiry, will delay, flow control (Receive Maximum) or enhanced auth;
* meant for loopback demo use: bind it to 127.0.0.1 and do not expose it on a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from dataclasses import dataclass, field, replace
from types import TracebackType

from agent.mqtt import mqtt_codec as codec
from agent.mqtt.mqtt_codec import MalformedPacketError, PacketType, Subscription, topic_matches

__all__ = ["BrokerThread", "EmbeddedBroker", "topic_matches"]

logger = logging.getLogger(__name__)

MAX_QOS = 1  # highest QoS granted to subscriptions
CONNECT_TIMEOUT = 10.0  # seconds a new connection gets to send CONNECT
WRITE_BUFFER_LIMIT = 4 * codec.MAX_PACKET_SIZE  # unsent bytes after which a subscriber counts as stuck
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = b""  # forwardable MQTT 5 properties, raw


@dataclass(eq=False)
class _Session:
    client_id: str
    level: int
    keepalive: int
    writer: asyncio.StreamWriter
    will: _Message | None
    max_packet_size: int
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    inflight: dict[int, str] = field(default_factory=dict)  # QoS 1 sent, awaiting PUBACK
    qos2_received: set[int] = field(default_factory=set)  # QoS 2 received, awaiting PUBREL
    next_packet_id: int = 1
    ended: bool = False

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def allocate_packet_id(self) -> int:
        for _ in range(0xFFFF):
            packet_id = self.next_packet_id
            self.next_packet_id = packet_id % 0xFFFF + 1
            if packet_id not in self.inflight:
                return packet_id
        oldest = next(iter(self.inflight))  # all identifiers in use: forget the oldest
        del self.inflight[oldest]
        return oldest


class EmbeddedBroker:
    """In-memory asyncio MQTT broker (see the module docstring for what it does not do)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = False
        self._client_numbers = itertools.count(1)

    @property
    def port(self) -> int:
        """The listening port (the actual one once :meth:`start` has returned)."""
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("broker already started")
        self._stopping = False
        self._server = await asyncio.start_server(self._handle_connection, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("embedded MQTT broker listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True  # connections closed by the broker itself publish no wills
        server.close()
        # Aborting the transports ends every handler through EOF; cancelling the handler tasks instead
        # makes Python 3.11's start_server log them as errors.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
        await server.wait_closed()
        self._sessions.clear()
        logger.info("embedded MQTT broker on port %d stopped", self._port)

    # ------------------------------------------------------------------ connection lifecycle

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:  # accepted while the broker was shutting down
            writer.transport.abort()
            return
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        session: _Session | None = None
        try:
            session = await self._handshake(reader, writer, peer)
            if session is not None:
                await self._serve(session, reader)
        except MalformedPacketError as exc:
            logger.info("closing connection from %s: %s", peer, exc)
            if session is not None and session.level == codec.MQTT_5:
                session.send(codec.encode_disconnect(exc.reason_code))
        except (asyncio.IncompleteReadError, ConnectionError):
            logger.debug("connection from %s dropped", peer)
        except TimeoutError:
            logger.info("connection from %s timed out", peer)
        except Exception:
            logger.exception("unexpected error serving %s", peer)
        finally:
            self._connections.pop(task, None)
            if session is not None:
                self._end_session(session)
            await self._close_writer(writer)

    async def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        except (TimeoutError, OSError, asyncio.CancelledError):
            writer.transport.abort()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> _Session | None:
        packet_type, flags, body = await asyncio.wait_for(codec.read_packet(reader), CONNECT_TIMEOUT)
        if packet_type != PacketType.CONNECT or flags:
            raise MalformedPacketError("first packet is not CONNECT", codec.RC_PROTOCOL_ERROR)
        try:
            connect = codec.parse_connect(body)
        except codec.UnsupportedProtocolError as exc:
            logger.info("rejecting %s: %s", peer, exc)
            writer.write(codec.encode_connack(codec.MQTT_311, codec.RC_UNSUPPORTED_PROTOCOL_V311))
            return None
        level = connect.level
        if codec.PROP_AUTH_METHOD in connect.properties.values:
            writer.write(codec.encode_connack(level, codec.RC_BAD_AUTH_METHOD))
            return None
        client_id = connect.client_id
        properties = b""
        if not client_id:
            if level == codec.MQTT_311 and not connect.clean:
                writer.write(codec.encode_connack(level, codec.RC_IDENTIFIER_REJECTED_V311))
                return None
            client_id = f"embedded-{next(self._client_numbers)}"
            properties = codec.encode_property(codec.PROP_ASSIGNED_CLIENT_ID, client_id)
        will = None
        if connect.will is not None:
            w = connect.will
            will = _Message(w.topic, w.payload, w.qos, w.retain, w.properties)
        session = _Session(
            client_id=client_id,
            level=level,
            keepalive=connect.keepalive,
            writer=writer,
            will=will,
            max_packet_size=connect.properties.get_int(codec.PROP_MAX_PACKET_SIZE) or codec.MAX_PACKET_SIZE,
        )
        previous = self._sessions.get(client_id)
        if previous is not None:
            logger.info("client %s reconnected from %s; closing its old connection", client_id, peer)
            self._close_session(previous, codec.RC_SESSION_TAKEN_OVER)
        self._sessions[client_id] = session
        properties += codec.encode_property(codec.PROP_SHARED_SUB_AVAILABLE, 0)
        properties += codec.encode_property(codec.PROP_SUB_ID_AVAILABLE, 0)
        properties += codec.encode_property(codec.PROP_MAX_PACKET_SIZE, codec.MAX_PACKET_SIZE)
        writer.write(codec.encode_connack(level, codec.RC_SUCCESS, properties))
        logger.info(
            "client %s connected from %s (MQTT %s, keepalive %ds)",
            client_id,
            peer,
            "5" if level == codec.MQTT_5 else "3.1.1",
            connect.keepalive,
        )
        return session

    async def _serve(self, session: _Session, reader: asyncio.StreamReader) -> None:
        timeout = session.keepalive * 1.5 if session.keepalive else None
        while True:
            try:
                packet_type, flags, body = await asyncio.wait_for(codec.read_packet(reader), timeout)
            except TimeoutError:
                logger.info("client %s: keepalive expired", session.client_id)
                return
            if not self._dispatch(session, packet_type, flags, body):
                return
            await session.writer.drain()

    def _end_session(self, session: _Session) -> None:
        """Forget a finished connection and publish its will unless it disconnected cleanly."""
        if session.ended:
            return
        session.ended = True
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        will, session.will = session.will, None
        if will is not None and not self._stopping:
            logger.info("client %s: publishing will to %s", session.client_id, will.topic)
            self._publish(will, sender=None)
        logger.info("client %s disconnected", session.client_id)

    def _close_session(self, session: _Session, reason: int) -> None:
        """Close a session from the broker side (its will is published)."""
        self._end_session(session)
        if session.level == codec.MQTT_5:
            session.send(codec.encode_disconnect(reason))
        session.writer.close()  # its handler then sees EOF and finishes

    # ------------------------------------------------------------------ packets

    def _dispatch(self, session: _Session, packet_type: int, flags: int, body: bytes) -> bool:
        """Handle one packet; return False when the connection should end."""
        logger.debug("client %s: packet type %d, %d bytes", session.client_id, packet_type, len(body))
        expected_flags = 0x02 if packet_type in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
        if packet_type != PacketType.PUBLISH and flags != expected_flags:
            raise MalformedPacketError(f"bad fixed-header flags 0x{flags:x} for type {packet_type}")
        level = session.level
        if packet_type == PacketType.PUBLISH:
            self._on_publish(session, flags, body)
        elif packet_type == PacketType.PUBACK:
            session.inflight.pop(codec.parse_ack_id(body, level), None)
        elif packet_type == PacketType.PUBREL:
            packet_id = codec.parse_ack_id(body, level)
            known = packet_id in session.qos2_received
            session.qos2_received.discard(packet_id)
            reason = codec.RC_SUCCESS if known else codec.RC_PACKET_ID_NOT_FOUND
            session.send(codec.encode_ack(PacketType.PUBCOMP, packet_id, level, reason))
        elif packet_type == PacketType.SUBSCRIBE:
            self._on_subscribe(session, body)
        elif packet_type == PacketType.UNSUBSCRIBE:
            packet_id, filters = codec.parse_unsubscribe(body, level)
            codes = [
                codec.RC_SUCCESS if session.subscriptions.pop(f, None) else codec.RC_NO_SUBSCRIPTION_EXISTED
                for f in filters
            ]
            session.send(codec.encode_suback(PacketType.UNSUBACK, packet_id, codes, level))
        elif packet_type == PacketType.PINGREQ:
            session.send(codec.PINGRESP)
        elif packet_type == PacketType.DISCONNECT:
            if codec.parse_disconnect(body, level) != codec.RC_DISCONNECT_WITH_WILL:
                session.will = None
            return False
        else:  # a second CONNECT, PUBREC/PUBCOMP (the broker never sends QoS 2), AUTH, server packets
            raise MalformedPacketError(f"unexpected packet type {packet_type}", codec.RC_PROTOCOL_ERROR)
        return True

    def _on_publish(self, session: _Session, flags: int, body: bytes) -> None:
        pub = codec.parse_publish(flags, body, session.level)
        logger.debug("client %s: PUBLISH %s qos=%d retain=%s", session.client_id, pub.topic, pub.qos, pub.retain)
        message = _Message(
            pub.topic, pub.payload, pub.qos, pub.retain, pub.properties.select(codec.FORWARDED_PROPERTIES)
        )
        if pub.qos == 2:
            assert pub.packet_id is not None
            session.send(codec.encode_ack(PacketType.PUBREC, pub.packet_id, session.level))
            if pub.packet_id in session.qos2_received:
                return  # a resent QoS 2 message that was already delivered
            session.qos2_received.add(pub.packet_id)
        elif pub.qos == 1:
            assert pub.packet_id is not None
            session.send(codec.encode_ack(PacketType.PUBACK, pub.packet_id, session.level))
        self._publish(message, sender=session)

    def _on_subscribe(self, session: _Session, body: bytes) -> None:
        packet_id, requested = codec.parse_subscribe(body, session.level)
        codes: list[int] = []
        send_retained: list[Subscription] = []
        for sub in requested:
            if session.level == codec.MQTT_5 and sub.topic_filter.startswith("$share/"):
                codes.append(codec.RC_SHARED_SUBS_NOT_SUPPORTED)
                continue
            if not codec.valid_topic_filter(sub.topic_filter):
                codes.append(
                    codec.RC_TOPIC_FILTER_INVALID if session.level == codec.MQTT_5 else codec.RC_SUBSCRIBE_FAILURE_V311
                )
                continue
            is_new = sub.topic_filter not in session.subscriptions
            granted = replace(sub, qos=min(sub.qos, MAX_QOS))
            session.subscriptions[sub.topic_filter] = granted
            codes.append(granted.qos)
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and is_new):
                send_retained.append(granted)
            logger.debug("client %s: subscribed to %s (qos %d)", session.client_id, sub.topic_filter, granted.qos)
        session.send(codec.encode_suback(PacketType.SUBACK, packet_id, codes, session.level))
        for sub in send_retained:
            for message in list(self._retained.values()):
                if topic_matches(sub.topic_filter, message.topic):
                    self._deliver(session, message, min(message.qos, sub.qos), retain=True)

    # ------------------------------------------------------------------ routing

    def _publish(self, message: _Message, sender: _Session | None) -> None:
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        for session in list(self._sessions.values()):
            qos = -1
            retain = False
            for sub in session.subscriptions.values():
                if (sub.no_local and session is sender) or not topic_matches(sub.topic_filter, message.topic):
                    continue
                qos = max(qos, sub.qos)
                retain = retain or (sub.retain_as_published and message.retain)
            if qos >= 0:
                self._deliver(session, message, min(qos, message.qos), retain)

    def _deliver(self, session: _Session, message: _Message, qos: int, retain: bool) -> None:
        if session.writer.is_closing():
            return
        if session.writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            logger.warning("client %s is not reading its messages; disconnecting it", session.client_id)
            self._close_session(session, codec.RC_QUOTA_EXCEEDED)
            return
        packet_id = session.allocate_packet_id() if qos else None
        properties = message.properties if session.level == codec.MQTT_5 else b""
        data = codec.encode_publish(
            message.topic,
            message.payload,
            qos=qos,
            retain=retain,
            packet_id=packet_id,
            level=session.level,
            properties=properties,
        )
        if len(data) > session.max_packet_size:
            logger.debug(
                "client %s: dropping %s, larger than its maximum packet size",
                session.client_id,
                message.topic,
            )
            return
        if packet_id is not None:
            session.inflight[packet_id] = message.topic
        session.send(data)


class BrokerThread:
    """Runs an EmbeddedBroker on its own event loop in a daemon thread (for sync callers such as the CLI)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._broker = EmbeddedBroker(host, port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self._broker.port

    @property
    def broker(self) -> EmbeddedBroker:
        return self._broker

    def start(self, timeout: float = 5.0) -> int:
        """Start the broker thread; return the bound port once it is listening.

        Raises :class:`OSError` when binding fails and :class:`TimeoutError` (also an ``OSError``)
        when the broker is not listening within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise RuntimeError("broker thread already started")
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(timeout)
            raise TimeoutError(f"embedded MQTT broker did not start within {timeout}s")
        if self._error is not None:
            self.stop(timeout)
            raise self._error
        return self._broker.port

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("embedded MQTT broker thread did not stop within %ss", timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            await self._broker.start()
        except Exception as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            if not self._stop_requested:
                await self._stop_event.wait()
        finally:
            await self._broker.stop()

    def __enter__(self) -> BrokerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
