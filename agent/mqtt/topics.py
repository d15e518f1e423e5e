"""Every MQTT topic the agent uses is built here, and only here."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError


def _level(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#\x00") or value != value.strip():
        raise ConfigError(f"{what} {value!r} cannot be an MQTT topic level (no '/', '+', '#', or blanks)")
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            _level(part, "mqtt.prefix part")
        _level(self.device_id, "agent.device_id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def availability(self) -> str:
        """Retained 'online' / 'offline'; 'offline' is also the Last Will."""
        return f"{self.base}/availability"

    def result(self, pipeline: str) -> str:
        return f"{self.base}/{_level(pipeline, 'pipeline name')}/result"

    def snapshot(self, pipeline: str) -> str:
        """Retained: the latest annotated JPEG of a frame with detections."""
        return f"{self.base}/{_level(pipeline, 'pipeline name')}/snapshot"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{_level(name, 'command name')}"

    @property
    def commands(self) -> str:
        """The subscription filter for every command."""
        return f"{self.base}/cmd/+"

    def command_reply(self, name: str) -> str:
        return f"{self.command(name)}/reply"

    @property
    def ota(self) -> str:
        return f"{self.base}/ota"

    @property
    def ota_status(self) -> str:
        return f"{self.base}/ota/status"
