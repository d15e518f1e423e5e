"""The publisher's side: a real release folder from a real model, signed, checked, and the CLI around it."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import OtaError
from agent.ota.manifest import MANIFEST_NAME, Manifest, ManifestRejected, verify_manifest
from agent.ota.release import build_release, check_release, load_reference, write_release
from agent.ota.release_cli import add_release_parser, run_release
from tests.conftest import ASSETS, DIGITS_MODEL

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(DIGITS_MODEL, release / "model.onnx")
    shutil.copyfile(ASSETS / "digits" / "labels.txt", release / "labels.txt")
    return release


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(folder: Path, **kwargs: Any) -> Manifest:
    kwargs = {"name": "digits", "version": 3, "model": "model.onnx", "labels": "labels.txt", **kwargs}
    return build_release(folder, **kwargs)


# -- build_release --------------------------------------------------------------------------------------------------


def test_build_release_lists_every_file_with_its_size_and_hash(folder: Path) -> None:
    manifest = build(folder, now=NOW, expires_in=timedelta(days=7), notes="retrained", preprocess={"scale": 16})
    assert set(manifest.files) == {"model.onnx", "labels.txt", "reference.npz"}
    for file_name, entry in manifest.files.items():
        assert entry.size == (folder / file_name).stat().st_size
        assert entry.sha256 == sha256(folder / file_name)
    assert (manifest.created, manifest.expires) == (NOW, NOW + timedelta(days=7))
    assert (manifest.model, manifest.labels, manifest.notes) == ("model.onnx", "labels.txt", "retrained")
    assert manifest.preprocess == {"scale": 16}
    assert manifest.reference is not None
    assert (manifest.reference.file, manifest.reference.atol, manifest.reference.rtol) == ("reference.npz", 1e-4, 1e-3)


def test_auto_reference_holds_the_models_own_output_on_its_inputs(folder: Path) -> None:
    build(folder)
    with np.load(folder / "reference.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    assert set(arrays) == {"input:pixels", "output:probabilities"}
    pixels = arrays["input:pixels"]
    assert pixels.shape == (1, 1, 8, 8) and pixels.dtype == np.float32  # the dynamic batch pinned to 1
    assert np.std(pixels) > 0  # generated input, not zeros, so the output depends on the weights

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probabilities"], {"pixels": pixels})  # (1, 10)
    np.testing.assert_allclose(arrays["output:probabilities"], expected, rtol=1e-6, atol=1e-7)

    inputs, outputs = load_reference(folder / "reference.npz")
    assert list(inputs) == ["pixels"] and list(outputs) == ["probabilities"]
    np.testing.assert_array_equal(inputs["pixels"], pixels)
    np.testing.assert_array_equal(outputs["probabilities"], arrays["output:probabilities"])


def test_no_reference(folder: Path) -> None:
    manifest = build(folder, reference=None)
    assert manifest.reference is None and "reference.npz" not in manifest.files
    assert not (folder / "reference.npz").exists()


def test_a_given_reference_file_is_checked_and_listed(folder: Path) -> None:
    np.savez(
        folder / "mine.npz",
        **{"input:pixels": np.ones((1, 1, 8, 8), np.float32), "output:probabilities": np.ones((1, 10))},
    )
    manifest = build(folder, reference="mine.npz", atol=0.5, latency_ms=20.0)
    assert manifest.reference is not None
    assert (manifest.reference.file, manifest.reference.atol, manifest.reference.latency_ms) == ("mine.npz", 0.5, 20)
    assert manifest.files["mine.npz"].sha256 == sha256(folder / "mine.npz")
    assert not (folder / "reference.npz").exists()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": "missing.onnx"}, "does not exist"),
        ({"model": "../model.onnx"}, "not a path"),
        ({"labels": "/etc/passwd"}, "not a path"),
        ({"model": "labels.txt", "reference": None}, "must end in"),
        ({"variants": ["model.onnx"], "reference": None}, "variants"),
        ({"name": "bad name!"}, "name"),
        ({"version": 0}, "version"),
        ({"reference": "missing.npz"}, "does not exist"),
    ],
)
def test_build_release_refusals(folder: Path, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(OtaError, match=needle) as info:
        build(folder, **kwargs)
    assert "\n" not in str(info.value)


def test_auto_reference_of_a_model_that_does_not_load(folder: Path) -> None:
    (folder / "broken.onnx").write_bytes(b"this is no model")
    with pytest.raises(OtaError, match="--reference") as info:
        build(folder, model="broken.onnx")
    assert "\n" not in str(info.value)


# -- load_reference -------------------------------------------------------------------------------------------------


def test_load_reference_refuses_pickles_and_odd_files(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"input:x": np.array([{"a": 1}], dtype=object), "output:y": np.ones(2)})
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, x=np.ones(2), y=np.ones(2))
    no_output = tmp_path / "no_output.npz"
    np.savez(no_output, **{"input:x": np.ones(2)})
    npy = tmp_path / "plain.npy"
    np.save(npy, np.ones(2))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    for path, needle in [
        (pickled, "not a readable"),
        (wrong_keys, "unexpected entry"),
        (no_output, "at least one"),
        (npy, "not an .npz"),
        (garbage, "not a readable"),
        (tmp_path / "missing.npz", "not a readable"),
    ]:
        with pytest.raises(OtaError, match=needle) as info:
            load_reference(path)
        assert "\n" not in str(info.value), path


# -- write_release and check_release --------------------------------------------------------------------------------


def test_write_then_check_round_trip(folder: Path) -> None:
    manifest = build(folder)
    path = write_release(folder, manifest, [KEY])
    assert path == folder / MANIFEST_NAME
    assert verify_manifest(path.read_bytes(), [KEY.public_key()]) == manifest
    assert check_release(folder, [KEY.public_key()]) == manifest
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_release_replaces_an_older_manifest(folder: Path) -> None:
    write_release(folder, build(folder, version=3), [KEY])
    write_release(folder, build(folder, version=4), [KEY])
    assert check_release(folder, [KEY.public_key()]).version == 4


def test_check_release_detects_a_modified_file(folder: Path) -> None:
    write_release(folder, build(folder), [KEY])
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    model.write_bytes(bytes(data))
    with pytest.raises(OtaError, match=r"model\.onnx differs from the signed sha256"):
        check_release(folder, [KEY.public_key()])


def test_check_release_detects_a_file_of_another_size(folder: Path) -> None:
    write_release(folder, build(folder), [KEY])
    with (folder / "labels.txt").open("a") as fh:
        fh.write("10\n")
    with pytest.raises(OtaError, match=r"labels\.txt has \d+ bytes"):
        check_release(folder, [KEY.public_key()])


def test_check_release_detects_a_missing_file(folder: Path) -> None:
    write_release(folder, build(folder), [KEY])
    (folder / "reference.npz").unlink()
    with pytest.raises(OtaError, match=r"reference\.npz is missing"):
        check_release(folder, [KEY.public_key()])


def test_check_release_with_the_wrong_key(folder: Path) -> None:
    write_release(folder, build(folder), [KEY])
    with pytest.raises(ManifestRejected) as info:
        check_release(folder, [OTHER.public_key()])
    assert info.value.reason == "unknown-key"


def test_check_release_without_a_manifest(folder: Path) -> None:
    with pytest.raises(OtaError, match="cannot read"):
        check_release(folder, [KEY.public_key()])


# -- the CLI glue ---------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edge-agent")
    add_release_parser(root.add_subparsers(dest="command", required=True))
    return root


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(["release", *argv])
    code = run_release(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result: tuple[int, str, str], *needles: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_keygen_sign_verify(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    code, out, _ = cli(capsys, "keygen", str(keys), "--name", "publisher", "--json")
    assert code == 0
    made = json.loads(out)
    private, public = Path(made["private_key"]), Path(made["public_key"])
    assert (private, public) == (keys / "publisher.key", keys / "publisher.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600

    (tmp_path / "pre.json").write_text(json.dumps({"scale": 16}))
    code, out, _ = cli(
        capsys,
        "sign",
        str(folder),
        "--key",
        str(private),
        "--name",
        "digits",
        "--version",
        "7",
        "--model",
        str(folder / "model.onnx"),  # a path into the folder works as well as a name
        "--labels",
        "labels.txt",
        "--preprocess",
        str(tmp_path / "pre.json"),
        "--expires-days",
        "2",
        "--notes",
        "from CI",
        "--json",
    )
    assert code == 0
    signed = json.loads(out)
    assert signed["manifest"] == str(folder / MANIFEST_NAME)
    assert signed["keyids"] == [made["keyid"]]
    payload = signed["payload"]
    assert (payload["name"], payload["version"], payload["model"], payload["notes"]) == (
        "digits",
        7,
        "model.onnx",
        "from CI",
    )
    assert payload["preprocess"] == {"scale": 16}
    assert set(payload["files"]) == {"model.onnx", "labels.txt", "reference.npz"}
    created = datetime.fromisoformat(payload["created"])
    assert datetime.fromisoformat(payload["expires"]) - created == timedelta(days=2)
    envelope = json.loads((folder / MANIFEST_NAME).read_bytes())
    assert json.loads(base64.b64decode(envelope["payload"])) == payload

    code, out, _ = cli(capsys, "verify", str(folder), "--pub", str(public), "--json")
    assert code == 0
    verified = json.loads(out)
    assert verified["valid"] is True and verified["payload"] == payload

    code, out, _ = cli(capsys, "verify", str(folder), "--pub", public.read_text())  # PEM text, plain output
    assert code == 0 and "digits version 7" in out


def test_cli_missing_key_file_is_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.key"
    result = cli(
        capsys,
        "sign",
        str(folder),
        "--key",
        str(missing),
        "--name",
        "digits",
        "--version",
        "1",
        "--model",
        "model.onnx",
    )
    assert_user_error(result, str(missing))
    assert not (folder / MANIFEST_NAME).exists()


def test_cli_verify_errors_are_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keygen", str(tmp_path))[0] == 0
    assert_user_error(cli(capsys, "verify", str(folder), "--pub", str(tmp_path / "missing.pub")), "missing.pub")
    assert_user_error(cli(capsys, "verify", str(folder), "--pub", str(tmp_path / "release.pub")), "cannot read")

    args = ["--key", str(tmp_path / "release.key"), "--name", "digits", "--version", "1", "--model", "model.onnx"]
    assert cli(capsys, "sign", str(folder), *args, "--reference", "none")[0] == 0
    (folder / "labels.txt").write_text("tampered\n")  # not in this release: no effect
    assert cli(capsys, "verify", str(folder), "--pub", str(tmp_path / "release.pub"))[0] == 0
    (folder / "model.onnx").write_bytes(b"tampered")
    assert_user_error(cli(capsys, "verify", str(folder), "--pub", str(tmp_path / "release.pub")), "model.onnx")


def test_cli_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keygen", str(tmp_path))[0] == 0
    assert_user_error(cli(capsys, "keygen", str(tmp_path)), "already exists")


def test_cli_sign_refusals(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keygen", str(tmp_path))[0] == 0
    base = ["sign", str(folder), "--key", str(tmp_path / "release.key"), "--name", "digits", "--version", "1"]
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(DIGITS_MODEL, outside)
    assert_user_error(cli(capsys, *base, "--model", str(outside)), "must be in")
    (tmp_path / "pre.json").write_text("[1, 2]")
    assert_user_error(
        cli(capsys, *base, "--model", "model.onnx", "--preprocess", str(tmp_path / "pre.json")), "JSON object"
    )
    assert_user_error(cli(capsys, *base, "--model", "model.onnx", "--expires-days", "0"), "--expires-days")
    signing_with_public = [*base[:3], str(tmp_path / "release.pub"), *base[4:], "--model", "model.onnx"]
    assert_user_error(cli(capsys, *signing_with_public), "not a PEM private key")
    assert not (folder / MANIFEST_NAME).exists()


def test_cli_verify_threshold(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keygen", str(tmp_path), "--name", "a")[0] == 0
    assert cli(capsys, "keygen", str(tmp_path), "--name", "b")[0] == 0
    sign = ["sign", str(folder), "--name", "digits", "--version", "1", "--model", "model.onnx", "--reference", "none"]
    assert cli(capsys, *sign, "--key", str(tmp_path / "a.key"))[0] == 0
    pubs = ["--pub", str(tmp_path / "a.pub"), "--pub", str(tmp_path / "b.pub")]
    assert_user_error(cli(capsys, "verify", str(folder), *pubs, "--threshold", "2"), "2 are required")
    assert cli(capsys, *sign, "--key", str(tmp_path / "a.key"), "--key", str(tmp_path / "b.key"))[0] == 0
    code, out, _ = cli(capsys, "verify", str(folder), *pubs, "--threshold", "2", "--json")
    assert code == 0 and json.loads(out)["valid"] is True
