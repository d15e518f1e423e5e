"""The publisher's side of a release: hash the files, compute a reference output, sign, check.

A release is a folder that any static HTTPS host can serve; ``build_release`` describes the files already
in it, ``write_release`` signs that description into ``manifest.json``, and ``check_release`` verifies a
folder the way an agent will before it is uploaded.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from agent.errors import AgentError, OtaError
from agent.ota.manifest import MANIFEST_NAME, FileEntry, Manifest, Reference, sign, verify_manifest
from agent.state import atomic_write

REFERENCE_NAME = "reference.npz"
_CHUNK = 1024 * 1024


def file_entry(path: Path) -> FileEntry:
    """Size and sha256 of one file, read in chunks (release files can be gigabytes)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise OtaError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return FileEntry(size=size, sha256=digest.hexdigest())


def build_release(
    folder: Path,
    *,
    name: str,
    version: int,
    model: str,
    variants: Sequence[str] = (),
    labels: str | None = None,
    preprocess: Mapping[str, Any] | None = None,
    postprocess: Mapping[str, Any] | None = None,
    reference: str | None = "auto",
    atol: float = 1e-4,
    rtol: float = 1e-3,
    latency_ms: float | None = None,
    expires_in: timedelta = timedelta(days=30),
    notes: str = "",
    now: datetime | None = None,
) -> Manifest:
    """The manifest of the release in ``folder``; file arguments are names of files in it.

    ``reference="auto"`` runs ``model`` on the CPU on generated inputs and writes ``reference.npz``;
    ``None`` leaves the reference out; any other value names an existing ``.npz`` in the folder.
    """
    if not folder.is_dir():
        raise OtaError(f"release folder {folder} does not exist")
    named = [model, *variants, *([labels] if labels is not None else [])]
    for file_name in named:
        _check_in_folder(folder, file_name)
    ref_file: str | None = None
    if reference == "auto":
        write_reference(folder / model, folder / REFERENCE_NAME)
        ref_file = REFERENCE_NAME
    elif reference is not None:
        _check_in_folder(folder, reference)
        load_reference(folder / reference)
        ref_file = reference
    if ref_file is not None:
        named.append(ref_file)
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    try:
        return Manifest(
            name=name,
            version=version,
            created=created,
            expires=created + expires_in,
            model=model,
            variants=list(variants),
            files={file_name: file_entry(folder / file_name) for file_name in named},
            labels=labels,
            preprocess=dict(preprocess) if preprocess is not None else None,
            postprocess=dict(postprocess) if postprocess is not None else None,
            reference=Reference(file=ref_file, atol=atol, rtol=rtol, latency_ms=latency_ms) if ref_file else None,
            notes=notes,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(part) for part in error["loc"])
        raise OtaError(f"release {name} version {version}: {loc + ': ' if loc else ''}{error['msg']}") from exc


def _check_in_folder(folder: Path, file_name: str) -> None:
    # names only: the manifest lists files beside it, and a path would not survive the trip to the host
    if Path(file_name).name != file_name:
        raise OtaError(f"{file_name!r}: give the name of a file in {folder}, not a path")
    if not (folder / file_name).is_file():
        raise OtaError(f"{folder / file_name} does not exist (release files must be in the release folder)")


def write_reference(model: Path, dest: Path, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run ``model`` once on generated inputs and save inputs and outputs to ``dest`` (np.savez)."""
    from accelerators.errors import AcceleratorError
    from accelerators.registry import select
    from agent.models.profile import profile_model
    from agent.planner.measured import model_inputs

    hint = "; give --reference FILE.npz or --reference none"
    try:
        profile = profile_model(model)
    except AgentError as exc:
        raise OtaError(f"cannot compute the reference output: {exc}{hint}") from exc
    inputs = model_inputs(profile.inputs, seed)
    try:
        backend = select(model, "auto")
        session = backend.load(model)
        try:
            outputs = session.run(inputs)
        finally:
            session.close()
    except AcceleratorError as exc:
        raise OtaError(f"cannot compute the reference output of {model.name}: {exc}{hint}") from exc
    arrays = {f"input:{k}": v for k, v in inputs.items()} | {f"output:{k}": np.asarray(v) for k, v in outputs.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stubs type **kwds like allow_pickle: bool
    try:
        atomic_write(dest, buffer.getvalue())
    except OSError as exc:
        raise OtaError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    return inputs, {k: np.asarray(v) for k, v in outputs.items()}


def load_reference(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) from a reference ``.npz`` with keys ``input:<name>`` and ``output:<name>``."""
    inputs: dict[str, np.ndarray] = {}
    outputs: dict[str, np.ndarray] = {}
    try:
        # allow_pickle=False: object arrays in a downloaded file must not execute code on load
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise OtaError(f"{path}: not an .npz archive (save the reference with numpy.savez)")
        with data:
            for key in data.files:
                kind, sep, tensor = key.partition(":")
                if not sep or not tensor or kind not in ("input", "output"):
                    raise OtaError(f"{path}: unexpected entry {key!r}; entries are 'input:<name>' or 'output:<name>'")
                (inputs if kind == "input" else outputs)[tensor] = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OtaError(f"{path}: not a readable reference .npz: {' '.join(str(exc).split())}") from exc
    if not inputs or not outputs:
        raise OtaError(f"{path}: a reference needs at least one 'input:<name>' and one 'output:<name>' entry")
    return inputs, outputs


def write_release(folder: Path, manifest: Manifest, keys: Sequence[Ed25519PrivateKey]) -> Path:
    """Sign ``manifest`` with ``keys`` into ``folder/manifest.json`` (replaced atomically)."""
    path = folder / MANIFEST_NAME
    data = sign(manifest, keys)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise OtaError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def check_release(folder: Path, public_keys: Sequence[Ed25519PublicKey], threshold: int = 1) -> Manifest:
    """Verify a release folder as an agent would: signatures, expiry, then every file's size and sha256."""
    path = folder / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OtaError(f"cannot read {path}: {exc.strerror or exc}") from exc
    manifest = verify_manifest(data, public_keys, threshold=threshold)
    problems = []
    for file_name, entry in manifest.files.items():
        file_path = folder / file_name
        if not file_path.is_file():
            problems.append(f"{file_name} is missing")
            continue
        actual = file_entry(file_path)
        if actual.size != entry.size:
            problems.append(f"{file_name} has {actual.size} bytes, the manifest says {entry.size}")
        elif actual.sha256 != entry.sha256:
            problems.append(f"{file_name} differs from the signed sha256")
    if problems:
        raise OtaError(f"release {folder} does not match its manifest: {'; '.join(problems)} (sign it again)")
    if manifest.reference is not None:
        load_reference(folder / manifest.reference.file)
    return manifest
