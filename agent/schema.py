"""The base of every configuration section, shared by ``agent.config`` and the sections that live beside
their feature (``agent.ota.settings``) without importing the whole config module."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe as one MQTT topic level and as a file name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
