"""The signed release manifest: its payload model, Ed25519 keys, signing and verification.

``manifest.json`` is an envelope ``{"payload": <base64>, "signatures": [{"keyid", "sig"}]}``. Signatures
cover the exact payload bytes and are checked before the payload is parsed, so a hostile manifest never
reaches the JSON or pydantic parsers unless a configured key signed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from agent.errors import OtaError
from agent.schema import NAME_PATTERN

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024
MAX_RELEASE_BYTES = 8 * 1024**3
MAX_FILES = 64
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_SUFFIXES = (".onnx", ".tflite")

REASONS = ("too-large", "malformed", "unknown-key", "bad-signature", "invalid", "expired", "downgrade", "wrong-model")


class ManifestRejected(OtaError):
    """A manifest the agent must not act on; ``reason`` is one of ``REASONS``, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0, le=MAX_RELEASE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Reference(BaseModel):
    """A reference input and its expected output: the agent runs the new model on it before switching."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    file: str
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)
    latency_ms: float | None = Field(None, gt=0)


class Manifest(BaseModel):
    """The signed payload: which model, which version, which files (with sizes and hashes), until when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["edge-agent-release"] = "edge-agent-release"
    spec: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    created: AwareDatetime
    expires: AwareDatetime
    model: str
    variants: list[str] = Field(default_factory=list)
    files: dict[str, FileEntry] = Field(min_length=1, max_length=MAX_FILES)
    labels: str | None = None
    preprocess: dict[str, Any] | None = None
    postprocess: dict[str, Any] | None = None
    reference: Reference | None = None
    notes: str = Field("", max_length=4096)

    @field_validator("created", "expires")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        for file_name in self.files:
            problem = file_name_problem(file_name)
            if problem:
                raise ValueError(f"file {file_name!r}: {problem}")
        named = {"model": [self.model], "variants": self.variants}
        if self.labels is not None:
            named["labels"] = [self.labels]
        if self.reference is not None:
            named["reference.file"] = [self.reference.file]
        for field_name, names in named.items():
            for file_name in names:
                if file_name not in self.files:
                    raise ValueError(f"{field_name} {file_name!r} is not listed in files")
        for file_name in [self.model, *self.variants]:
            if not file_name.lower().endswith(MODEL_SUFFIXES):
                raise ValueError(f"model file {file_name!r} must end in {' or '.join(MODEL_SUFFIXES)}")
        if len(set(self.variants)) != len(self.variants) or self.model in self.variants:
            raise ValueError("variants must be distinct files other than the model")
        total = sum(entry.size for entry in self.files.values())
        if total > MAX_RELEASE_BYTES:
            raise ValueError(f"files add up to {total} bytes, more than the limit of {MAX_RELEASE_BYTES}")
        if self.expires <= self.created:
            raise ValueError("expires must be later than created")
        return self

    @field_serializer("created", "expires")
    def _utc(self, value: datetime) -> str:
        return _iso(value)

    def payload_bytes(self) -> bytes:
        """The canonical JSON that is signed (and that the agent parses back into an equal Manifest)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1).encode()


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file of a release (it lands as a plain file in one folder), or None."""
    if not re.match(FILE_NAME_PATTERN, name):
        return "must be a plain file name (letters, digits, '.', '_', '-'; not starting with '.', '_' or '-')"
    if ".." in name:
        return "must not contain '..'"
    # compared case-insensitively: on a case-insensitive file system "Manifest.json" would replace the manifest
    if name.lower() == MANIFEST_NAME:
        return f"{MANIFEST_NAME} is the manifest itself"
    return None


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path, name: str = "release") -> tuple[Path, Path]:
    """Write ``<name>.key`` (PEM PKCS8, mode 0600) and ``<name>.pub`` (PEM SubjectPublicKeyInfo)."""
    if not re.match(NAME_PATTERN, name):
        raise OtaError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise OtaError(f"{path} already exists; refusing to overwrite a key (choose another --name or folder)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public_pem, 0o644)
    except FileExistsError as exc:  # appeared since the check above
        raise OtaError(f"{exc.filename} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise OtaError(f"cannot write the key pair to {out_dir}: {exc.strerror or exc}") from exc
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never replace an existing key; the mode is set at creation, so the secret is never readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # creation mode is masked by the umask; make it exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (as ``generate_keypair`` writes it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OtaError(f"cannot read the signing key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise OtaError(f"{path}: the key is password-protected; give an unencrypted PEM key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OtaError(f"{path}: not a PEM private key (create one with 'edge-agent release keygen')") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise OtaError(f"{path}: not an Ed25519 key (create one with 'edge-agent release keygen')")
    return key


def load_public_key(path_or_text: Path | str) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file path, PEM text, or base64 of the 32 raw bytes."""
    if isinstance(path_or_text, str) and "-----BEGIN" in path_or_text:
        return _public_from_pem(path_or_text.encode(), "the PEM text")
    path = Path(path_or_text)
    if isinstance(path_or_text, Path) or path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OtaError(f"cannot read the public key {path}: {exc.strerror or exc}") from exc
        return _public_from_pem(data, str(path))
    try:
        raw = base64.b64decode(path_or_text.strip(), validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        shown = path_or_text if len(path_or_text) <= 80 else path_or_text[:77] + "..."
        raise OtaError(
            f"public key {shown!r}: no such file, and not PEM text or base64 of a raw 32-byte Ed25519 key"
        ) from exc


def _public_from_pem(data: bytes, where: str) -> Ed25519PublicKey:
    if b"PRIVATE KEY" in data:
        raise OtaError(f"{where} holds a private key; give the public key (.pub) instead")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OtaError(f"{where}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise OtaError(f"{where}: not an Ed25519 public key")
    return key


def sign(manifest: Manifest, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """The envelope bytes (``manifest.json``): the payload and one signature per distinct key."""
    if not keys:
        raise OtaError("signing needs at least one private key")
    payload = manifest.payload_bytes()
    signatures: dict[str, str] = {}
    for key in keys:
        keyid = key_id(key.public_key())
        signatures.setdefault(keyid, base64.b64encode(key.sign(payload)).decode())
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid, "sig": sig} for keyid, sig in signatures.items()],
    }
    return (json.dumps(envelope, indent=1) + "\n").encode()


def decode_envelope(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(payload bytes, [(keyid, signature bytes)]) of an envelope; nothing is verified or parsed beyond that.

    Raises ManifestRejected("malformed").
    """
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestRejected("malformed", f"manifest is not JSON: {exc}") from exc
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), str):
        raise ManifestRejected("malformed", "manifest is not an envelope: expected an object with a 'payload' string")
    entries = envelope.get("signatures")
    if not isinstance(entries, list):
        raise ManifestRejected("malformed", "manifest has no 'signatures' list")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except binascii.Error as exc:
        raise ManifestRejected("malformed", f"manifest payload is not base64: {exc}") from exc
    signatures: list[tuple[str, bytes]] = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("keyid"), str) and isinstance(entry.get("sig"), str)):
            raise ManifestRejected("malformed", f"manifest signature {i} needs 'keyid' and 'sig' strings")
        try:
            signatures.append((entry["keyid"], base64.b64decode(entry["sig"], validate=True)))
        except binascii.Error as exc:
            raise ManifestRejected("malformed", f"manifest signature {i} is not base64: {exc}") from exc
    return payload, signatures


def verify_manifest(
    data: bytes,
    keys: Sequence[Ed25519PublicKey],
    *,
    installed: int | None = None,
    now: datetime | None = None,
    threshold: int = 1,
    max_bytes: int = MAX_MANIFEST_BYTES,
    name: str | None = None,
) -> Manifest:
    """The manifest in ``data`` if it may be acted on; otherwise ManifestRejected with a reason.

    Checks, in order: size, envelope, at least ``threshold`` valid signatures by distinct configured keys
    (signatures by other keys are ignored), the payload, the model name, expiry, and that the version is
    newer than ``installed``.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if len(data) > max_bytes:
        raise ManifestRejected("too-large", f"manifest is {len(data)} bytes, more than the limit of {max_bytes}")
    payload, signatures = decode_envelope(data)

    configured = {key_id(key): key for key in keys}
    known = [(keyid, sig) for keyid, sig in signatures if keyid in configured]
    if not known:
        # key ids come from the untrusted file: shown shortened and defanged, a few at most
        seen = ", ".join(sorted({re.sub(r"[^0-9A-Za-z]", "?", keyid[:16]) for keyid, _ in signatures})[:5]) or "none"
        raise ManifestRejected(
            "unknown-key",
            f"manifest is signed by none of the configured keys (signed by: {seen}; "
            f"configured: {', '.join(sorted(configured)) or 'none'})",
        )
    valid: set[str] = set()
    invalid: set[str] = set()
    for keyid, sig in known:
        try:
            configured[keyid].verify(sig, payload)
        except InvalidSignature:
            invalid.add(keyid)
            continue
        valid.add(keyid)
    if len(valid) < threshold:
        if invalid - valid:
            raise ManifestRejected(
                "bad-signature",
                f"manifest signature by key {', '.join(sorted(invalid - valid))} does not match its payload "
                "(tampered or corrupted)",
            )
        # every known signature is good, there are just too few: the missing ones are unknown to us
        raise ManifestRejected(
            "unknown-key",
            f"manifest has valid signatures by {len(valid)} configured key(s); {threshold} are required",
        )
    if invalid - valid:
        log.warning("manifest: ignoring an invalid signature by key %s", ", ".join(sorted(invalid - valid)))

    try:
        manifest = Manifest.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        raise ManifestRejected("invalid", f"manifest payload is invalid: {_summary(exc)}") from exc

    if name is not None and manifest.name != name:
        raise ManifestRejected("wrong-model", f"manifest is for model {manifest.name!r}, expected {name!r}")
    now = now or datetime.now(UTC)
    if manifest.expires <= now:
        raise ManifestRejected(
            "expired", f"manifest of {manifest.name} version {manifest.version} expired at {_iso(manifest.expires)}"
        )
    if installed is not None and manifest.version <= installed:
        raise ManifestRejected(
            "downgrade",
            f"manifest offers {manifest.name} version {manifest.version}, not newer than installed version {installed}",
        )
    return manifest


def _summary(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line: 'loc: message; ...'."""
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(part) for part in error["loc"])
        parts.append(f"{loc}: {error['msg']}" if loc else str(error["msg"]))
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return " ".join("; ".join(parts).split())  # one line, whatever the messages hold


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
