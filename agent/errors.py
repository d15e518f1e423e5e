"""The agent's exception tree.

Every error a user can cause or meet is one of these, and its message says what to fix::

    AgentError
    ├── ConfigError       malformed TOML, unknown key, bad value, a path that does not exist
    ├── ModelError        a model file that is missing, unreadable or that no backend can run
    ├── SourceError       sensor input that cannot be opened or yields nothing usable
    ├── PublishError      the broker refused a message or never acknowledged it
    └── OtaError          (model updates; see agent/ota)

Backends live in ``accelerators/`` and never import the agent, so they raise
``accelerators.errors.AcceleratorError``; the agent wraps those with ``raise ModelError(...) from exc``
where it loads a model, and counts them where it runs one.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports to a user as one line."""


class ConfigError(AgentError):
    """The configuration (file, environment or command line) is invalid."""


class ModelError(AgentError):
    """A model cannot be loaded or run."""


class SourceError(AgentError):
    """A sensor source cannot produce input."""


class PublishError(AgentError):
    """A message could not be delivered to the broker; ``refused``: the broker answered it with a failure
    reason code (MQTT 5), as opposed to the connection being away."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class OtaError(AgentError):
    """A model update could not be applied."""
