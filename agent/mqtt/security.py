"""TLS and credentials of a broker connection, shared by the agent's link and the MQTT input source.

``BrokerTls`` holds the fields (and their checks) that ``[mqtt]`` and an MQTT input's own broker share;
``BrokerSecurity`` adds ``password_file`` for the inputs. ``load_security`` turns such settings into what a
paho client needs, loading every file first so that a bad path is one ConfigError at start (and in
``edge-agent config check``), never a failure at the first connection attempt. Relative paths are resolved
against the config file's folder when the config is loaded (``SECURITY_FILES``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from pydantic import Field, model_validator

from agent.errors import ConfigError
from agent.schema import Section

# the fields that name files: the config resolves them against its own folder, as every path in it
SECURITY_FILES = ("ca_file", "client_cert", "client_key", "password_file")


class BrokerTls(Section):
    """TLS and credentials of a broker connection, with their checks: the fields of ``[mqtt]`` and of an MQTT
    input that connects to a broker of its own."""

    tls: bool = Field(False, description="Connect over TLS; the broker's certificate is always verified.")
    ca_file: Path | None = Field(
        None, description="With tls: CA bundle (PEM) to verify the broker; default the system's."
    )
    client_cert: Path | None = Field(None, description="With tls: client certificate (PEM) for brokers requiring one.")
    client_key: Path | None = Field(None, description="With tls: the client certificate's private key (PEM).")
    username: str | None = Field(None, description="Broker user name, if the broker requires one.")
    # never written out by model_dump (the `config` command)
    password: str | None = Field(
        None,
        exclude=True,
        description="Broker password (prefer the environment override, or an MQTT input's password_file).",
    )

    @model_validator(mode="after")
    def _tls_consistent(self) -> BrokerTls:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("set client_cert and client_key together")
        if not self.tls and (self.ca_file or self.client_cert):
            raise ValueError("ca_file, client_cert and client_key need tls = true")
        return self


class BrokerSecurity(BrokerTls):
    """TLS and credentials for an MQTT input's own broker: the same meaning and checks as in ``[mqtt]``, and
    a password file."""

    password_file: Path | None = Field(
        None, description="A file holding the broker password (one line), instead of password."
    )

    @model_validator(mode="after")
    def _secure_consistent(self) -> BrokerSecurity:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.username is None and (self.password is not None or self.password_file is not None):
            raise ValueError("a password needs a username")
        return self


class Secured(Protocol):
    """What ``load_security`` reads: ``[mqtt]`` (MqttSection) and ``BrokerSecurity``, both ``BrokerTls``."""

    @property
    def tls(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def client_cert(self) -> Path | None: ...
    @property
    def client_key(self) -> Path | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...


@dataclass(frozen=True)
class Security:
    """Credentials and TLS, loaded and checked, ready for any number of paho clients."""

    username: str | None = None
    password: str | None = None
    context: ssl.SSLContext | None = None

    def apply(self, client: mqtt.Client) -> None:
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.context is not None:
            client.tls_set_context(self.context)  # verification on; never tls_insecure_set


def load_security(cfg: Secured, where: str, password_file: Path | None = None) -> Security:
    """``cfg``'s TLS context and credentials (``password_file`` read instead of ``cfg.password`` when given).

    ``where`` names the settings in errors (``mqtt``, ``mqtt input sensors/#``). Raises ConfigError, one line.
    """
    password = cfg.password if password_file is None else read_password(password_file, where)
    context = tls_context(cfg, where) if cfg.tls else None
    return Security(cfg.username, password, context)


def tls_context(cfg: Secured, where: str) -> ssl.SSLContext:
    """A client context that verifies the broker against ``ca_file`` (or the system's CAs), with the client
    certificate if one is set."""
    try:
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    except (OSError, ssl.SSLError) as exc:  # a missing file, or one without a PEM certificate
        raise ConfigError(
            f"{where}: cannot load the CA bundle ca_file = {cfg.ca_file}: {_reason(exc)}; give a PEM file of CA "
            "certificates"
        ) from None
    if cfg.client_cert is not None:
        try:
            context.load_cert_chain(cfg.client_cert, cfg.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}: cannot load the client certificate client_cert = {cfg.client_cert} (client_key = "
                f"{cfg.client_key}): {_reason(exc)}; give PEM files, unencrypted, a matching pair"
            ) from None
    return context


def read_password(path: Path, where: str) -> str:
    """The password in ``path``: its first line, so that ``echo secret > file`` works."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: password_file {path} does not exist; create it or fix the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: password_file {path} cannot be read: {_reason(exc)}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{where}: password_file {path} is empty; write the password on its first line")
    return lines[0]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror  # "No such file or directory", without the errno and path repeated
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
