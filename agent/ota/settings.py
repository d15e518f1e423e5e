"""The ``[ota]`` section of the agent's config: where releases come from and how they are trusted and tried."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from agent.schema import Section


class OtaSection(Section):
    enabled: bool = Field(False, description="Check for model releases and install them.")
    manifest_url: str | None = Field(
        None,
        description="HTTPS URL of the release's manifest.json (made by 'edge-agent release sign', served by any "
        "static HTTPS host); the release's files are fetched from beside it.",
    )
    keys: list[str] = Field(
        default_factory=list,
        description="Public keys releases must be signed with: paths of PEM files ('edge-agent release keygen' "
        "writes them), or the base64 of a raw 32-byte Ed25519 key.",
    )
    threshold: int = Field(1, ge=1, description="Signatures from distinct listed keys a manifest needs.")
    interval_s: float = Field(
        3600.0, ge=0, description="Seconds between manifest checks (conditional GET); 0: only on an MQTT push."
    )
    fleet_topic: str | None = Field(
        None,
        pattern=r"^[^#+\s]+$",
        description="An extra topic (e.g. 'edge/fleet/ota') whose messages trigger a check, besides "
        "<prefix>/<device_id>/ota.",
    )
    ca_file: Path | None = Field(None, description="CA bundle (PEM) to verify the server with; default: the system's.")
    client_cert: Path | None = Field(None, description="Client certificate (PEM) for servers that require mTLS.")
    client_key: Path | None = Field(None, description="The client certificate's private key (PEM).")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Network timeout of one HTTP request.")
    max_manifest_bytes: int = Field(
        256 * 1024, ge=1024, le=16 * 1024 * 1024, description="Larger manifests are refused."
    )
    latency_factor: float = Field(
        2.0,
        gt=1,
        description="Canary: the new model's median latency on the reference input may be at most this times the "
        "current model's, or the current's plus 2 ms if that is more (unless the release sets its own budget).",
    )
    watch_s: float = Field(
        30.0, ge=0, description="After the switch, how long live health (errors, NaN outputs, latency) is watched."
    )
    watch_latency_factor: float = Field(
        3.0, gt=1, description="During the watch, a p99 latency above this times the old model's rolls back."
    )

    @field_validator("manifest_url")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        if url is not None and not url.lower().startswith("https://"):
            raise ValueError("must be an https:// URL: releases are only fetched over verified TLS")
        return url

    @model_validator(mode="after")
    def _complete(self) -> OtaSection:
        if self.enabled and (self.manifest_url is None or not self.keys):
            raise ValueError("with enabled = true, set manifest_url and at least one public key in keys")
        if self.enabled and self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} needs at least that many keys; {len(self.keys)} listed")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("set client_cert and client_key together")
        return self
