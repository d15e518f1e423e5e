"""Remote commands: parsing, replies, the dispatcher, signed commands, the secret file, and fuzzing of whatever a
sender can put on the wire (it must always come back as a JSON error reply, never as an exception)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.errors import AgentError, ConfigError
from agent.mqtt.commands import (
    CODES,
    COMMANDS,
    MAX_COMMAND_BYTES,
    CommandAuth,
    CommandError,
    Dispatcher,
    PipelineRateArgs,
    ReplanArgs,
    Request,
    load_secret,
    parse,
    reply,
    sign_command,
)

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0
FUZZ = settings(max_examples=150, deadline=None, database=None)

VALID: dict[str, dict[str, Any]] = {
    "status": {"id": "s-1"},
    "ota-check": {},
    "reload": {"id": "r"},
    "replan": {"pipeline": "faces"},
    "pipeline-rate": {"id": "7", "pipeline": "digits", "rate_hz": 2.5},
    "restart-pipeline": {"pipeline": "cam_0.left"},
}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class Recorder:
    """Handlers for every command that record the requests they got and echo the arguments."""

    def __init__(self) -> None:
        self.calls: list[Request] = []

    async def __call__(self, request: Request) -> dict[str, Any]:
        self.calls.append(request)
        return {"args": request.args.model_dump()}


def dispatcher(auth: CommandAuth | None = None) -> tuple[Dispatcher, Recorder]:
    d, rec = Dispatcher(auth), Recorder()
    for name in COMMANDS:
        d.register(name, rec)
    return d, rec


def handle(
    d: Dispatcher, name: str, payload: bytes, response_topic: str | None = None, correlation: bytes | None = None
) -> tuple[str | None, dict[str, Any]]:
    topic, raw = asyncio.run(d.handle(name, payload, response_topic, correlation))
    body = json.loads(raw)
    assert isinstance(body, dict)
    return topic, body


def assert_error(body: dict[str, Any], code: str) -> None:
    assert body["ok"] is False and "result" not in body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message and "\n" not in message and len(message) <= 300


# --------------------------------------------------------------------------- valid commands


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_commands_valid_payload_reaches_its_handler(name: str) -> None:
    assert set(VALID) == set(COMMANDS)
    d, rec = dispatcher()
    topic, body = handle(d, name, dumps(VALID[name]))
    assert topic is None
    assert body["ok"] is True and body["command"] == name and "error" not in body
    assert body["id"] == VALID[name].get("id")
    [request] = rec.calls
    assert request.name == name and isinstance(request.args, COMMANDS[name])
    assert request.id == VALID[name].get("id")
    assert {k: v for k, v in body["result"]["args"].items() if v is not None} == VALID[name]


def test_parse_gives_typed_arguments_and_defaults() -> None:
    req = parse("pipeline-rate", b'{"pipeline": "cam", "rate_hz": 0}')
    assert isinstance(req.args, PipelineRateArgs) and req.args.rate_hz == 0.0 and req.id is None
    req = parse("replan", b"{}")
    assert isinstance(req.args, ReplanArgs) and req.args.pipeline is None


def test_payload_of_exactly_the_limit_is_accepted_one_more_byte_is_too_large() -> None:
    head = b'{"id":"a"}'
    exact = head + b" " * (MAX_COMMAND_BYTES - len(head))
    assert parse("status", exact).id == "a"
    with pytest.raises(CommandError) as err:
        parse("status", exact + b" ")
    assert err.value.code == "too-large"


# --------------------------------------------------------------------------- refused commands


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("status", b"{", "malformed"),
        ("status", b"", "malformed"),
        ("status", b"\xff\xfe{}", "malformed"),
        ("status", '{"id": "x"}'.encode("utf-16"), "malformed"),  # json.loads alone would accept UTF-16
        ("status", b"[]", "malformed"),
        ("status", b'"status"', "malformed"),
        ("status", b"null", "malformed"),
        ("status", b"42", "malformed"),
        ("status", b'{"id": "a", "id": "b"}', "malformed"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": NaN}', "malformed"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": 1e400}', "malformed"),
        ("status", b"[" * 10_000 + b"]" * 10_000, "too-large"),
        ("status", b"[" * 8000 + b"]" * 8000, "malformed"),  # deeper than the JSON parser's recursion limit
        ("status", b'{"id": "x", "extra": 1}', "invalid"),
        ("status", b'{"id": 5}', "invalid"),
        ("status", b'{"id": "' + b"x" * 129 + b'"}', "invalid"),
        ("status", b'{"id": "a\\nb"}', "invalid"),
        ("status", b'{"id": "\\ud800"}', "invalid"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": "5"}', "invalid"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": true}', "invalid"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": -1}', "invalid"),
        ("pipeline-rate", b'{"pipeline": "p", "rate_hz": 1000.5}', "invalid"),
        ("pipeline-rate", b'{"pipeline": "p"}', "invalid"),
        ("restart-pipeline", b"{}", "invalid"),
        ("restart-pipeline", b'{"pipeline": "../etc"}', "invalid"),
        ("restart-pipeline", b'{"pipeline": "a/b"}', "invalid"),
        ("replan", b'{"pipeline": ["a"]}', "invalid"),
        ("reboot", b"{}", "unknown-command"),
        ("", b"{}", "unknown-command"),
        ("reboot", b"[]", "malformed"),  # the payload is checked before the name
        ("reboot", b"x" * (MAX_COMMAND_BYTES + 1), "too-large"),
    ],
)
def test_bad_commands_get_error_replies_with_the_right_code(name: str, payload: bytes, code: str) -> None:
    with pytest.raises(CommandError) as err:
        parse(name, payload)
    assert err.value.code == code
    d, rec = dispatcher()
    _, body = handle(d, name, payload)
    assert_error(body, code)
    assert body["command"] == name
    assert rec.calls == []


def test_invalid_arguments_name_the_field_and_echo_the_id() -> None:
    d, _ = dispatcher()
    _, body = handle(d, "pipeline-rate", b'{"id": "req-9", "pipeline": "cam", "rate_hz": 5000}')
    assert_error(body, "invalid")
    assert body["id"] == "req-9"
    assert "rate_hz" in body["error"]["message"] and "1000" in body["error"]["message"]
    _, body = handle(d, "nope", b'{"id": "req-10"}')
    assert_error(body, "unknown-command")
    assert body["id"] == "req-10" and "restart-pipeline" in body["error"]["message"]


def test_a_known_command_without_a_handler_is_not_enabled() -> None:
    d = Dispatcher()
    d.register("status", Recorder())
    assert d.names == ["status"]
    _, body = handle(d, "ota-check", b'{"id": "o"}')
    assert_error(body, "unknown-command")
    assert body["id"] == "o" and "not enabled" in body["error"]["message"]
    with pytest.raises(ValueError, match="COMMANDS"):
        d.register("format-disk", Recorder())


# --------------------------------------------------------------------------- handlers that fail


def test_handler_failures_become_error_replies(caplog: pytest.LogCaptureFixture) -> None:
    async def crash(request: Request) -> dict[str, Any]:
        raise RuntimeError("boom\nsecond line")

    async def refuse(request: Request) -> dict[str, Any]:
        raise CommandError("invalid", "no pipeline named 'cam'")

    async def agent_error(request: Request) -> dict[str, Any]:
        raise AgentError("the model store is read-only")

    async def not_a_dict(request: Request) -> dict[str, Any]:
        return [1, 2]  # type: ignore[return-value]

    async def not_json(request: Request) -> dict[str, Any]:
        return {"latency": float("nan"), "when": object()}

    cases = [(crash, "failed", "RuntimeError: boom second line"), (refuse, "invalid", "no pipeline named 'cam'")]
    cases += [(agent_error, "failed", "read-only"), (not_a_dict, "failed", "list"), (not_json, "failed", "failed")]
    for handler, code, words in cases:
        d = Dispatcher()
        d.register("status", handler)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agent.mqtt.commands"):
            _, body = handle(d, "status", b'{"id": "h"}')
        assert_error(body, code)
        assert body["id"] == "h" and words in body["error"]["message"]
        assert len([r for r in caplog.records if r.name == "agent.mqtt.commands"]) == 1  # logged once


def test_cancellation_is_not_turned_into_a_reply() -> None:
    async def cancelled(request: Request) -> dict[str, Any]:
        raise asyncio.CancelledError

    d = Dispatcher()
    d.register("status", cancelled)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(d.handle("status", b"{}", None, None))


# --------------------------------------------------------------------------- response topic, correlation, reply()


def test_response_topic_and_correlation_data_are_used_and_echoed() -> None:
    d, rec = dispatcher()
    topic, body = handle(d, "status", b'{"id": "c1"}', "client/7/replies", b"\x00\xffcorr")
    assert topic == "client/7/replies"
    assert body["id"] == "c1" and base64.b64decode(body["correlation"]) == b"\x00\xffcorr"
    assert rec.calls[0].correlation == b"\x00\xffcorr" and rec.calls[0].response_topic == "client/7/replies"
    topic, body = handle(d, "status", b"[]", "client/7/replies", b"c")
    assert topic == "client/7/replies"  # a refused (but not unauthorised) request still answers where asked
    assert_error(body, "malformed")
    for bad in ["a/+/b", "a/#", "", "a\x00b", "x" * 2000]:
        topic, body = handle(d, "status", b"{}", bad, None)
        assert topic is None and body["ok"] is True
    topic, body = handle(d, "status", b"{}", None, None)
    assert topic is None and "correlation" not in body


def test_reply_shapes() -> None:
    req = parse("status", b'{"id": "r1"}', correlation=b"k")
    assert json.loads(reply(req, ok=True, result={"uptime_s": 3})) == {
        "id": "r1",
        "command": "status",
        "ok": True,
        "correlation": "aw==",
        "result": {"uptime_s": 3},
    }
    assert json.loads(reply("status", ok=True)) == {"id": None, "command": "status", "ok": True, "result": {}}
    error = CommandError("failed", "line one\nline two " + "x" * 1000, request_id="e")
    body = json.loads(reply("odd\ud800name", ok=False, error=error))
    assert body["id"] == "e" and body["command"] == "odd\ud800name"
    assert_error(body, "failed")
    assert body["error"]["message"].startswith("line one line two x") and body["error"]["message"].endswith("...")
    with pytest.raises(ValueError, match="code"):
        CommandError("oops", "not a code")


# --------------------------------------------------------------------------- signed commands


def signed(name: str, args: dict[str, Any], *, ts: float = NOW, nonce: str = "n-1", secret: bytes = SECRET) -> bytes:
    return sign_command(secret, args, now=ts, nonce=nonce, name=name)


def test_a_validly_signed_command_runs() -> None:
    d, rec = dispatcher(CommandAuth(SECRET))
    payload = sign_command(SECRET, {"id": "a1", "pipeline": "cam", "rate_hz": 3}, name="pipeline-rate")
    topic, body = handle(d, "pipeline-rate", payload, "client/r", b"x")
    assert body["ok"] is True and body["id"] == "a1" and topic == "client/r"
    assert isinstance(rec.calls[0].args, PipelineRateArgs) and rec.calls[0].args.rate_hz == 3.0
    assert parse("status", signed("status", {}, nonce="n-2"), auth=CommandAuth(SECRET), now=NOW + 299).id is None


def tamper(payload: bytes) -> bytes:
    outer = json.loads(payload)
    inner = json.loads(base64.b64decode(outer["payload"]))
    inner["rate_hz"] = 999
    outer["payload"] = base64.b64encode(json.dumps(inner).encode()).decode()
    return json.dumps(outer).encode()


GOOD = signed("pipeline-rate", {"pipeline": "cam", "rate_hz": 1})


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"pipeline": "cam", "rate_hz": 1}', id="unsigned"),
        pytest.param(b"\xff", id="not-json"),
        pytest.param(tamper(GOOD), id="tampered"),
        pytest.param(signed("pipeline-rate", {"pipeline": "cam", "rate_hz": 1}, secret=b"x" * 32), id="wrong-secret"),
        pytest.param(signed("pipeline-rate", {"pipeline": "cam", "rate_hz": 1}, ts=NOW - 301), id="expired"),
        pytest.param(signed("pipeline-rate", {"pipeline": "cam", "rate_hz": 1}, ts=NOW + 301), id="future"),
        pytest.param(signed("restart-pipeline", {"pipeline": "cam", "rate_hz": 1}), id="other-command"),
        pytest.param(GOOD.replace(b'"sig": "', b'"sig": "!'), id="sig-not-base64"),
        pytest.param(json.dumps({**json.loads(GOOD), "id": "x"}).encode(), id="extra-outer-key"),
        pytest.param(json.dumps({"payload": json.loads(GOOD)["payload"]}).encode(), id="no-sig"),
    ],
)
def test_bad_signatures_are_unauthorised_and_do_not_choose_the_reply_topic(payload: bytes) -> None:
    d, rec = dispatcher(CommandAuth(SECRET))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("agent.mqtt.commands.time.time", lambda: NOW)
        topic, body = handle(d, "pipeline-rate", payload, "attacker/chosen", b"c")
    assert_error(body, "unauthorised")
    assert topic is None and body["id"] is None and rec.calls == []


def test_signed_payload_without_ts_or_nonce_is_unauthorised() -> None:
    auth = CommandAuth(SECRET)
    for inner in [{"cmd": "status", "nonce": "n"}, {"cmd": "status", "ts": NOW}, {"cmd": "status", "ts": True}]:
        data = json.dumps(inner).encode()
        sig = hmac.new(SECRET, data, hashlib.sha256).digest()
        outer = {"payload": base64.b64encode(data).decode(), "sig": base64.b64encode(sig).decode()}
        with pytest.raises(CommandError) as err:
            auth.open(json.dumps(outer).encode(), NOW, name="status")
        assert err.value.code == "unauthorised"


def test_a_replayed_nonce_is_refused() -> None:
    auth = CommandAuth(SECRET)
    payload = signed("status", {"id": "once"}, nonce="abc")
    assert parse("status", payload, auth=auth, now=NOW).id == "once"
    with pytest.raises(CommandError, match="replayed") as err:
        parse("status", payload, auth=auth, now=NOW + 10)
    assert err.value.code == "unauthorised"
    assert parse("status", signed("status", {}, nonce="abd"), auth=auth, now=NOW + 10).id is None
    # a bad signature does not burn a nonce
    assert parse("status", signed("status", {}, nonce="zzz"), auth=auth, now=NOW).id is None
    with pytest.raises(CommandError):
        parse("status", signed("status", {}, nonce="yyy", secret=b"y" * 32), auth=auth, now=NOW)
    assert parse("status", signed("status", {}, nonce="yyy"), auth=auth, now=NOW).id is None


def test_a_full_nonce_store_forgets_the_oldest_but_never_allows_its_replay() -> None:
    auth = CommandAuth(SECRET, window_s=300, max_nonces=2)
    first = signed("status", {}, ts=NOW, nonce="1")
    for i, payload in enumerate([first, signed("status", {}, ts=NOW + 1, nonce="2")]):
        parse("status", payload, auth=auth, now=NOW + i)
    parse("status", signed("status", {}, ts=NOW + 2, nonce="3"), auth=auth, now=NOW + 2)  # evicts nonce "1"
    with pytest.raises(CommandError) as err:
        parse("status", first, auth=auth, now=NOW + 3)
    assert err.value.code == "unauthorised"
    parse("status", signed("status", {}, ts=NOW + 3, nonce="4"), auth=auth, now=NOW + 3)  # fresh ones still pass
    assert auth.remembered == 2
    # once the window has passed, expired nonces are forgotten: memory holds only what can still be replayed
    parse("status", signed("status", {}, ts=NOW + 400, nonce="5"), auth=auth, now=NOW + 400)
    assert auth.remembered == 1
    parse("status", signed("status", {}, ts=NOW + 399, nonce="6"), auth=auth, now=NOW + 400)
    assert auth.remembered == 2


def test_sign_command_needs_the_command_name_and_auth_a_real_secret() -> None:
    with pytest.raises(ValueError, match="cmd"):
        sign_command(SECRET, {"id": "x"})
    assert json.loads(sign_command(SECRET, {"cmd": "status"})).keys() == {"payload", "sig"}
    with pytest.raises(ConfigError):
        CommandAuth(b"short")


# --------------------------------------------------------------------------- the secret file


def test_load_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secret"
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_secret(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    for content in [b"", b"  \n", b"0123456789abcde\n"]:
        path.write_bytes(content)
        with pytest.raises(ConfigError, match="at least 16"):
            load_secret(path)
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert load_secret(path) == b"0123456789abcdef0123456789abcdef"
    assert caplog.records == []
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_secret(path)
    assert "chmod 600" in caplog.text
    with pytest.raises(ConfigError, match="cannot be read"):
        load_secret(tmp_path)
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(ConfigError, match="cannot be read"):
            load_secret(path)


def test_a_loaded_secret_verifies_commands_signed_with_the_file_contents(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("c0ffee" * 8 + "\n")
    auth = CommandAuth(load_secret(path))
    assert parse("status", sign_command(("c0ffee" * 8).encode(), {}, name="status"), auth=auth).id is None


# --------------------------------------------------------------------------- fuzzing

known_names = st.sampled_from(sorted(COMMANDS))
names = st.one_of(known_names, known_names, st.sampled_from(["reboot", "", "status/reply"]), st.text(max_size=20))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["cam", "a/b", "", "x" * 129]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["id", "pipeline", "rate_hz"]) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# objects shaped like each command's arguments, so that valid ones and near misses are as common as junk
good_fields: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12),
    "pipeline": st.sampled_from(["cam", "cam_0.left", "Digits-2"]),
    "rate_hz": st.floats(min_value=0, max_value=1000) | st.integers(0, 1000),
}
bad_fields = (
    st.sampled_from(["a/b", "", "x" * 129, "a\nb", "5", True])
    | st.floats(min_value=1000.5, allow_infinity=False)
    | json_values
)


@st.composite
def commands(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(known_names if draw(st.integers(0, 3)) else names)
    if draw(st.integers(0, 3)) == 0:
        return name, draw(json_values)
    model = COMMANDS.get(name)
    fields = list(model.model_fields) if model is not None else ["id", "pipeline"]
    value: dict[str, Any] = {}
    for field in fields:
        if draw(st.booleans()):
            value[field] = draw(bad_fields if draw(st.integers(0, 4)) == 0 else good_fields.get(field, bad_fields))
    if draw(st.integers(0, 5)) == 0:
        value[draw(st.sampled_from(["rate_hz", "extra", "cmd"]))] = draw(good_fields["rate_hz"] | bad_fields)
    return name, value


@FUZZ
@given(name=names, payload=st.binary(max_size=300), topic=st.none() | st.text(max_size=30))
def test_fuzz_arbitrary_bytes_always_get_a_json_reply(name: str, payload: bytes, topic: str | None) -> None:
    d, rec = dispatcher()
    _, body = handle(d, name, payload, topic, None)
    assert body["command"] == name
    assert body["ok"] is (len(rec.calls) == 1)  # ok only when the command really reached its handler
    if not body["ok"]:
        assert body["error"]["code"] in CODES
        assert_error(body, body["error"]["code"])


@FUZZ
@given(name=names, payload=st.binary(max_size=300), topic=st.none() | st.text(max_size=30))
def test_fuzz_arbitrary_bytes_with_auth_are_always_unauthorised(name: str, payload: bytes, topic: str | None) -> None:
    d, rec = dispatcher(CommandAuth(SECRET))
    reply_topic, body = handle(d, name, payload, topic, b"c")
    assert_error(body, "unauthorised")
    assert reply_topic is None and rec.calls == []


def expected_code(name: str, value: Any) -> str | None:
    """What parse should say about a JSON value, from the contract: None for a valid command."""
    if not isinstance(value, dict):
        return "malformed"
    if name not in COMMANDS:
        return "unknown-command"
    try:
        COMMANDS[name].model_validate(value)
    except ValidationError:
        return "invalid"
    return None


@FUZZ
@given(command=commands(), signed_=st.booleans())
def test_fuzz_arbitrary_json_values_get_the_right_reply(command: tuple[str, Any], signed_: bool) -> None:
    name, value = command
    auth = CommandAuth(SECRET) if signed_ else None
    d, rec = dispatcher(auth)
    payload = dumps(value)
    if signed_:
        # the signed inner object carries cmd/ts/nonce beside the arguments; a non-object cannot be signed
        if not isinstance(value, dict) or {"cmd", "ts", "nonce"} & value.keys():
            return
        payload = sign_command(SECRET, value, name=name)
    _, body = handle(d, name, payload)
    code = expected_code(name, value)
    if code is None:
        assert body["ok"] is True and len(rec.calls) == 1
        assert body["id"] == value.get("id")
    else:
        assert_error(body, code)
        assert rec.calls == []
