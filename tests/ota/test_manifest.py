"""The signed manifest: every way verify_manifest refuses one, with real Ed25519 keys, and key handling."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import OtaError
from agent.ota.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestRejected,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    verify_manifest,
)

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
SHA = "ab" * 32
KEY_A = Ed25519PrivateKey.generate()
KEY_B = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


def payload_dict(**overrides: Any) -> dict[str, Any]:
    """A valid payload as the contract draws it; overrides replace top-level fields."""
    payload: dict[str, Any] = {
        "type": "edge-agent-release",
        "spec": 1,
        "name": "digits",
        "version": 3,
        "created": "2026-11-20T15:00:00Z",
        "expires": "2026-12-20T15:00:00Z",
        "model": "model.onnx",
        "variants": ["model.tflite"],
        "files": {
            "model.onnx": {"size": 1234, "sha256": SHA},
            "model.tflite": {"size": 999, "sha256": SHA},
            "labels.txt": {"size": 20, "sha256": SHA},
            "reference.npz": {"size": 846, "sha256": SHA},
        },
        "labels": "labels.txt",
        "preprocess": {"resize": [28, 28]},
        "postprocess": None,
        "reference": {"file": "reference.npz", "atol": 1e-4, "rtol": 1e-3, "latency_ms": None},
        "notes": "",
    }
    payload.update(overrides)
    return payload


def envelope(payload: bytes, keys: list[Ed25519PrivateKey]) -> dict[str, Any]:
    """An envelope built here, independently of agent.ota.manifest.sign: it is the format both sides agree on."""
    return {
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": hex_id(key.public_key()), "sig": base64.b64encode(key.sign(payload)).decode()} for key in keys
        ],
    }


def hex_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed(payload: dict[str, Any] | bytes, keys: list[Ed25519PrivateKey] | None = None) -> bytes:
    data = payload if isinstance(payload, bytes) else json.dumps(payload, sort_keys=True, indent=1).encode()
    return json.dumps(envelope(data, keys if keys is not None else [KEY_A])).encode()


def rejected(data: bytes, reason: str, **kwargs: Any) -> ManifestRejected:
    kwargs.setdefault("now", NOW)
    with pytest.raises(ManifestRejected) as info:
        verify_manifest(data, kwargs.pop("keys", [KEY_A.public_key()]), **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# -- the happy path -------------------------------------------------------------------------------------------------


def test_a_signed_manifest_verifies_into_the_signed_fields() -> None:
    manifest = verify_manifest(signed(payload_dict()), [KEY_A.public_key()], now=NOW, installed=2, name="digits")
    assert (manifest.name, manifest.version, manifest.model, manifest.variants) == (
        "digits",
        3,
        "model.onnx",
        ["model.tflite"],
    )
    assert manifest.files["model.onnx"].size == 1234
    assert manifest.expires == datetime(2026, 12, 20, 15, tzinfo=UTC)
    assert manifest.reference is not None and manifest.reference.file == "reference.npz"
    assert manifest.preprocess == {"resize": [28, 28]}


def test_sign_writes_the_envelope_of_the_canonical_payload() -> None:
    manifest = Manifest.model_validate_json(json.dumps(payload_dict()))
    data = sign(manifest, [KEY_A, KEY_B, KEY_A])  # the same key twice signs once
    env = json.loads(data)
    payload = base64.b64decode(env["payload"])
    assert payload == manifest.payload_bytes()
    assert json.loads(payload) == payload_dict()  # every field, datetimes as ...Z
    assert payload == json.dumps(json.loads(payload), sort_keys=True, indent=1).encode()
    assert [s["keyid"] for s in env["signatures"]] == [hex_id(KEY_A.public_key()), hex_id(KEY_B.public_key())]
    for entry, key in zip(env["signatures"], [KEY_A, KEY_B], strict=True):
        key.public_key().verify(base64.b64decode(entry["sig"]), payload)  # raises if wrong
    assert verify_manifest(data, [KEY_B.public_key()], now=NOW) == manifest


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    assert key_id(KEY_A.public_key()) == hex_id(KEY_A.public_key())
    assert len(key_id(KEY_A.public_key())) == 16 and key_id(KEY_A.public_key()) != key_id(KEY_B.public_key())


def test_sign_needs_a_key() -> None:
    with pytest.raises(OtaError, match="at least one"):
        sign(Manifest.model_validate_json(json.dumps(payload_dict())), [])


def test_times_in_another_zone_are_kept_in_utc() -> None:
    manifest = verify_manifest(signed(payload_dict(created="2026-11-20T17:00:00+02:00")), [KEY_A.public_key()], now=NOW)
    assert manifest.created == datetime(2026, 11, 20, 15, tzinfo=UTC)
    assert json.loads(manifest.payload_bytes())["created"] == "2026-11-20T15:00:00Z"


# -- size and envelope ----------------------------------------------------------------------------------------------


def test_too_large_is_refused_before_anything_is_read() -> None:
    data = signed(payload_dict())
    assert verify_manifest(data, [KEY_A.public_key()], now=NOW, max_bytes=len(data))
    rejected(data, "too-large", max_bytes=len(data) - 1)
    padded = data + b" " * (MAX_MANIFEST_BYTES - len(data) + 1)  # still valid JSON, just too long
    rejected(padded, "too-large")


GOOD_PAYLOAD = base64.b64encode(b"{}").decode()
GOOD_SIG = base64.b64encode(b"\0" * 64).decode()


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe garbage",
        b"[]",
        json.dumps({"signatures": []}).encode(),
        json.dumps({"payload": 123, "signatures": []}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": {"keyid": "x"}}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": [{"sig": GOOD_SIG}]}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": [{"keyid": "a" * 16}]}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": [{"keyid": 7, "sig": GOOD_SIG}]}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": ["abc"]}).encode(),
        json.dumps({"payload": "not base64!", "signatures": []}).encode(),
        json.dumps({"payload": GOOD_PAYLOAD, "signatures": [{"keyid": "a" * 16, "sig": "%%%"}]}).encode(),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "no-payload",
        "payload-not-string",
        "no-signatures",
        "signatures-not-list",
        "no-keyid",
        "no-sig",
        "keyid-not-string",
        "signature-not-object",
        "payload-bad-base64",
        "sig-bad-base64",
    ],
)
def test_malformed_envelopes(data: bytes) -> None:
    rejected(data, "malformed")


def test_a_real_signature_in_bad_base64_is_malformed() -> None:
    env = json.loads(signed(payload_dict()))
    env["signatures"][0]["sig"] = env["signatures"][0]["sig"][:-2] + "@@"
    rejected(json.dumps(env).encode(), "malformed")


# -- signatures -----------------------------------------------------------------------------------------------------


def test_signed_only_by_an_unknown_key() -> None:
    error = rejected(signed(payload_dict(), [STRANGER]), "unknown-key")
    assert hex_id(STRANGER.public_key()) in str(error) and hex_id(KEY_A.public_key()) in str(error)


def test_no_signatures_at_all() -> None:
    rejected(signed(payload_dict(), []), "unknown-key")


def test_no_keys_configured() -> None:
    rejected(signed(payload_dict()), "unknown-key", keys=[])


def test_signatures_by_unknown_keys_are_ignored() -> None:
    data = signed(payload_dict(), [STRANGER, KEY_A])
    assert verify_manifest(data, [KEY_A.public_key()], now=NOW).version == 3


def test_payload_tampered_after_signing() -> None:
    env = json.loads(signed(payload_dict()))
    payload = base64.b64decode(env["payload"]).replace(b'"version": 3', b'"version": 4')
    assert b'"version": 4' in payload
    env["payload"] = base64.b64encode(payload).decode()
    error = rejected(json.dumps(env).encode(), "bad-signature")
    assert hex_id(KEY_A.public_key()) in str(error)


def test_signature_bytes_flipped() -> None:
    env = json.loads(signed(payload_dict()))
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    rejected(json.dumps(env).encode(), "bad-signature")


def test_signature_of_the_wrong_length() -> None:
    env = json.loads(signed(payload_dict()))
    env["signatures"][0]["sig"] = base64.b64encode(base64.b64decode(env["signatures"][0]["sig"])[:63]).decode()
    rejected(json.dumps(env).encode(), "bad-signature")


def test_another_keys_signature_under_a_known_key_id() -> None:
    env = json.loads(signed(payload_dict(), [STRANGER]))
    env["signatures"][0]["keyid"] = hex_id(KEY_A.public_key())
    rejected(json.dumps(env).encode(), "bad-signature")


def test_signatures_are_checked_before_the_payload_is_parsed() -> None:
    # a payload that would be invalid, under a signature that does not match it: the signature decides
    env = json.loads(signed(payload_dict()))
    env["payload"] = base64.b64encode(b"{not json at all").decode()
    rejected(json.dumps(env).encode(), "bad-signature")
    rejected(signed(b"{not json at all", [STRANGER]), "unknown-key")


def test_threshold_of_two_refuses_one_valid_signature() -> None:
    keys = [KEY_A.public_key(), KEY_B.public_key()]
    data = signed(payload_dict(), [KEY_A])
    assert verify_manifest(data, keys, now=NOW, threshold=1).version == 3
    error = rejected(data, "unknown-key", keys=keys, threshold=2)
    assert "2 are required" in str(error)
    assert verify_manifest(signed(payload_dict(), [KEY_A, KEY_B]), keys, now=NOW, threshold=2).version == 3


def test_threshold_counts_distinct_keys() -> None:
    env = envelope(json.dumps(payload_dict(), sort_keys=True, indent=1).encode(), [KEY_A])
    env["signatures"] *= 2  # the same key's signature twice
    rejected(json.dumps(env).encode(), "unknown-key", keys=[KEY_A.public_key(), KEY_B.public_key()], threshold=2)


def test_threshold_with_one_good_and_one_bad_signature() -> None:
    keys = [KEY_A.public_key(), KEY_B.public_key()]
    env = json.loads(signed(payload_dict(), [KEY_A, KEY_B]))
    sig = bytearray(base64.b64decode(env["signatures"][1]["sig"]))
    sig[0] ^= 0xFF
    env["signatures"][1]["sig"] = base64.b64encode(bytes(sig)).decode()
    data = json.dumps(env).encode()
    rejected(data, "bad-signature", keys=keys, threshold=2)
    assert verify_manifest(data, keys, now=NOW, threshold=1).version == 3  # one valid signature suffices


def test_threshold_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify_manifest(signed(payload_dict()), [KEY_A.public_key()], now=NOW, threshold=0)


# -- the payload ----------------------------------------------------------------------------------------------------


def with_file(name: str) -> dict[str, Any]:
    return payload_dict(files={**payload_dict()["files"], name: {"size": 1, "sha256": SHA}})


INVALID_PAYLOADS: dict[str, Callable[[], dict[str, Any] | bytes]] = {
    "parent-dir": lambda: with_file("../x"),
    "absolute-path": lambda: with_file("/etc/passwd"),
    "manifest-itself": lambda: with_file("manifest.json"),
    "manifest-other-case": lambda: with_file("Manifest.JSON"),
    "hidden": lambda: with_file(".hidden"),
    "dots-inside": lambda: with_file("a..b"),
    "subfolder": lambda: with_file("sub/model.onnx"),
    "backslash": lambda: with_file("..\\x"),
    "empty-name": lambda: with_file(""),
    "model-not-in-files": lambda: payload_dict(model="other.onnx"),
    "variant-not-in-files": lambda: payload_dict(variants=["other.tflite"]),
    "labels-not-in-files": lambda: payload_dict(labels="other.txt"),
    "reference-not-in-files": lambda: payload_dict(reference={"file": "other.npz"}),
    "model-not-a-model": lambda: payload_dict(model="labels.txt"),
    "variant-is-model": lambda: payload_dict(variants=["model.onnx"]),
    "negative-size": lambda: payload_dict(files={**payload_dict()["files"], "model.onnx": {"size": -1, "sha256": SHA}}),
    "size-over-8gib": lambda: payload_dict(
        files={**payload_dict()["files"], "model.onnx": {"size": 8 * 1024**3 + 1, "sha256": SHA}}
    ),
    "sum-over-8gib": lambda: payload_dict(
        files={
            **payload_dict()["files"],
            "model.onnx": {"size": 5 * 1024**3, "sha256": SHA},
            "model.tflite": {"size": 5 * 1024**3, "sha256": SHA},
        }
    ),
    "sha256-short": lambda: payload_dict(files={**payload_dict()["files"], "model.onnx": {"size": 1, "sha256": "ab"}}),
    "sha256-upper": lambda: payload_dict(
        files={**payload_dict()["files"], "model.onnx": {"size": 1, "sha256": SHA.upper()}}
    ),
    "sha256-not-hex": lambda: payload_dict(
        files={**payload_dict()["files"], "model.onnx": {"size": 1, "sha256": "zz" * 32}}
    ),
    "file-extra-field": lambda: payload_dict(
        files={**payload_dict()["files"], "model.onnx": {"size": 1, "sha256": SHA, "url": "http://x"}}
    ),
    "too-many-files": lambda: payload_dict(
        files={**payload_dict()["files"], **{f"extra{i}.bin": {"size": 1, "sha256": SHA} for i in range(61)}}
    ),
    "no-files": lambda: payload_dict(files={}),
    "wrong-type": lambda: payload_dict(type="something-else"),
    "future-spec": lambda: payload_dict(spec=2),
    "unknown-field": lambda: payload_dict(install_script="rm -rf /"),
    "missing-field": lambda: {k: v for k, v in payload_dict().items() if k != "files"},
    "version-zero": lambda: payload_dict(version=0),
    "version-string": lambda: payload_dict(version="4"),
    "version-float": lambda: payload_dict(version=4.0),
    "bad-name": lambda: payload_dict(name="../digits"),
    "naive-time": lambda: payload_dict(expires="2026-12-20T15:00:00"),
    "expires-before-created": lambda: payload_dict(expires="2026-11-19T15:00:00Z"),
    "negative-atol": lambda: payload_dict(reference={"file": "reference.npz", "atol": -1}),
    "zero-latency": lambda: payload_dict(reference={"file": "reference.npz", "latency_ms": 0}),
    "notes-too-long": lambda: payload_dict(notes="x" * 4097),
    "preprocess-not-object": lambda: payload_dict(preprocess=[1, 2]),
    "payload-not-json": lambda: b"{this is signed, but not JSON",
    "payload-not-utf8": lambda: b'{"name": "\xff"}',
    "payload-array": lambda: json.dumps([payload_dict()]).encode(),
    "nan-tolerance": lambda: json.dumps(
        payload_dict(reference={"file": "reference.npz", "atol": float("nan")})
    ).encode(),
}


@pytest.mark.parametrize("make", INVALID_PAYLOADS.values(), ids=INVALID_PAYLOADS.keys())
def test_invalid_payloads_are_refused_even_when_signed(make: Callable[[], dict[str, Any] | bytes]) -> None:
    rejected(signed(make()), "invalid")


def test_exactly_64_files_are_allowed() -> None:
    payload = payload_dict(
        files={**payload_dict()["files"], **{f"extra{i}.bin": {"size": 1, "sha256": SHA} for i in range(60)}}
    )
    assert len(verify_manifest(signed(payload), [KEY_A.public_key()], now=NOW).files) == 64


def test_invalid_payload_message_names_the_field() -> None:
    error = rejected(signed(with_file("../x")), "invalid")
    assert "'../x'" in str(error)


# -- name, expiry, version ------------------------------------------------------------------------------------------


def test_wrong_model_name() -> None:
    error = rejected(signed(payload_dict()), "wrong-model", name="faces")
    assert "'digits'" in str(error) and "'faces'" in str(error)


def test_expired() -> None:
    data = signed(payload_dict())
    expires = datetime(2026, 12, 20, 15, tzinfo=UTC)
    assert verify_manifest(data, [KEY_A.public_key()], now=expires - timedelta(seconds=1))
    rejected(data, "expired", now=expires)
    rejected(data, "expired", now=expires + timedelta(days=1))


def test_expiry_defaults_to_the_clock() -> None:
    past = payload_dict(created="2020-01-01T00:00:00Z", expires="2020-02-01T00:00:00Z")
    rejected(signed(past), "expired", now=None)
    future = payload_dict(created="2020-01-01T00:00:00Z", expires="2100-01-01T00:00:00Z")
    assert verify_manifest(signed(future), [KEY_A.public_key()]).version == 3


@pytest.mark.parametrize("installed", [3, 4, 100])
def test_downgrade_and_same_version_are_refused(installed: int) -> None:
    error = rejected(signed(payload_dict()), "downgrade", installed=installed)
    assert str(installed) in str(error)


def test_newer_version_is_accepted() -> None:
    assert verify_manifest(signed(payload_dict()), [KEY_A.public_key()], now=NOW, installed=2).version == 3


# -- keys -----------------------------------------------------------------------------------------------------------


def test_generate_keypair_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys", "ci")
    assert (private.name, public.name) == ("ci.key", "ci.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    key = load_private_key(private)
    assert key_id(key.public_key()) == key_id(load_public_key(public))


def test_generate_keypair_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would leave the owner without write permission: the mode is set, not masked
    try:
        private, _ = generate_keypair(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    before = (private.read_bytes(), public.read_bytes())
    with pytest.raises(OtaError, match="already exists"):
        generate_keypair(tmp_path)
    assert (private.read_bytes(), public.read_bytes()) == before


def test_generate_keypair_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "release.pub").write_text("someone else's key")
    with pytest.raises(OtaError, match=r"release\.pub already exists"):
        generate_keypair(tmp_path)
    assert not (tmp_path / "release.key").exists()


def test_generate_keypair_refuses_a_path_as_name(tmp_path: Path) -> None:
    with pytest.raises(OtaError):
        generate_keypair(tmp_path, "../escape")
    assert not (tmp_path.parent / "escape.key").exists()


def test_load_public_key_from_a_pem_file_pem_text_and_raw_base64(tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path)
    expected = key_id(load_private_key(tmp_path / "release.key").public_key())
    raw = load_public_key(public).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for source in (public, str(public), public.read_text(), base64.b64encode(raw).decode()):
        assert key_id(load_public_key(source)) == expected, source


def not_ed25519_pem(private: bool) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_load_public_key_refusals(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path)
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(not_ed25519_pem(private=False))
    cases: list[Path | str] = [
        tmp_path / "missing.pub",
        str(tmp_path / "missing.pub"),
        private,  # a private key where the public one belongs
        ec_pub,
        "not a key",
        base64.b64encode(b"\1" * 31).decode(),
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
    ]
    for source in cases:
        with pytest.raises(OtaError) as info:
            load_public_key(source)
        assert "\n" not in str(info.value), source


def test_load_private_key_refusals(tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(not_ed25519_pem(private=True))
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        KEY_A.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    for path, needle in [
        (tmp_path / "missing.key", "cannot read"),
        (public, "not a PEM private key"),
        (ec_key, "not an Ed25519 key"),
        (encrypted, "password-protected"),
    ]:
        with pytest.raises(OtaError, match=needle) as info:
            load_private_key(path)
        assert "\n" not in str(info.value)
