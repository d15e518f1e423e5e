"""The wire layer of remote commands: the strict JSON reader, ``CommandError``, and optional authentication.

Authentication is for deployments whose broker ACLs are not enough (anyone who may publish to the cmd topics could
otherwise restart pipelines): HMAC-SHA256 with a per-device shared secret read from a file (``load_secret``). A signed
request is ``{"payload": base64(inner JSON), "sig": base64(HMAC-SHA256(secret, inner JSON bytes))}`` where the inner
JSON object holds the command's arguments plus ``"cmd"`` (the command name, so a signed request cannot be replayed on
another command's topic), ``"ts"`` (unix seconds; accepted within ±window_s of the device's clock) and ``"nonce"``
(a string never reused; each is remembered for the window, so a replay is refused). ``sign_command`` builds one.
``agent.mqtt.commands`` re-exports everything here; import from there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any

from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
CODES = frozenset({"malformed", "too-large", "unknown-command", "invalid", "unauthorised", "failed"})


class CommandError(AgentError):
    """A command that cannot be run; ``code`` is one of ``CODES`` and goes into the error reply."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown command error code {code!r}")
        super().__init__(message)
        self.code = code
        self.request_id = request_id  # the request's "id" when it was readable, so even error replies correlate


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _reject_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8 only (json.loads would guess UTF-16/32), no NaN/Infinity, no duplicate keys, an object
    at the top; anything else is ``CommandError("malformed")``."""
    try:
        value = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_finite,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CommandError("malformed", f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError("malformed", f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _refuse(why: str) -> CommandError:
    return CommandError("unauthorised", f"command refused: {why}")


_NOT_SIGNED = 'not a signed command (expected {"payload": <base64>, "sig": <base64>})'
_TOO_OLD = "too old: more signed commands arrived in the window than can be remembered"


class CommandAuth:
    """HMAC-SHA256 verification of signed commands, with a timestamp window and replay protection.
    Used from the event loop only (not thread-safe)."""

    def __init__(self, secret: bytes, window_s: float = 300.0, max_nonces: int = 10_000) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the command secret must be at least {MIN_SECRET_BYTES} bytes")
        if window_s <= 0 or max_nonces < 1:
            raise ValueError("window_s must be > 0 and max_nonces >= 1")
        self._secret = secret
        self.window_s = window_s
        self.max_nonces = max_nonces
        self._seen: set[str] = set()
        self._by_ts: list[tuple[float, str]] = []  # heap of (ts, nonce) for the nonces in _seen
        # When the store is full the oldest nonce is forgotten; from then on any ts at or below its ts is refused,
        # so a forgotten nonce can never be replayed, and a full store never locks out fresh commands.
        self._floor = -math.inf

    @property
    def remembered(self) -> int:
        """Nonces held now (for status): at most max_nonces, and only those still inside the window."""
        return len(self._seen)

    def _forget_expired(self, now: float) -> None:
        # a nonce must be remembered while its ts is still acceptable: until now > ts + window_s
        while self._by_ts and self._by_ts[0][0] + self.window_s < now:
            self._seen.discard(heapq.heappop(self._by_ts)[1])

    def open(self, payload: bytes, now: float, *, name: str | None = None) -> bytes:
        """The verified inner command (JSON bytes, without ``cmd``/``ts``/``nonce``); ``CommandError("unauthorised")``
        for a missing or bad signature, a ``cmd`` other than ``name``, a ts outside ±window_s, or a replayed nonce.
        A nonce is remembered only once the signature is good, so unsigned junk cannot fill the store."""
        try:
            outer = json_object(payload, "signed command")
        except CommandError:
            raise _refuse(_NOT_SIGNED) from None
        if set(outer) != {"payload", "sig"} or not all(isinstance(v, str) for v in outer.values()):
            raise _refuse(_NOT_SIGNED)
        try:
            inner = base64.b64decode(outer["payload"], validate=True)
            sig = base64.b64decode(outer["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise _refuse("payload or sig is not base64") from None
        if not hmac.compare_digest(sig, hmac.new(self._secret, inner, hashlib.sha256).digest()):
            raise _refuse("bad signature (wrong secret or altered payload)")
        try:
            obj = json_object(inner, "signed payload")
        except CommandError as exc:
            raise _refuse(str(exc)) from None
        cmd, ts, nonce = obj.pop("cmd", None), obj.pop("ts", None), obj.pop("nonce", None)
        if not isinstance(cmd, str) or (name is not None and cmd != name):
            raise _refuse(f"signed for command {cmd!r}, received as {name!r}")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise _refuse("signed payload has no numeric ts")
        if abs(now - ts) > self.window_s:
            raise _refuse(f"ts is {now - ts:+.0f} s from the device clock (allowed ±{self.window_s:.0f} s)")
        if not isinstance(nonce, str) or not 0 < len(nonce) <= 128:
            raise _refuse("signed payload has no nonce (a string of 1-128 characters)")
        self._forget_expired(now)
        if nonce in self._seen:
            raise _refuse("replayed (this nonce was already used)")
        if ts <= self._floor:
            raise _refuse(_TOO_OLD)
        if len(self._seen) >= self.max_nonces:
            old_ts, old_nonce = heapq.heappop(self._by_ts)
            self._seen.discard(old_nonce)
            self._floor = max(self._floor, old_ts)
            if ts <= self._floor:
                raise _refuse(_TOO_OLD)
        self._seen.add(nonce)
        heapq.heappush(self._by_ts, (float(ts), nonce))
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def sign_command(
    secret: bytes,
    command: dict[str, Any],
    now: float | None = None,
    nonce: str | None = None,
    *,
    name: str | None = None,
) -> bytes:
    """A signed command payload for ``CommandAuth``; the command's name is taken from ``name`` or from
    ``command["cmd"]``. For clients and tests."""
    inner = dict(command)
    if name is not None:
        inner["cmd"] = name
    if not isinstance(inner.get("cmd"), str):
        raise ValueError("say which command is signed: pass name=... or a 'cmd' key")
    inner["ts"] = time.time() if now is None else now
    inner["nonce"] = secrets.token_hex(16) if nonce is None else nonce
    data = json.dumps(inner, separators=(",", ":"), allow_nan=False).encode("utf-8")
    sig = hmac.new(secret, data, hashlib.sha256).digest()
    return json.dumps({"payload": base64.b64encode(data).decode(), "sig": base64.b64encode(sig).decode()}).encode()


def load_secret(path: Path) -> bytes:
    """The command secret: the file's bytes without surrounding whitespace (so ``openssl rand -hex 32 > file``
    works; clients must strip the same way)."""
    try:
        secret = path.read_bytes().strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"mqtt.command_secret_file {path} does not exist; create it, e.g. 'openssl rand -hex 32 > {path}'"
        ) from None
    except OSError as exc:
        raise ConfigError(f"mqtt.command_secret_file {path} cannot be read: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"mqtt.command_secret_file {path} holds {len(secret)} bytes; a secret needs at least {MIN_SECRET_BYTES} "
            f"(e.g. 'openssl rand -hex 32 > {path}')"
        )
    if mode & 0o077:
        log.warning("command secret %s is readable by other users; chmod 600 it", path)
    return secret
