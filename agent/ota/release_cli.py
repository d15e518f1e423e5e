"""``edge-agent release``: make signing keys, sign a release folder, verify one before uploading it."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.errors import AgentError, OtaError

EXIT_USAGE = 2


def add_release_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``release`` with its actions ``keygen``, ``sign`` and ``verify`` to a command's subparsers."""
    release: argparse.ArgumentParser = subparsers.add_parser(
        "release",
        help="publish model updates: make keys, sign a release folder, verify it",
        description="A release is a folder for any static HTTPS host: the model, optional variants, labels and a "
        "reference input/output, and a manifest.json signed with Ed25519 that lists every file's size and sha256.",
    )
    # the same parser class as the parent, so usage errors keep its exit status and wording
    actions = release.add_subparsers(dest="release_command", metavar="ACTION", parser_class=type(release))
    actions.required = True

    keygen = actions.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing releases",
        description="Write DIR/NAME.key (private, mode 0600: keep it off the devices) and DIR/NAME.pub (give it "
        "to the agents). Existing files are never overwritten.",
    )
    keygen.add_argument("dir", type=Path, metavar="DIR")
    keygen.add_argument("--name", default="release", help="file name stem (default: %(default)s)")
    keygen.add_argument("--json", action="store_true", help="print JSON")

    sign = actions.add_parser(
        "sign",
        help="hash the files of a release folder and write its signed manifest.json",
        description="Describe the files in DIR (the model and any variants, labels, reference), compute a reference "
        "output unless told otherwise, and sign it all into DIR/manifest.json. File arguments name files in DIR.",
    )
    sign.add_argument("dir", type=Path, metavar="DIR")
    sign.add_argument(
        "--key", action="append", required=True, type=Path, metavar="KEY", help="private key file (repeatable)"
    )
    sign.add_argument("--name", required=True, help="model name the agents know it by")
    sign.add_argument("--version", required=True, type=int, help="release number; agents only move to higher ones")
    sign.add_argument("--model", required=True, metavar="FILE", help="the model (.onnx or .tflite)")
    sign.add_argument(
        "--variant", action="append", default=[], metavar="FILE", help="the same model in another format (repeatable)"
    )
    sign.add_argument("--labels", metavar="FILE", help="class labels, one a line")
    sign.add_argument("--preprocess", type=Path, metavar="FILE.json", help="preprocessing settings (a JSON object)")
    sign.add_argument("--postprocess", type=Path, metavar="FILE.json", help="postprocessing settings (a JSON object)")
    sign.add_argument(
        "--reference",
        default="auto",
        metavar="auto|none|FILE.npz",
        help="auto: run the model on the CPU and save its input and output (default); none: no reference; or a "
        "FILE.npz with 'input:<name>' and 'output:<name>' arrays",
    )
    sign.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance against the reference output")
    sign.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance against the reference output")
    sign.add_argument("--latency-ms", type=float, metavar="MS", help="latency the canary run must stay under")
    sign.add_argument(
        "--expires-days", type=float, default=30.0, metavar="DAYS", help="valid for this long (default: 30)"
    )
    sign.add_argument("--notes", default="", help="free text shown with the release")
    sign.add_argument("--json", action="store_true", help="print JSON")

    verify = actions.add_parser(
        "verify",
        help="check a release folder as an agent would: signatures, expiry, every file's size and sha256",
        description="Exit 0 if DIR/manifest.json is signed by the given key(s), has not expired and every file "
        "matches it; otherwise exit 2 with the reason.",
    )
    verify.add_argument("dir", type=Path, metavar="DIR")
    verify.add_argument(
        "--pub",
        action="append",
        required=True,
        metavar="KEY",
        help="public key: a .pub file, PEM text or base64 of the raw 32 bytes (repeatable)",
    )
    verify.add_argument(
        "--threshold", type=int, default=1, metavar="N", help="valid signatures required (default: %(default)s)"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    return release


def run_release(args: argparse.Namespace) -> int:
    """Run one ``release`` action; user errors are one line on stderr and exit status 2."""
    try:
        return _ACTIONS[args.release_command](args)
    except AgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _keygen(args: argparse.Namespace) -> int:
    from agent.ota.manifest import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.dir, args.name)
    keyid = key_id(load_private_key(private).public_key())
    if args.json:
        print(json.dumps({"private_key": str(private), "public_key": str(public), "keyid": keyid}, indent=2))
    else:
        print(f"private key: {private} (keep it secret and off the devices)")
        print(f"public key:  {public} (key id {keyid}; configure it on the agents)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from agent.ota.manifest import key_id, load_private_key
    from agent.ota.release import build_release, write_release

    if args.expires_days <= 0:
        raise OtaError("--expires-days must be positive")
    folder: Path = args.dir
    keys = [load_private_key(path) for path in args.key]
    reference: str | None
    if args.reference == "auto":
        reference = "auto"
    elif args.reference == "none":
        reference = None
    else:
        reference = _in_folder(folder, args.reference, "--reference")
    manifest = build_release(
        folder,
        name=args.name,
        version=args.version,
        model=_in_folder(folder, args.model, "--model"),
        variants=[_in_folder(folder, v, "--variant") for v in args.variant],
        labels=_in_folder(folder, args.labels, "--labels") if args.labels else None,
        preprocess=_json_object(args.preprocess, "--preprocess") if args.preprocess else None,
        postprocess=_json_object(args.postprocess, "--postprocess") if args.postprocess else None,
        reference=reference,
        atol=args.atol,
        rtol=args.rtol,
        latency_ms=args.latency_ms,
        expires_in=timedelta(days=args.expires_days),
        notes=args.notes,
    )
    path = write_release(folder, manifest, keys)
    keyids = sorted({key_id(key.public_key()) for key in keys})
    if args.json:
        out = {"manifest": str(path), "keyids": keyids, "payload": manifest.model_dump(mode="json")}
        print(json.dumps(out, indent=2))
    else:
        expires = manifest.model_dump(mode="json")["expires"]
        print(
            f"signed {manifest.name} version {manifest.version}: {len(manifest.files)} file(s), "
            f"expires {expires}, key(s) {', '.join(keyids)}"
        )
        print(f"wrote {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from agent.ota.manifest import load_public_key
    from agent.ota.release import check_release

    if args.threshold < 1:
        raise OtaError("--threshold must be at least 1")
    keys = [load_public_key(text) for text in args.pub]
    manifest = check_release(args.dir, keys, threshold=args.threshold)
    payload = manifest.model_dump(mode="json")
    if args.json:
        print(json.dumps({"folder": str(args.dir), "valid": True, "payload": payload}, indent=2))
    else:
        print(
            f"{args.dir}: valid release of {manifest.name} version {manifest.version}, "
            f"{len(manifest.files)} file(s) intact, expires {payload['expires']}"
        )
    return 0


def _in_folder(folder: Path, text: str, option: str) -> str:
    """The name of a file in the release folder, given as a bare name or as a path to it."""
    path = Path(text)
    if len(path.parts) == 1:
        return text
    if path.resolve().parent == folder.resolve():
        return path.name
    raise OtaError(f"{option} {text}: release files must be in {folder}; copy it there and give its name")


def _json_object(path: Path, option: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise OtaError(f"{option} {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise OtaError(f"{option} {path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OtaError(f"{option} {path}: expected a JSON object")
    return data


_ACTIONS = {"keygen": _keygen, "sign": _sign, "verify": _verify}
