"""The ``[mqtt]`` section of the agent's config: the broker connection, its security and its session."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.mqtt.security import BrokerTls


# tls, ca_file, client_cert, client_key, username and password, with their checks, are BrokerTls's: the same
# fields as an MQTT input's own broker
class MqttSection(BrokerTls):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (usually 8883 with TLS).")
    prefix: str = Field("edge", pattern=r"^[^#+\s]+$", description="First level of every topic.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version: 5 (reason codes, session expiry, request/response), or 3.1.1 for old brokers."
    )
    qos: Literal[0, 1] = Field(1, description="QoS of result messages; 1 = counted only once acknowledged.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    client_id: str | None = Field(None, description="MQTT client id; default edge-agent-<device_id>.")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=2**32 - 1,
        description="Keep the session (subscriptions, queued commands) on the broker this long across disconnects; "
        "0: a clean session at each connection. (3.1.1: any value > 0 means a persistent session.)",
    )
    reconnect_min_s: float = Field(1.0, gt=0, description="First delay before reconnecting to the broker.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest delay between reconnect attempts (jittered).")
    max_inflight: int = Field(
        256, ge=1, le=65535, description="Results published but not yet acknowledged before publishing waits."
    )
    commands: bool = Field(True, description="Take commands on <prefix>/<device_id>/cmd/<name>.")
    command_secret_file: Path | None = Field(
        None,
        description="A file holding a shared secret (at least 16 bytes): commands must then be signed with it "
        "(HMAC-SHA256, with a timestamp and a nonce against replay); for brokers whose ACLs are not enough.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self
