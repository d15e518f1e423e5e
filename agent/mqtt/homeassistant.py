"""Home Assistant MQTT discovery (opt-in): retained config messages that make the agent appear as a device.

Each entity reads a topic the agent already publishes (a pipeline's result topic, the telemetry topic,
availability), so discovery adds no traffic of its own. Templates render ``None`` where a figure is missing,
which Home Assistant shows as "unknown" instead of logging a template error on every message.
See https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery for the payload keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from agent.errors import ConfigError
from agent.mqtt.topics import Topics

ResultKind = Literal["classification", "ssd", "raw"]
KINDS: tuple[str, ...] = get_args(ResultKind)

ONLINE = "online"
OFFLINE = "offline"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # what HA accepts in a discovery topic's node_id and object_id


def slug(text: str) -> str:
    """``text`` as a discovery topic level: '/' becomes '_'; names that needed other changes get a short hash
    so that two names never map to the same object id (a retained config would silently replace the other)."""
    plain = text.replace("/", "_")
    safe = _UNSAFE.sub("_", plain)
    if safe == plain:
        return safe
    return f"{safe}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _result_entity(kind: str | None) -> dict[str, Any]:
    """What a pipeline's result sensor shows: the top label, the number of detections, or the latency."""
    if kind == "classification":
        return {"value_template": "{{ value_json.get('label') }}", "icon": "mdi:tag-text"}
    if kind == "ssd":
        return {
            "value_template": "{{ value_json.get('detections', []) | count }}",
            "unit_of_measurement": "detections",
            "state_class": "measurement",
            "icon": "mdi:bounding-box",
        }
    # raw outputs (or a kind the caller did not say) have no one-line summary; latency always exists
    return {
        "value_template": "{{ value_json.get('latency_ms') }}",
        "unit_of_measurement": "ms",
        "device_class": "duration",
        "state_class": "measurement",
    }


# the small part of a result worth keeping as attributes: whole results (raw tensors, long detection lists)
# would bloat Home Assistant's recorder
_RESULT_ATTRIBUTES = (
    "{{ {'seq': value_json.get('seq'), 'model': value_json.get('model'), 'version': value_json.get('version'),"
    " 'latency_ms': value_json.get('latency_ms'), 'accelerators': value_json.get('accelerators'),"
    " 'degraded': value_json.get('degraded', false)} | tojson }}"
)


def discovery_messages(
    topics: Topics,
    device_name: str,
    pipelines: Sequence[str],
    sw_version: str,
    discovery_prefix: str = "homeassistant",
    *,
    kinds: Mapping[str, str] | None = None,
) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` pairs to publish retained, in order. ``kinds`` maps a pipeline to its post-processing
    ("classification", "ssd" or "raw") to choose what its result sensor shows; unnamed pipelines show latency."""
    _check_prefix(discovery_prefix)
    kinds = kinds or {}
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise ConfigError(f"pipeline {name!r}: result kind {kind!r} is not one of {', '.join(KINDS)}")
    if len(set(pipelines)) != len(pipelines):
        raise ConfigError(f"pipeline names must be unique for Home Assistant discovery: {list(pipelines)}")

    node = slug(topics.base)
    device = {
        "identifiers": [f"edge-agent_{node}"],
        "name": device_name,
        "model": "edge-agent",
        "manufacturer": "edge-agent",
        "sw_version": sw_version,
    }
    common = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device,
        "origin": {"name": "edge-agent", "sw_version": sw_version},
    }
    entities: list[tuple[str, str, dict[str, Any]]] = []  # (component, object id, config)

    def telemetry_sensor(object_id: str, name: str, template: str, **extra: Any) -> None:
        config = {"name": name, "state_topic": topics.telemetry, "value_template": template}
        config |= {"state_class": "measurement", "entity_category": "diagnostic", **extra}
        entities.append(("sensor", object_id, config))

    for pipeline in pipelines:
        result_topic = topics.result(pipeline)  # also rejects names that cannot be a topic level
        pid = slug(pipeline)
        result = {
            "name": f"{pipeline} result",
            "state_topic": result_topic,
            "json_attributes_topic": result_topic,
            "json_attributes_template": _RESULT_ATTRIBUTES,
            **_result_entity(kinds.get(pipeline)),
        }
        entities.append(("sensor", f"{pid}_result", result))
        stats = f"value_json.pipelines.get({_jinja_str(pipeline)}, {{}})"
        telemetry_sensor(
            f"{pid}_latency",
            f"{pipeline} inference latency",
            f"{{{{ ({stats}.get('latency_ms') or {{}}).get('p50') }}}}",
            unit_of_measurement="ms",
            device_class="duration",
        )
        telemetry_sensor(
            f"{pid}_fps",
            f"{pipeline} frames/s",
            f"{{{{ {stats}.get('frames_per_s') }}}}",
            unit_of_measurement="fps",
            icon="mdi:speedometer",
        )
    telemetry_sensor(
        "outbox_backlog",
        "Outbox backlog",
        "{{ (value_json.get('outbox') or {}).get('backlog') }}",
        unit_of_measurement="messages",
        icon="mdi:tray-full",
    )
    telemetry_sensor(
        "cpu",
        "CPU",
        "{{ value_json.system.get('cpu_percent') }}",
        unit_of_measurement="%",
        icon="mdi:cpu-64-bit",
    )
    telemetry_sensor(
        "memory",
        "Memory",
        "{{ (value_json.system.get('memory') or {}).get('percent') }}",
        unit_of_measurement="%",
        icon="mdi:memory",
    )
    telemetry_sensor(
        "temperature",
        "Temperature",
        "{{ value_json.system.get('temperature_c') }}",
        unit_of_measurement="°C",
        device_class="temperature",
    )

    messages = []
    for component, object_id, config in entities:
        payload = {**config, **common, "unique_id": f"{node}_{object_id}"}
        messages.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config", _dump(payload)))
    # Connectivity reads the availability topic itself and so deliberately has no availability of its own:
    # with one, "offline" would make it "unavailable" instead of "off" and automations on "off" never fire.
    connectivity = {
        "name": "Connected",
        "state_topic": topics.availability,
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": device,
        "origin": common["origin"],
        "unique_id": f"{node}_availability",
    }
    messages.append((f"{discovery_prefix}/binary_sensor/{node}/availability/config", _dump(connectivity)))
    return messages


def removal_messages(messages: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Empty retained payloads for the same topics: Home Assistant removes those entities (a pipeline that was
    taken out of the config, or discovery switched off)."""
    return [(topic, b"") for topic, _ in messages]


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _check_prefix(prefix: str) -> None:
    levels = prefix.split("/")
    if not prefix or any(not level or any(c in level for c in "+#\x00") or level != level.strip() for level in levels):
        raise ConfigError(f"discovery prefix {prefix!r} must be MQTT topic levels without '+', '#' or blanks")
