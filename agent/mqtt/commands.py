"""Remote commands: ``<base>/cmd/<name>`` with a JSON object payload, answered on ``<base>/cmd/<name>/reply``
(or on the MQTT 5 response topic the request named, its correlation data echoed).

``parse`` checks a request in a fixed order — size, then (if configured) authentication, then UTF-8 JSON object,
then a known command name, then the command's argument model — so a hostile payload is refused by the cheapest
check that can refuse it, and an unauthenticated one is never parsed. Arguments are validated strictly (no
coercion of "5" to 5, unknown keys refused). ``Dispatcher.handle`` turns every outcome, a handler that raises
included, into a reply: nothing a sender can put on the wire crashes the agent's loop.

Signed commands (``CommandAuth``, ``sign_command``, ``load_secret``) live in ``agent.mqtt.command_auth`` and are
re-exported here.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import AgentError
from agent.mqtt.command_auth import (
    CODES,
    MIN_SECRET_BYTES,
    CommandAuth,
    CommandError,
    json_object,
    load_secret,
    sign_command,
)
from agent.schema import NAME_PATTERN

__all__ = [
    "CODES",
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "MIN_SECRET_BYTES",
    "CommandAuth",
    "CommandError",
    "Dispatcher",
    "Handler",
    "OtaCheckArgs",
    "PipelineRateArgs",
    "ReloadArgs",
    "ReplanArgs",
    "Request",
    "RestartPipelineArgs",
    "StatusArgs",
    "load_secret",
    "parse",
    "reply",
    "sign_command",
]

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
_MAX_MESSAGE = 300  # error messages in replies are cut here: one readable line, never an echo of a huge input
_MAX_RESPONSE_TOPIC = 1024


class _Args(BaseModel):
    # strict: "5" is not a rate and true is not a number; a remote command gets no type coercion
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    id: str | None = Field(
        None, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$", description="Echoed in the reply to correlate it."
    )


class StatusArgs(_Args):
    pass


class OtaCheckArgs(_Args):
    pass


class ReloadArgs(_Args):
    pass


class ReplanArgs(_Args):
    pipeline: str | None = Field(None, pattern=NAME_PATTERN, description="The pipeline to replan; none: all.")


class PipelineRateArgs(_Args):
    pipeline: str = Field(pattern=NAME_PATTERN, description="The pipeline whose input rate to set.")
    rate_hz: float = Field(ge=0, le=1000, description="Frames per second to take from the source; 0: pause.")


class RestartPipelineArgs(_Args):
    pipeline: str = Field(pattern=NAME_PATTERN, description="The pipeline to restart.")


COMMANDS: dict[str, type[BaseModel]] = {
    "status": StatusArgs,
    "ota-check": OtaCheckArgs,
    "reload": ReloadArgs,
    "replan": ReplanArgs,
    "pipeline-rate": PipelineRateArgs,
    "restart-pipeline": RestartPipelineArgs,
}


@dataclass(frozen=True)
class Request:
    name: str
    args: BaseModel
    id: str | None
    response_topic: str | None
    correlation: bytes | None


def parse(
    name: str,
    payload: bytes,
    *,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    auth: CommandAuth | None = None,
    now: float | None = None,
) -> Request:
    """Check one incoming command; raises ``CommandError`` with the code of the first check that fails."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("too-large", f"command payload is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")
    if auth is not None:
        payload = auth.open(payload, time.time() if now is None else now, name=name)
    obj = json_object(payload, "command payload")
    raw_id = obj.get("id")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 128 else None
    model = COMMANDS.get(name)
    if model is None:
        known = ", ".join(sorted(COMMANDS))
        raise CommandError("unknown-command", f"unknown command {name!r}; known: {known}", request_id=request_id)
    try:
        args = model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(payload)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        )
        raise CommandError("invalid", f"invalid arguments for {name!r}: {problems}", request_id=request_id) from None
    return Request(name, args, getattr(args, "id", None), response_topic, correlation)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def reply(
    request_or_name: Request | str,
    *,
    ok: bool,
    result: dict[str, Any] | None = None,
    error: CommandError | None = None,
) -> bytes:
    """The reply's JSON bytes: ``{"id", "command", "ok": true, "result"}`` or ``{"id", "command", "ok": false,
    "error": {"code", "message"}}``, plus ``"correlation"`` (base64) when the request carried correlation data.
    Raises TypeError/ValueError for a result that is not JSON (NaN included)."""
    if isinstance(request_or_name, Request):
        name, request_id, correlation = request_or_name.name, request_or_name.id, request_or_name.correlation
    else:
        name, request_id, correlation = request_or_name, error.request_id if error else None, None
    body: dict[str, Any] = {"id": request_id, "command": name, "ok": ok}
    if correlation is not None:
        body["correlation"] = base64.b64encode(correlation).decode("ascii")
    if ok:
        body["result"] = result if result is not None else {}
    else:
        code, message = (error.code, str(error)) if error is not None else ("failed", "command failed")
        body["error"] = {"code": code, "message": _one_line(message)}
    # ensure_ascii: a command name or id with odd characters (even lone surrogates) still serialises
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("ascii")


Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def _usable_response_topic(topic: str | None) -> str | None:
    if topic is None:
        return None
    if not topic or any(c in topic for c in "+#\x00") or len(topic.encode("utf-8", "replace")) > _MAX_RESPONSE_TOPIC:
        log.warning("ignoring unusable MQTT response topic %r; replying on the default topic", topic[:100])
        return None
    return topic


class Dispatcher:
    """Parses commands and runs the async handler registered for each; ``handle`` never raises."""

    def __init__(self, auth: CommandAuth | None = None) -> None:
        self.auth = auth
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        if name not in COMMANDS:
            raise ValueError(f"no argument model for command {name!r}; add it to COMMANDS")
        self._handlers[name] = handler

    @property
    def names(self) -> list[str]:
        """The commands this device answers (those with a handler)."""
        return sorted(self._handlers)

    async def handle(
        self, name: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> tuple[str | None, bytes]:
        """(the response topic to use, or None for ``<base>/cmd/<name>/reply``; the reply's bytes).
        Cancellation propagates; every other failure becomes an error reply, logged once."""
        try:
            request = parse(name, payload, response_topic=response_topic, correlation=correlation, auth=self.auth)
        except CommandError as exc:
            log.warning("command %r refused (%s): %s", name[:100], exc.code, exc)
            # an unauthenticated sender does not get to choose where the device publishes
            topic = None if exc.code == "unauthorised" else _usable_response_topic(response_topic)
            return topic, reply(name, ok=False, error=exc)
        topic = _usable_response_topic(response_topic)
        handler = self._handlers.get(name)
        if handler is None:
            error = CommandError("unknown-command", f"command {name!r} is not enabled on this device")
            log.warning("command %r refused (%s): %s", name, error.code, error)
            return topic, reply(request, ok=False, error=error)
        try:
            result = await handler(request)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not a dict")
            return topic, reply(request, ok=True, result=result)
        except CommandError as exc:
            log.warning("command %r failed (%s): %s", name, exc.code, exc)
            return topic, reply(request, ok=False, error=exc)
        except AgentError as exc:
            log.warning("command %r failed: %s", name, exc)
            return topic, reply(request, ok=False, error=CommandError("failed", str(exc)))
        except Exception as exc:
            log.exception("command %r failed unexpectedly", name)
            error = CommandError("failed", f"command failed: {type(exc).__name__}: {exc}")
            return topic, reply(request, ok=False, error=error)
