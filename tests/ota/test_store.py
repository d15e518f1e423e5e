"""Releases on disk: install, switch, commit and rollback, with real child processes killed by SIGKILL mid-way."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import OtaError
from agent.ota.faults import CRASH_ENV
from agent.ota.store import ReleaseStore

ROOT = Path(__file__).resolve().parents[2]
NAME = "digits"


def release_files(version: int) -> dict[str, bytes]:
    """The same names and sizes in every version, different bytes: a mix of two versions shows only in content."""
    return {
        "model.onnx": bytes([version]) * 4096,
        "model.tflite": bytes([version + 100]) * 3000,
        "labels.txt": f"zero-v{version:03d}\none-v{version:03d}\n".encode(),
    }


def manifest_bytes(version: int, files: dict[str, bytes] | None = None) -> bytes:
    """An unsigned envelope of the same shape as a signed one (the store never checks signatures)."""
    files = release_files(version) if files is None else files
    payload = {
        "type": "edge-agent-release",
        "spec": 1,
        "name": NAME,
        "version": version,
        "created": "2026-11-23T15:00:00Z",
        "expires": "2026-12-23T15:00:00Z",
        "model": "model.onnx",
        "variants": ["model.tflite"],
        "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
        "labels": "labels.txt",
        "preprocess": None,
        "postprocess": None,
        "reference": None,
        "notes": "",
    }
    body = json.dumps(payload, sort_keys=True, indent=1).encode()
    return json.dumps({"payload": base64.b64encode(body).decode(), "signatures": []}).encode()


def stage(store: ReleaseStore, version: int) -> Path:
    """What a finished download leaves: every file of the release in its staging folder."""
    folder = store.staging(NAME, version)
    for file_name, data in release_files(version).items():
        (folder / file_name).write_bytes(data)
    return folder


def deploy(store: ReleaseStore, version: int) -> None:
    stage(store, version)
    store.install(NAME, version, manifest_bytes(version))
    store.switch(NAME, version)
    store.commit(NAME)


def assert_whole(store: ReleaseStore, version: int) -> None:
    """current is `version`, and its folder holds exactly that version's files, byte for byte."""
    assert store.current(NAME) == version
    folder = store.current_dir(NAME)
    assert folder == store.release_dir(NAME, version)
    expected = {**release_files(version), "manifest.json": manifest_bytes(version)}
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for file_name, data in expected.items():
        assert (folder / file_name).read_bytes() == data, file_name
    assert store.complete(NAME, version)


def run_child(code: str, root: Path, crash_at: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, CRASH_ENV: crash_at, "PYTHONPATH": str(ROOT)}
    # the timeout only stops a hung child from hanging the suite; nothing waits on it for synchronisation
    return subprocess.run(
        [sys.executable, "-c", code, str(root), *args], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False
    )


UPDATE = """
import sys
from pathlib import Path
from agent.ota.store import ReleaseStore
from tests.ota.test_store import NAME, manifest_bytes, stage
store = ReleaseStore(Path(sys.argv[1]))
version = int(sys.argv[2])
stage(store, version)
store.install(NAME, version, manifest_bytes(version))
store.switch(NAME, version)
store.commit(NAME)
"""


@pytest.mark.parametrize(
    ("point", "current_at_death", "rejected"),
    [
        ("install-before-rename", 1, False),
        ("install-after-rename", 1, False),
        ("switch-before-replace", 1, False),  # version 2 never ran: it may be tried again
        ("switch-after-replace", 2, True),  # version 2 was on trial when the agent died
    ],
)
def test_kill_9_during_an_update_leaves_one_whole_version(
    tmp_path: Path, point: str, current_at_death: int, rejected: bool
) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)

    child = run_child(UPDATE, store.root, point, "2")
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    # even before recovery current names one complete version
    assert_whole(ReleaseStore(store.root), current_at_death)

    restarted = ReleaseStore(store.root)
    message = restarted.recover(NAME)
    assert restarted.current(NAME) in (1, 2)
    assert_whole(restarted, 1)
    assert not (store.root / "releases" / NAME / ".current.tmp").exists()
    if rejected:
        assert message is not None
        assert "on trial" in message
        assert "version 2" in restarted.rejected(NAME)[2]
        assert not restarted.release_dir(NAME, 2).exists()
        journal = restarted.journal(NAME)
        assert journal is not None
        assert (journal.step, journal.version, journal.from_version) == ("rolled-back", 2, 1)
        return
    assert restarted.rejected(NAME) == {}
    assert (message is not None) == (point == "switch-before-replace")
    # what the crash left is picked up where it stopped: the staged or installed files, or the install
    if point == "install-before-rename":
        assert sorted(p.name for p in restarted.staging(NAME, 2).iterdir()) == sorted(
            [*release_files(2), "manifest.json"]
        )
    if point != "switch-before-replace":
        restarted.install(NAME, 2, manifest_bytes(2))
    restarted.switch(NAME, 2)
    restarted.commit(NAME)
    assert_whole(restarted, 2)
    assert restarted.recover(NAME) is None


def test_kill_9_on_trial_of_the_first_update_returns_to_the_factory_model(tmp_path: Path) -> None:
    child = run_child(UPDATE, tmp_path / "ota", "switch-after-replace", "1")
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    store = ReleaseStore(tmp_path / "ota")
    assert store.current(NAME) == 1
    message = store.recover(NAME)
    assert message is not None
    assert "factory model" in message
    assert store.current(NAME) is None
    assert store.current_dir(NAME) is None
    assert 1 in store.rejected(NAME)


PARTIAL_DOWNLOAD = """
import sys
from pathlib import Path
from agent.ota.faults import crashpoint
from agent.ota.store import ReleaseStore
from tests.ota.test_store import NAME, release_files
store = ReleaseStore(Path(sys.argv[1]))
folder = store.staging(NAME, 2)
files = release_files(2)
(folder / "labels.txt").write_bytes(files["labels.txt"])
with (folder / "model.onnx.part").open("wb") as fh:
    fh.write(files["model.onnx"][:1000])
    fh.flush()
    crashpoint("download")
"""


def test_kill_9_mid_download_keeps_the_partial_files_and_the_current_version(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    child = run_child(PARTIAL_DOWNLOAD, store.root, "download")
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    restarted = ReleaseStore(store.root)
    assert restarted.recover(NAME) is None
    assert_whole(restarted, 1)
    folder = store.root / "staging" / f"{NAME}-2"
    assert (folder / "model.onnx.part").read_bytes() == release_files(2)["model.onnx"][:1000]
    with pytest.raises(OtaError, match=r"not fully downloaded: model\.onnx is missing"):
        restarted.install(NAME, 2, manifest_bytes(2))
    assert_whole(restarted, 1)
    assert not restarted.release_dir(NAME, 2).exists()

    # the download resumes and finishes; the stale .part must not travel into the release
    stage(restarted, 2)
    restarted.install(NAME, 2, manifest_bytes(2))
    restarted.switch(NAME, 2)
    assert_whole(restarted, 2)


def test_install_refuses_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    folder = stage(store, 1)
    (folder / "labels.txt").write_bytes(b"short")
    with pytest.raises(OtaError, match=r"labels\.txt has 5 bytes, the manifest says"):
        store.install(NAME, 1, manifest_bytes(1))
    assert not store.release_dir(NAME, 1).exists()
    with pytest.raises(OtaError, match="not installed"):
        store.switch(NAME, 1)
    assert store.current(NAME) is None


def test_install_twice_reuses_the_installed_folder(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    stage(store, 1)
    first = store.install(NAME, 1, manifest_bytes(1))
    assert not (store.root / "staging" / f"{NAME}-1").exists()
    assert store.install(NAME, 1, manifest_bytes(1)) == first
    store.switch(NAME, 1)
    assert_whole(store, 1)
    with pytest.raises(OtaError, match="unreadable manifest"):
        store.install(NAME, 3, b'{"payload": "not base64!"}')


def test_switch_records_the_trial_and_commit_prunes_all_but_current_and_previous(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    deploy(store, 2)
    stage(store, 3)
    store.install(NAME, 3, manifest_bytes(3))
    store.switch(NAME, 3)
    journal = store.journal(NAME)
    assert journal is not None
    assert (journal.step, journal.version, journal.from_version) == ("switched", 3, 2)
    assert (store.current(NAME), store.previous(NAME)) == (3, 2)
    assert sorted(p.name for p in (store.root / "releases" / NAME).iterdir()) == [
        "1",
        "2",
        "3",
        "current",
        "previous",
    ]
    store.staging(NAME, 2)  # an outdated download
    store.commit(NAME)
    journal = store.journal(NAME)
    assert journal is not None
    assert (journal.step, journal.version, journal.from_version) == ("committed", 3, 2)
    assert sorted(p.name for p in (store.root / "releases" / NAME).iterdir()) == ["2", "3", "current", "previous"]
    assert list((store.root / "staging").iterdir()) == []
    assert_whole(store, 3)
    assert store.complete(NAME, 2)


def test_rollback_returns_to_the_previous_version_and_rejects_the_current(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    stage(store, 2)
    store.install(NAME, 2, manifest_bytes(2))
    store.switch(NAME, 2)
    assert store.rollback(NAME, "canary output differs from the reference") == 1
    assert_whole(store, 1)
    assert store.rejected(NAME) == {2: "canary output differs from the reference"}
    journal = store.journal(NAME)
    assert journal is not None
    assert (journal.step, journal.version, journal.reason) == (
        "rolled-back",
        2,
        "canary output differs from the reference",
    )
    assert not store.release_dir(NAME, 2).exists()
    assert store.recover(NAME) is None


def test_rollback_without_a_previous_version_returns_to_the_factory_model(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    stage(store, 1)
    store.install(NAME, 1, manifest_bytes(1))
    store.switch(NAME, 1)
    assert store.previous(NAME) is None
    assert store.rollback(NAME, "load failed") is None
    assert store.current(NAME) is None
    assert store.current_dir(NAME) is None
    assert not os.path.lexists(store.root / "releases" / NAME / "current")
    assert store.rejected(NAME) == {1: "load failed"}
    with pytest.raises(OtaError, match="factory model is in use"):
        store.rollback(NAME, "again")


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_recover_moves_a_broken_current_to_the_previous_version(tmp_path: Path, damage: str) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    deploy(store, 2)
    if damage == "deleted":
        shutil.rmtree(store.release_dir(NAME, 2))
    else:
        (store.release_dir(NAME, 2) / "model.onnx").write_bytes(b"\x02" * 10)
    assert not store.complete(NAME, 2)
    message = ReleaseStore(store.root).recover(NAME)
    assert message is not None
    assert "incomplete version 2" in message
    assert_whole(store, 1)
    assert store.previous(NAME) is None


def test_recover_drops_a_dangling_current_without_a_previous(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    shutil.rmtree(store.release_dir(NAME, 1))
    assert store.current(NAME) == 1
    assert store.current_dir(NAME) is None
    message = store.recover(NAME)
    assert message is not None
    assert "factory model" in message
    assert store.current(NAME) is None
    assert not os.path.lexists(store.root / "releases" / NAME / "current")


def test_recover_removes_temporaries_and_outdated_downloads_only(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 2)
    releases = store.root / "releases" / NAME
    (releases / ".current.tmp").symlink_to("9")
    (releases / ".prune-7").mkdir()
    (store.root / f".journal-{NAME}.json.tmp").write_text("{")
    for version in (1, 3, 4):
        folder = store.staging(NAME, version)
        (folder / ".manifest.json.tmp").write_text("{")
        (folder / "model.onnx.part").write_bytes(b"abc")
    other = store.staging(f"{NAME}-x", 1)  # another model whose name extends this one's
    store.reject(NAME, 4, "bad")

    message = store.recover(NAME)
    assert message is not None
    assert "2 outdated download folder(s)" in message
    assert sorted(p.name for p in releases.iterdir()) == ["2", "current"]
    assert not (store.root / f".journal-{NAME}.json.tmp").exists()
    assert sorted(p.name for p in (store.root / "staging").iterdir()) == [f"{NAME}-3", f"{NAME}-x-1"]
    assert [p.name for p in (store.root / "staging" / f"{NAME}-3").iterdir()] == ["model.onnx.part"]
    assert other.is_dir()
    assert_whole(store, 2)


def test_rejected_round_trip(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    assert store.rejected(NAME) == {}
    store.reject(NAME, 12, "canary crashed")
    store.reject(NAME, 3, "slower than the reference allows")
    store.reject(NAME, 12, "canary crashed twice")
    assert ReleaseStore(store.root).rejected(NAME) == {
        3: "slower than the reference allows",
        12: "canary crashed twice",
    }
    assert store.rejected("other") == {}
    (store.root / f"rejected-{NAME}.json").write_text("[not an object")
    assert store.rejected(NAME) == {}


def test_complete_checks_every_listed_file_and_its_size(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    stage(store, 1)
    folder = store.install(NAME, 1, manifest_bytes(1))
    assert store.complete(NAME, 1)
    assert not store.complete(NAME, 2)
    (folder / "labels.txt").rename(folder / "labels.bak")
    assert not store.complete(NAME, 1)
    (folder / "labels.bak").rename(folder / "labels.txt")
    assert store.complete(NAME, 1)
    with (folder / "model.tflite").open("ab") as fh:
        fh.write(b"x")
    assert not store.complete(NAME, 1)
    (folder / "model.tflite").write_bytes(release_files(1)["model.tflite"])
    assert store.complete(NAME, 1)
    (folder / "manifest.json").write_text("{}")
    assert not store.complete(NAME, 1)
    (folder / "manifest.json").unlink()
    assert not store.complete(NAME, 1)


def test_names_and_versions_cannot_leave_the_folder(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    with pytest.raises(OtaError, match="invalid model name"):
        store.staging("../etc", 1)
    with pytest.raises(OtaError, match="invalid release version"):
        store.release_dir(NAME, 0)
    hostile = manifest_bytes(1, {"../evil": b"x"})
    stage(store, 1)
    with pytest.raises(OtaError, match="bad file name"):
        store.install(NAME, 1, hostile)


def test_an_unusable_root_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = ReleaseStore(blocker / "ota")
    with pytest.raises(OtaError) as info:
        store.staging(NAME, 1)
    message = str(info.value)
    assert str(store.root) in message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_root_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "ota"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(OtaError) as info:
            ReleaseStore(root).staging(NAME, 1)
    finally:
        root.chmod(0o755)
    message = str(info.value)
    assert str(root) in message
    assert "writable" in message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_switch_that_cannot_write_leaves_current_alone(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "ota")
    deploy(store, 1)
    stage(store, 2)
    store.install(NAME, 2, manifest_bytes(2))
    releases = store.root / "releases" / NAME
    releases.chmod(0o555)
    try:
        with pytest.raises(OtaError, match="writable"):
            store.switch(NAME, 2)
    finally:
        releases.chmod(0o755)
    assert_whole(store, 1)
