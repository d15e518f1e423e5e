"""MQTT 3.1.1 / 5.0 packet codec and topic helpers for the embedded demo broker.

Only what :mod:`agent.mqtt.embedded_broker` needs: reading framed packets from an asyncio stream,
decoding the client-to-server packets, encoding the server-to-client packets, and validating and
matching topic names and filters. Anything that violates the wire format raises
:class:`MalformedPacketError`; the broker closes that one connection.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass, field

MAX_PACKET_SIZE = 16 * 1024 * 1024
"""Largest remaining length accepted from a client (and advertised to MQTT 5 clients)."""

MQTT_311 = 4
MQTT_5 = 5

# MQTT 5 reason codes used by the broker.
RC_SUCCESS = 0x00
RC_DISCONNECT_WITH_WILL = 0x04
RC_NO_SUBSCRIPTION_EXISTED = 0x11
RC_UNSUPPORTED_PROTOCOL_V311 = 0x01
RC_IDENTIFIER_REJECTED_V311 = 0x02
RC_SUBSCRIBE_FAILURE_V311 = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_BAD_AUTH_METHOD = 0x8C
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_PACKET_ID_NOT_FOUND = 0x92
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_SHARED_SUBS_NOT_SUPPORTED = 0x9E

# MQTT 5 property identifiers used by the broker.
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_AUTH_METHOD = 0x15
PROP_TOPIC_ALIAS = 0x23
PROP_MAX_PACKET_SIZE = 0x27
PROP_SUB_ID_AVAILABLE = 0x29
PROP_SHARED_SUB_AVAILABLE = 0x2A
# Application properties a broker must pass on unchanged to MQTT 5 subscribers: payload format
# indicator, content type, response topic, correlation data, user properties.
FORWARDED_PROPERTIES = frozenset({0x01, 0x03, 0x08, 0x09, 0x26})

# Property identifier -> wire type (MQTT 5 spec, section 2.2.2.2).
_PROPERTY_TYPES: dict[int, str] = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}  # fmt: skip
_REPEATABLE_PROPERTIES = frozenset({0x0B, 0x26})  # subscription identifier, user property


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class MalformedPacketError(Exception):
    """A packet broke the wire format or the protocol; the connection has to be closed."""

    def __init__(self, message: str, reason_code: int = RC_MALFORMED) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class UnsupportedProtocolError(MalformedPacketError):
    """CONNECT asked for a protocol level other than 4 (MQTT 3.1.1) or 5 (MQTT 5)."""

    def __init__(self, level: int) -> None:
        super().__init__(f"unsupported protocol level {level}", RC_UNSUPPORTED_PROTOCOL_V311)
        self.level = level


# --------------------------------------------------------------------------- framing


async def read_packet(reader: asyncio.StreamReader, max_size: int = MAX_PACKET_SIZE) -> tuple[int, int, bytes]:
    """Read one packet; return ``(packet type, fixed-header flags, body)``.

    Raises :class:`asyncio.IncompleteReadError` on EOF and :class:`MalformedPacketError` for a
    remaining length longer than four bytes or larger than ``max_size``.
    """
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise MalformedPacketError("remaining length is longer than 4 bytes")
    if length > max_size:
        raise MalformedPacketError(f"packet of {length} bytes exceeds {max_size}", RC_PACKET_TOO_LARGE)
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


def encode_varint(value: int) -> bytes:
    if not 0 <= value < 1 << 28:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def encode_packet(packet_type: int, flags: int, body: bytes) -> bytes:
    return bytes([packet_type << 4 | flags]) + encode_varint(len(body)) + body


# --------------------------------------------------------------------------- decoding


@dataclass
class Properties:
    """Decoded MQTT 5 properties: last value per identifier plus the raw encoding of each."""

    values: dict[int, object] = field(default_factory=dict)
    raw: list[tuple[int, bytes]] = field(default_factory=list)

    def select(self, identifiers: frozenset[int]) -> bytes:
        """Concatenated raw encodings of the properties whose identifier is in ``identifiers``."""
        return b"".join(raw for ident, raw in self.raw if ident in identifiers)

    def get_int(self, identifier: int) -> int | None:
        value = self.values.get(identifier)
        return value if isinstance(value, int) else None


class Decoder:
    """Cursor over a packet body; every read past the end raises :class:`MalformedPacketError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise MalformedPacketError("packet is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("!I", self.take(4))[0]
        return value

    def varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MalformedPacketError("variable byte integer is longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacketError("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def properties(self) -> Properties:
        length = self.varint()
        end = self._pos + length
        if end > len(self._data):
            raise MalformedPacketError("property length exceeds packet")
        props = Properties()
        while self._pos < end:
            start = self._pos
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            value: object
            if kind is None:
                raise MalformedPacketError(f"unknown property 0x{ident:02x}")
            if kind == "byte":
                value = self.u8()
            elif kind == "u16":
                value = self.u16()
            elif kind == "u32":
                value = self.u32()
            elif kind == "varint":
                value = self.varint()
            elif kind == "str":
                value = self.string()
            elif kind == "bin":
                value = self.binary()
            else:
                value = (self.string(), self.string())
            if self._pos > end:
                raise MalformedPacketError("property overruns property length")
            if ident in props.values and ident not in _REPEATABLE_PROPERTIES:
                raise MalformedPacketError(f"duplicate property 0x{ident:02x}", RC_PROTOCOL_ERROR)
            props.values[ident] = value
            props.raw.append((ident, self._data[start : self._pos]))
        return props


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = b""  # forwardable MQTT 5 properties, raw


@dataclass
class Connect:
    level: int
    clean: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None
    properties: Properties


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    properties: Properties


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


def parse_connect(body: bytes) -> Connect:
    d = Decoder(body)
    name = d.string()
    level = d.u8()
    if level not in (MQTT_311, MQTT_5):
        raise UnsupportedProtocolError(level)
    if name != "MQTT":
        raise MalformedPacketError(f"bad protocol name {name!r}", RC_PROTOCOL_ERROR)
    flags = d.u8()
    if flags & 0x01:
        raise MalformedPacketError("reserved CONNECT flag is set")
    keepalive = d.u16()
    props = d.properties() if level == MQTT_5 else Properties()
    client_id = d.string()
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    will = None
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacketError("will QoS 3")
        will_props = d.properties() if level == MQTT_5 else Properties()
        topic = d.string()
        if not valid_topic_name(topic):
            raise MalformedPacketError(f"invalid will topic {topic!r}", RC_TOPIC_NAME_INVALID)
        will = Will(topic, d.binary(), will_qos, will_retain, will_props.select(FORWARDED_PROPERTIES))
    elif will_qos or will_retain:
        raise MalformedPacketError("will QoS/retain set without will flag")
    username = d.string() if flags & 0x80 else None
    password = d.binary() if flags & 0x40 else None
    if level == MQTT_311 and password is not None and username is None:
        raise MalformedPacketError("password without user name")
    if d.remaining():
        raise MalformedPacketError("trailing bytes after CONNECT payload")
    return Connect(level, bool(flags & 0x02), keepalive, client_id, will, username, password, props)


def parse_publish(flags: int, body: bytes, level: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacketError("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacketError("DUP set on a QoS 0 PUBLISH")
    d = Decoder(body)
    topic = d.string()
    packet_id = parse_nonzero_id(d) if qos else None
    props = d.properties() if level == MQTT_5 else Properties()
    if PROP_TOPIC_ALIAS in props.values:
        raise MalformedPacketError("topic aliases are not supported", RC_TOPIC_ALIAS_INVALID)
    if not valid_topic_name(topic):
        raise MalformedPacketError(f"invalid topic name {topic!r}", RC_TOPIC_NAME_INVALID)
    return Publish(topic, d.rest(), qos, bool(flags & 0x01), dup, packet_id, props)


def parse_subscribe(body: bytes, level: int) -> tuple[int, list[Subscription]]:
    d = Decoder(body)
    packet_id = parse_nonzero_id(d)
    if level == MQTT_5:
        d.properties()  # subscription identifiers are not supported (advertised as such)
    subs = []
    while d.remaining():
        topic_filter = d.string()
        options = d.u8()
        reserved = 0xFC if level == MQTT_311 else 0xC0
        if options & reserved or options & 0x03 == 3 or (options >> 4) & 0x03 == 3:
            raise MalformedPacketError(f"invalid subscription options 0x{options:02x}")
        subs.append(
            Subscription(
                topic_filter,
                options & 0x03,
                no_local=bool(options & 0x04),
                retain_as_published=bool(options & 0x08),
                retain_handling=(options >> 4) & 0x03,
            )
        )
    if not subs:
        raise MalformedPacketError("SUBSCRIBE without topic filters", RC_PROTOCOL_ERROR)
    return packet_id, subs


def parse_unsubscribe(body: bytes, level: int) -> tuple[int, list[str]]:
    d = Decoder(body)
    packet_id = parse_nonzero_id(d)
    if level == MQTT_5:
        d.properties()
    filters = []
    while d.remaining():
        filters.append(d.string())
    if not filters:
        raise MalformedPacketError("UNSUBSCRIBE without topic filters", RC_PROTOCOL_ERROR)
    return packet_id, filters


def parse_nonzero_id(d: Decoder) -> int:
    packet_id = d.u16()
    if packet_id == 0:
        raise MalformedPacketError("packet identifier 0", RC_PROTOCOL_ERROR)
    return packet_id


def parse_ack_id(body: bytes, level: int) -> int:
    """Packet identifier of a PUBACK/PUBREC/PUBREL/PUBCOMP (MQTT 5 reason/properties are skipped)."""
    d = Decoder(body)
    packet_id = parse_nonzero_id(d)
    if level == MQTT_5 and d.remaining():
        d.u8()
        if d.remaining():
            d.properties()
    if d.remaining():
        raise MalformedPacketError("trailing bytes after acknowledgement")
    return packet_id


def parse_disconnect(body: bytes, level: int) -> int:
    """Reason code of a DISCONNECT (0 when absent, always 0 for MQTT 3.1.1)."""
    if level == MQTT_311:
        if body:
            raise MalformedPacketError("MQTT 3.1.1 DISCONNECT has a body")
        return RC_SUCCESS
    d = Decoder(body)
    reason = d.u8() if d.remaining() else RC_SUCCESS
    if d.remaining():
        d.properties()
    if d.remaining():
        raise MalformedPacketError("trailing bytes after DISCONNECT")
    return reason


# --------------------------------------------------------------------------- encoding


def encode_property(identifier: int, value: int | str) -> bytes:
    kind = _PROPERTY_TYPES[identifier]
    head = encode_varint(identifier)
    if isinstance(value, str):
        return head + encode_string(value)
    fmt = {"byte": "!B", "u16": "!H", "u32": "!I"}.get(kind)
    return head + (struct.pack(fmt, value) if fmt else encode_varint(value))


def _with_properties(level: int, properties: bytes) -> bytes:
    return encode_varint(len(properties)) + properties if level == MQTT_5 else b""


def encode_connack(level: int, code: int, properties: bytes = b"") -> bytes:
    """CONNACK (Session Present is always 0: the broker keeps no sessions)."""
    return encode_packet(PacketType.CONNACK, 0, bytes([0, code]) + _with_properties(level, properties))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    packet_id: int | None,
    level: int,
    properties: bytes,
) -> bytes:
    body = encode_string(topic)
    if qos:
        body += struct.pack("!H", packet_id or 0)
    body += _with_properties(level, properties) + payload
    return encode_packet(PacketType.PUBLISH, qos << 1 | int(retain), body)


def encode_ack(packet_type: int, packet_id: int, level: int, reason: int = RC_SUCCESS) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP; the short form when the reason is success or MQTT 3.1.1."""
    body = struct.pack("!H", packet_id)
    if level == MQTT_5 and reason != RC_SUCCESS:
        body += bytes([reason])
    return encode_packet(packet_type, 0x02 if packet_type == PacketType.PUBREL else 0, body)


def encode_suback(packet_type: int, packet_id: int, codes: list[int], level: int) -> bytes:
    """SUBACK, or UNSUBACK (whose MQTT 3.1.1 form carries no reason codes)."""
    if packet_type == PacketType.UNSUBACK and level == MQTT_311:
        codes = []
    body = struct.pack("!H", packet_id) + _with_properties(level, b"") + bytes(codes)
    return encode_packet(packet_type, 0, body)


def encode_disconnect(reason: int) -> bytes:
    """MQTT 5 server-side DISCONNECT (MQTT 3.1.1 servers never send DISCONNECT)."""
    return encode_packet(PacketType.DISCONNECT, 0, bytes([reason]))


PINGRESP = encode_packet(PacketType.PINGRESP, 0, b"")


# --------------------------------------------------------------------------- topics


def valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: non-empty and free of wildcards."""
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_topic_filter(topic_filter: str) -> bool:
    """A SUBSCRIBE filter: ``+`` only as a whole level, ``#`` only as the whole last level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` under the MQTT rules.

    ``+`` matches exactly one level, ``#`` matches the remaining levels including none (so
    ``a/#`` matches ``a``), and wildcards in the first level never match topics starting with
    ``$`` (``#`` does not match ``$SYS/x``; ``$SYS/#`` does).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level not in ("+", topic_levels[index])):
            return False
    return len(filter_levels) == len(topic_levels)
