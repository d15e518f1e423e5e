"""The agent's one MQTT connection (paho-mqtt 2), bridged to asyncio.

paho runs its own network thread (``loop_start``), which is also the single reconnect mechanism: it
retries the first connection and every lost one with exponential backoff between
``reconnect_min_s`` and ``reconnect_max_s``, and resends unacknowledged QoS 1 messages after each
reconnect. paho's callbacks never touch agent state: they hand over to the event loop with
``call_soon_threadsafe``, where publish futures are resolved and incoming messages are dispatched to
the handlers ``subscribe`` registered (subscriptions are renewed on every connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSection
from agent.errors import PublishError
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
MAX_INCOMING_BYTES = 64 * 1024  # larger incoming messages (commands, OTA pushes) are dropped with a warning

Handler = Callable[[str, bytes], None]  # (topic, payload), called on the event loop


class MqttLink:
    def __init__(self, cfg: MqttSection, topics: Topics, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.topics = topics
        self._loop = loop
        self._pending: dict[int, asyncio.Future[None]] = {}
        self.connected = asyncio.Event()
        self.connections = 0
        self._last_error = ""
        self._stopping = threading.Event()
        self._acks: list[tuple[int, ReasonCode]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        self._handlers: dict[str, tuple[Handler, int]] = {}
        client_id = cfg.client_id or f"edge-agent-{topics.device_id}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, cfg.password)
        self._client.will_set(topics.availability, OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(cfg.reconnect_min_s)), max_delay=round(cfg.reconnect_max_s)
        )
        # paho's own in-flight window; the agent bounds what it hands over with max_inflight
        self._client.max_inflight_messages_set(min(cfg.max_inflight, 100))
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    @property
    def pending(self) -> int:
        """Messages handed to the broker and not yet acknowledged."""
        return len(self._pending)

    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        """Call ``handler`` on the event loop for each message on ``topic`` (wildcards allowed); kept across
        reconnections. Call on the event loop."""
        self._handlers[topic] = (handler, qos)
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    def start(self) -> None:
        log.info("connecting to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> asyncio.Future[None]:
        """Queue a message; the future completes when the broker acknowledged it (QoS 1) or it was sent (QoS 0).

        Must be called on the event loop. While the broker is away paho keeps the message and sends it
        after reconnecting.
        """
        fut: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            fut.set_exception(PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}"))
            return fut
        if qos == 0 and info.rc == mqtt.MQTT_ERR_NO_CONN:
            fut.set_exception(PublishError(f"publish to {topic} dropped: not connected (QoS 0)"))
            return fut
        # on_publish for this mid reaches the loop via call_soon_threadsafe, i.e. after this returns
        self._pending[info.mid] = fut
        return fut

    async def stop(self, timeout: float) -> None:
        """Publish 'offline' (retained), wait for it briefly, disconnect cleanly and stop paho's thread."""
        self._stopping.set()
        if self.connected.is_set():
            fut = self.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:
                await asyncio.wait_for(fut, timeout)
            except (TimeoutError, PublishError) as exc:
                log.warning("could not publish 'offline' before stopping: %s", exc or "timed out")
        await asyncio.to_thread(self._disconnect)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PublishError("MQTT link stopped before the broker acknowledged"))
        self._pending.clear()

    def _disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ---- paho's network thread ------------------------------------------------------------------

    def _to_loop(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed during shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            self._note_error(f"broker refused the connection: {reason}")
            return
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        for topic, (_, qos) in list(self._handlers.items()):
            client.subscribe(topic, qos)
        self._to_loop(self._set_connected, True)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._note_error(f"cannot reach MQTT broker {self.cfg.host}:{self.cfg.port}; retrying with backoff")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._to_loop(self._set_connected, False)
        if not self._stopping.is_set():
            self._note_error(f"lost the MQTT broker connection ({reason}); reconnecting")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        # acknowledgements come in bursts: wake the loop once per burst, not once per message
        with self._acks_lock:
            self._acks.append((mid, reason))
            if self._acks_scheduled:
                return
            self._acks_scheduled = True
        self._to_loop(self._drain_acks)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._to_loop(self._dispatch, message.topic, bytes(message.payload))

    def _note_error(self, text: str) -> None:
        # log a repeated failure once, not at every retry
        if text != self._last_error:
            log.warning("%s", text)
            self._last_error = text

    # ---- event loop ------------------------------------------------------------------------------

    def _set_connected(self, up: bool) -> None:
        if up:
            self.connections += 1
            self._last_error = ""
            self.connected.set()
            log.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        else:
            self.connected.clear()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_INCOMING_BYTES:
            log.warning(
                "ignoring a %d-byte message on %s: larger than %d bytes", len(payload), topic, MAX_INCOMING_BYTES
            )
            return
        for pattern, (handler, _) in list(self._handlers.items()):
            if mqtt.topic_matches_sub(pattern, topic):
                try:
                    handler(topic, payload)
                except Exception:  # a handler's bug must not take the connection down with it
                    log.exception("handling a message on %s failed", topic)

    def _drain_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._acks_scheduled = False
        for mid, reason in acks:
            fut = self._pending.pop(mid, None)
            if fut is None or fut.done():
                continue
            if reason.is_failure:
                fut.set_exception(PublishError(f"broker refused the message: {reason}"))
            else:
                fut.set_result(None)
