"""Readings from other devices over MQTT: JSON numbers in windows, JPEG/PNG images or ``.npy`` tensors.

Without a host of its own the input connects the way the agent does (``[mqtt]``: host, port, protocol, TLS
and credentials, filled in at load by ``MqttInputSource.on_agent_broker``); with one, it takes its own.
"""

from __future__ import annotations

import logging
import queue
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field, model_validator

from agent.mqtt.security import BrokerSecurity, load_security
from agent.sources.base import Frame, note_bad
from agent.sources.pacing import Runner
from agent.sources.payloads import BadPayload, decode_image, decode_npy, json_number, parse_json
from agent.sources.records import Windower

if TYPE_CHECKING:
    from agent.mqtt.settings import MqttSection

log = logging.getLogger(__name__)

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
QUEUE_SIZE = 256  # messages between paho's thread and the source's; beyond it they are dropped and counted
MAX_TOPICS = 1024  # topics with a window of their own; a wildcard matching more is a configuration mistake
POLL_S = 0.2  # how long the source thread waits for a message before looking at the stop flag again
KEEPALIVE_S = 30
KEEP_SESSION = 0xFFFFFFFF  # MQTT 5 session expiry meaning "never", as a 3.1.1 persistent session is kept
# what an input without its own host takes from [mqtt]; password_file stays unset ([mqtt] has only password)
AGENT_CONNECTION = ("protocol", "tls", "ca_file", "client_cert", "client_key", "username", "password")
OWN_BROKER_ONLY = frozenset((*AGENT_CONNECTION, "password_file"))


class MqttInputSource(BrokerSecurity):
    type: Literal["mqtt"] = Field(description="Readings, images or tensors that other devices publish over MQTT.")
    topic: str = Field(
        min_length=1, description="Topic to subscribe to; wildcards + and # allowed, e.g. sensors/+/imu."
    )
    host: str | None = Field(
        None,
        description="Broker host; unset: the agent's own broker, connected to as the agent is ([mqtt] host, "
        "protocol, tls, ca_file, client_cert, client_key, username, password).",
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port; unset: the agent's own broker ([mqtt] port)."
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="With host: MQTT version, 5 or 3.1.1 for old brokers; unset host: the agent's."
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        description="MQTT client id of this input; set, the broker also keeps its session, so that readings "
        "published while the agent was offline are delivered when it is back. Unset: edge-agent-input-<random>.",
    )
    payload: Literal["json", "image", "npy"] = Field(
        "json",
        description="json: a number, a list of numbers or an object, one reading a message; image: JPEG or PNG "
        "bytes; npy: the bytes of a .npy file.",
    )
    fields: list[str] = Field(
        default_factory=list,
        description="JSON objects: the keys to read, in this order; empty: every numeric key of the first reading.",
    )
    window: int = Field(1, ge=1, description="Readings per frame (json): the tensor is (window, values a reading).")
    hop: int | None = Field(
        None, ge=1, description="Readings from the start of one window to the start of the next; unset: window."
    )
    rate_hz: float = Field(
        0.0, ge=0, description="At most this many frames per second (later ones are dropped); 0: every frame."
    )

    @model_validator(mode="after")
    def _windows_need_json(self) -> MqttInputSource:
        if self.payload != "json" and (self.window != 1 or self.hop is not None or self.fields):
            raise ValueError(f'window, hop and fields apply to payload = "json" only, not {self.payload!r}')
        return self

    @model_validator(mode="after")
    def _own_broker_needs_host(self) -> MqttInputSource:
        own = sorted(OWN_BROKER_ONLY & self.model_fields_set)
        if self.host is None and own:
            raise ValueError(
                f"{', '.join(own)} apply to the input's own broker: set host too (without host the input "
                "connects to the agent's broker with the [mqtt] settings)"
            )
        return self

    def on_agent_broker(self, agent: MqttSection) -> dict[str, Any]:
        """The fields filled in at load: without host, the agent's whole connection; the port, unless set."""
        if self.host is not None:
            return {"port": self.port or agent.port}
        inherited = {name: getattr(agent, name) for name in AGENT_CONNECTION}
        return {"host": agent.host, "port": self.port or agent.port, **inherited}

    @property
    def step(self) -> int:
        return self.hop if self.hop is not None else self.window


class _TopicWindow:
    """The readings of one topic: what a reading looks like, and the window being filled."""

    def __init__(self, cfg: MqttInputSource) -> None:
        self.fields = list(cfg.fields)  # resolved on the first reading when empty
        self.objects_only = bool(cfg.fields)
        self.windower = Windower(cfg.window, cfg.step)

    def row(self, item: Any) -> list[float]:
        """One reading as a row of floats, one per field; BadPayload for anything else."""
        if isinstance(item, dict):
            return self._object(item)
        if self.objects_only:
            raise BadPayload("not an object", f"{item!r:.40} (with fields set, each reading is a JSON object)")
        values = item if isinstance(item, list) else [item]
        numbers = [json_number(value) for value in values]
        if not numbers or any(number is None for number in numbers):
            raise BadPayload("not a number", f"{item!r:.40}")
        names = ["value"] if not isinstance(item, list) else [str(i) for i in range(len(numbers))]
        if not self.fields:
            self.fields = names
        if names != self.fields:
            raise BadPayload("not like the first reading", f"{len(numbers)} value(s), expected {len(self.fields)}")
        return [number for number in numbers if number is not None]

    def _object(self, item: dict[str, Any]) -> list[float]:
        if not self.fields:
            self.fields = [key for key, value in item.items() if json_number(value) is not None]
            if not self.fields:
                raise BadPayload("not a number", "no numeric value")
        row = []
        for name in self.fields:
            if name not in item:
                raise BadPayload("missing field", f"no key {name!r}")
            number = json_number(item[name])
            if number is None:
                raise BadPayload("not a number", f"{name}={item[name]!r:.40}")
            row.append(number)
        return row


class MqttInputRunner(Runner):
    """Runs in its own thread: subscribes with its own paho client and hands frames to ``emit``.

    paho's network thread only queues messages; they are decoded and emitted in the source thread, so that
    a pipeline that blocks ``emit`` never stalls the client's keepalives.
    """

    def __init__(self, cfg: MqttInputSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cfg = cfg
        self.dropped = 0  # messages that arrived faster than the source thread took them
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self.host = cfg.host or DEFAULT_HOST
        self.port = cfg.port or (DEFAULT_TLS_PORT if cfg.tls else DEFAULT_PORT)
        self.client_id = cfg.client_id or f"edge-agent-input-{secrets.token_hex(4)}"
        # files loaded now: a bad CA, certificate or password file is a ConfigError before the pipeline starts
        self._security = load_security(cfg, f"mqtt input {cfg.topic}", cfg.password_file)
        self.subscribed = threading.Event()  # set at each acknowledged subscription (after every reconnect)
        self._messages: queue.Queue[tuple[str, bytes]] = queue.Queue(QUEUE_SIZE)
        self._warned: set[str] = set()
        self._windows: dict[str, _TopicWindow] = {}
        self._connected = False  # paho's thread only
        self._last_problem = ""  # paho's thread only: each problem is logged once per outage, not at every retry

    def run(self) -> None:
        client = self._client()
        # connect_async + loop_start: paho's thread connects, and reconnects after every loss, on its own
        if self.cfg.protocol == "5":  # a named input keeps its session, as clean_session = False does in 3.1.1
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = KEEP_SESSION if self.cfg.client_id is not None else 0
            client.connect_async(self.host, self.port, KEEPALIVE_S, clean_start=self.cfg.client_id is None,
                                 properties=props)  # fmt: skip
        else:
            client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        client.loop_start()
        try:
            while not self.stop.is_set():
                try:
                    topic, payload = self._messages.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if self._restart.is_set():
                    self._restart.clear()
                    self._windows.clear()
                    self._pacer.reset()
                self._take(topic, payload)
        finally:
            client.disconnect()
            client.loop_stop()

    def _client(self) -> mqtt.Client:
        if self.cfg.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=self.cfg.client_id is None,
            )
        self._security.apply(client)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # ---- paho's thread: no agent state touched beyond the queue and events --------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:  # e.g. a wrong user name or password: paho tries again after its delay
            self._problem(f"mqtt input: broker {self.host}:{self.port} refused the connection ({reason}); check "
                          "username and password; retrying")  # fmt: skip
            return
        self._connected = True
        self._last_problem = ""
        log.info("mqtt input connected to %s:%d, subscribing to %s", self.host, self.port, self.cfg.topic)
        client.subscribe(self.cfg.topic, qos=1)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the attempt, so the exception is still at hand
        exc = sys.exception()
        if isinstance(exc, ssl.SSLError):  # SSLCertVerificationError included: the broker's certificate
            why = f"the TLS handshake failed: {exc}; check ca_file, client_cert and client_key"
        else:
            why = str(exc) if exc is not None else "no answer"
        self._problem(f"mqtt input cannot connect to {self.host}:{self.port} ({why}); retrying until it answers")

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.subscribed.clear()
        was_connected, self._connected = self._connected, False
        if was_connected and not self.stop.is_set():  # not after a refused CONNACK: that was logged already
            self._problem(f"mqtt input lost {self.host}:{self.port} ({reason}); reconnecting")

    def _problem(self, text: str) -> None:
        if text != self._last_problem:
            self._last_problem = text
            log.warning("%s", text)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        if any(code.is_failure for code in reasons):
            log.error("mqtt input: the broker refused the subscription to %s (%s)", self.cfg.topic, reasons[0])
            return
        log.info("mqtt input subscribed to %s", self.cfg.topic)
        self.subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._messages.put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("mqtt input %s: messages arrive faster than they are taken; dropping (counted)", msg.topic)

    # ---- the source thread ---------------------------------------------------------------------

    def _take(self, topic: str, payload: bytes) -> None:
        try:
            frame = self._frame(topic, payload)
        except BadPayload as exc:
            self.bad_inputs += 1
            note_bad(exc, f"mqtt topic {topic}", self._warned)
            return
        if frame is not None and self._pacer.due(self.rate_hz):
            self.emit(frame)

    def _frame(self, topic: str, payload: bytes) -> Frame | None:
        """The frame this message completes (None while a window fills); BadPayload when it is malformed."""
        now = time.time()
        if self.cfg.payload == "image":
            pixels = decode_image(payload)  # (H, W, 3)
            meta = {"topic": topic, "width": pixels.shape[1], "height": pixels.shape[0]}
            return Frame(pixels, now, topic, meta=meta)
        if self.cfg.payload == "npy":
            return Frame(decode_npy(payload), now, topic, is_tensor=True, meta={"topic": topic})
        state = self._windows.get(topic)
        if state is None:
            if len(self._windows) >= MAX_TOPICS:
                raise BadPayload("too many topics", f"over {MAX_TOPICS} topics match {self.cfg.topic}")
            state = self._windows[topic] = _TopicWindow(self.cfg)
        got = state.windower.push(state.row(parse_json(payload)))
        if got is None:
            return None
        window, offset = got  # (window, fields)
        meta = {"topic": topic, "offset": offset, "fields": list(state.fields)}
        return Frame(window, now, topic, is_tensor=True, meta=meta)
