"""The ``[telemetry]`` section: periodic health messages, Home Assistant discovery, a Prometheus endpoint."""

from __future__ import annotations

from pydantic import Field

from agent.schema import Section


class TelemetrySection(Section):
    interval_s: float = Field(
        60.0, ge=0, description="Seconds between messages on <prefix>/<device_id>/telemetry; 0: none."
    )
    homeassistant: bool = Field(
        False, description="Publish Home Assistant MQTT discovery (retained), so results and health appear as entities."
    )
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^#+\s]+$", description="Home Assistant's discovery prefix."
    )
    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port (needs edge-agent[prometheus])."
    )
    prometheus_host: str = Field("127.0.0.1", description="Address the metrics endpoint listens on.")
