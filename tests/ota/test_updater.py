"""The updater against a real HTTPS server (a CA made by the tests) with injected faults, on a real digits
pipeline: each fault must leave the model in service serving, and a good release must end up serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, load_config
from agent.mqtt.topics import Topics
from agent.ota.manifest import generate_keypair, load_private_key
from agent.ota.serving import load_serving, recover
from agent.ota.store import ReleaseStore
from agent.ota.updater import Updater
from agent.pipeline import Pipeline
from agent.sources.base import Frame
from agent.sources.replay import read_file
from agent.state import SeqAllocator
from tests.conftest import ROOT, write_config
from tests.ota.https_server import Pki, ReleaseServer, make_pki
from tests.ota.releases import (
    DIGITS_IMAGES,
    PIPELINE_TOML,
    build_nan_on_live_input,
    negative_reference,
    publish,
)


@dataclass
class Device:
    config: Config
    state: Path
    pipeline: Pipeline
    updater: Updater
    statuses: list[dict[str, Any]]

    @property
    def store(self) -> ReleaseStore:
        return self.updater.store

    def check(self) -> dict[str, Any]:
        return asyncio.run(self.updater.check()).to_json()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path, Ed25519PrivateKey]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(folder, "fleet")
    other, _ = generate_keypair(folder, "stranger")
    return load_private_key(private), public, load_private_key(other)


def make_device(tmp_path: Path, url: str, public: Path, ca: Path, watch_s: float = 0.0) -> Device:
    ota = (
        f'[ota]\nenabled = true\nmanifest_url = "{url}"\nkeys = ["{public}"]\nca_file = "{ca}"\n'
        f"interval_s = 0\nwatch_s = {watch_s}\n"
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_config(write_config(tmp_path, 1883, PIPELINE_TOML + ota))
    state = tmp_path / "state"
    store = ReleaseStore(state / "ota")
    cfg = config.pipelines[0]
    recover(store, config.pipelines)
    model = load_serving(cfg, (), state, store)
    pipeline = Pipeline(cfg, model, Topics("edge", "dev"), SeqAllocator(state, cfg.name))
    statuses: list[dict[str, Any]] = []
    updater = Updater(config.ota, state, {"digits"}, (), statuses.append)
    updater.serve([pipeline])
    return Device(config, state, pipeline, updater, statuses)


@pytest.fixture
def device(
    tmp_path: Path, release_server: ReleaseServer, pki: Pki, keys: tuple[Ed25519PrivateKey, Path, Ed25519PrivateKey]
) -> Device:
    return make_device(tmp_path, release_server.url("manifest.json"), keys[1], pki.ca_cert)


def digit(n: int) -> Frame:
    return read_file(DIGITS_IMAGES / f"digit_{n}.png")


def classify(device: Device, n: int) -> str:
    result = device.pipeline.model.infer(digit(n))
    return str(result.model.post(result.outputs, result.box)["label"])


def gets(server: ReleaseServer, name: str) -> list[Any]:
    return [r for r in server.requests if r.path == name and r.method == "GET"]


def test_a_signed_release_is_downloaded_canaried_and_served(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    assert device.pipeline.model.version == "0" and device.store.current("digits") is None
    publish(release_root, 2, keys[0])
    status = device.check()
    assert status["state"] == "committed" and status["installed"] == 2, status
    assert device.pipeline.model.version == "2" and device.store.current("digits") == 2
    assert classify(device, 7) == "7"  # the new model serves real input
    states = [s["state"] for s in device.statuses]
    assert states[:1] == ["checking"] and states[-3:] == ["canary", "watching", "committed"]
    assert "downloading" in states and "installing" in states
    on_disk = json.loads((device.state / "ota" / "status.json").read_text())
    assert on_disk["state"] == "committed" and on_disk["version"] == 2
    # nothing changed on the server: a conditional GET, answered 304, and nothing else fetched
    before = len(release_server.requests)
    assert device.check()["state"] == "idle"
    (again,) = release_server.requests[before:]
    assert again.status == 304 and again.if_none_match
    # a restart comes up on the installed release
    ca = device.config.ota.ca_file
    assert ca is not None
    restarted = make_device(device.state.parent, release_server.url("manifest.json"), keys[1], ca)
    assert restarted.pipeline.model.version == "2"


def rejected_release(case: str, root: Path, keys: Any, device: Device) -> None:
    private, _, stranger = keys
    if case == "unknown key":
        publish(root, 2, stranger)
    elif case == "bad signature":
        publish(root, 2, private)
        envelope = json.loads((root / "manifest.json").read_text())
        envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][::-1]
        (root / "manifest.json").write_text(json.dumps(envelope))
    elif case == "expired":
        publish(root, 2, private, now=datetime.now(UTC) - timedelta(days=2), expires_in=timedelta(days=1))
    elif case == "another model":
        publish(root, 2, private, name="faces")
    elif case == "downgrade":
        publish(root, 3, private)
        assert device.check()["state"] == "committed"
        publish(root, 2, private)


@pytest.mark.parametrize("case", ["unknown key", "bad signature", "expired", "another model", "downgrade"])
def test_a_manifest_that_must_not_be_trusted_is_rejected_before_any_download(
    case: str, device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    rejected_release(case, release_root, keys, device)
    serving = device.pipeline.model
    before = len(release_server.requests)
    status = device.check()
    assert status["state"] == "rejected" and status["error"], status
    assert device.pipeline.model is serving  # still serving what it served
    assert [r.path for r in release_server.requests[before:]] == ["manifest.json"]  # nothing else fetched


def test_a_cut_download_resumes_with_only_the_missing_range(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    publish(release_root, 2, keys[0])
    size = (release_root / "model.onnx").stat().st_size
    release_server.cut_after("model.onnx", 4096)
    status = device.check()
    assert status["state"] == "failed" and "model.onnx" in status["error"], status
    assert device.pipeline.model.version == "0" and classify(device, 3) == "3"  # the factory model serves on
    release_server.clear()
    assert device.check()["state"] == "committed"
    first, second = gets(release_server, "model.onnx")
    assert first.range_header is None and second.range_header == "bytes=4096-"
    assert second.bytes_sent == size - 4096  # only what was missing came again


def test_server_down_then_back(device: Device, release_server: ReleaseServer, release_root: Path, keys: Any) -> None:
    publish(release_root, 2, keys[0])
    release_server.stop()
    status = device.check()
    assert status["state"] == "failed" and device.pipeline.model.version == "0"
    release_server.start()
    assert device.check()["state"] == "committed" and device.pipeline.model.version == "2"


@pytest.mark.parametrize("fault", ["wrong hash", "padded", "truncated"])
def test_a_file_that_differs_from_its_manifest_is_never_installed(
    fault: str, device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    publish(release_root, 2, keys[0])
    data = (release_root / "model.onnx").read_bytes()
    if fault == "wrong hash":
        release_server.replace("model.onnx", bytes(len(data)))
    elif fault == "padded":
        release_server.pad("model.onnx", b"\0" * 100)
    else:
        release_server.replace("model.onnx", data[:-100])
    status = device.check()
    assert status["state"] == "failed" and "model.onnx" in status["error"], status
    assert device.store.current("digits") is None and not device.store.complete("digits", 2)
    assert device.pipeline.model.version == "0" and classify(device, 5) == "5"


def test_wrong_ca_and_wrong_host_name_are_refused(tmp_path: Path, release_root: Path, keys: Any, pki: Pki) -> None:
    other = make_pki(tmp_path / "other-ca")
    publish(release_root, 2, keys[0])
    with ReleaseServer(release_root, pki) as server:
        device = make_device(tmp_path / "a", server.url("manifest.json"), keys[1], other.ca_cert)
        status = device.check()
        assert status["state"] == "failed" and "certificate" in status["error"], status
    elsewhere = make_pki(tmp_path / "elsewhere", hostnames=("other.example",))
    with ReleaseServer(release_root, elsewhere) as server:
        device = make_device(tmp_path / "b", server.url("manifest.json"), keys[1], elsewhere.ca_cert)
        status = device.check()
        assert status["state"] == "failed" and "localhost" in status["error"], status
    assert device.pipeline.model.version == "0"


def test_a_release_that_fails_its_canary_is_rejected_and_never_serves(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any, tmp_path: Path
) -> None:
    broken = build_nan_on_live_input(tmp_path / "broken.onnx")
    publish(release_root, 2, keys[0], broken)  # auto reference: random inputs, half of them give NaN
    serving = device.pipeline.model
    status = device.check()
    assert status["state"] == "failed" and "canary" in status["error"], status
    assert device.pipeline.model is serving and device.store.current("digits") is None
    assert 2 in device.store.rejected("digits")
    before = len(release_server.requests)
    status = device.check()  # the same version again: known bad, not fetched again
    assert status["state"] == "rejected" and "failed before" in status["error"]
    assert [r.path for r in release_server.requests[before:]] == ["manifest.json"]


def test_a_release_that_misbehaves_on_live_input_is_rolled_back(
    tmp_path: Path, release_server: ReleaseServer, release_root: Path, keys: Any, pki: Pki
) -> None:
    device = make_device(tmp_path, release_server.url("manifest.json"), keys[1], pki.ca_cert, watch_s=30)
    broken = build_nan_on_live_input(tmp_path / "broken.onnx")
    publish(release_root, 2, keys[0], broken, reference=str(negative_reference(broken, tmp_path / "ref.npz")))
    factory = device.pipeline.model
    stop = threading.Event()

    def feed() -> None:  # live frames, as the pipeline's worker would run them
        n = 0
        while not stop.is_set():
            with device.pipeline._model_lock:
                device.pipeline.model.infer(digit(n % 10))
            n += 1

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        status = device.check()
    finally:
        stop.set()
        thread.join(10)
    assert status["state"] == "rolled-back" and "NaN" in status["error"], status
    assert [s["state"] for s in device.statuses][-3:] == ["canary", "watching", "rolled-back"]
    assert device.pipeline.model is factory and classify(device, 4) == "4"
    assert device.store.current("digits") is None and 2 in device.store.rejected("digits")


def test_update_from_the_command_line_shows_progress_and_stages_the_release(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    publish(release_root, 2, keys[0])
    config = device.state.parent / "config.toml"
    cli = [sys.executable, "-m", "agent"]

    def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, cwd=ROOT, check=False)

    done = edge_agent("update", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "downloading digits version 2" in done.stderr and "staged digits version 2" in done.stderr
    assert device.store.complete("digits", 2) and device.store.current("digits") is None  # staged, not in service
    shown = edge_agent("status", "--config", str(config), "--json")
    status = json.loads(shown.stdout)
    assert status["pipelines"]["digits"] == {
        "release": "digits", "version": "0", "factory": True, "previous": None, "rejected": {}
    }  # fmt: skip
    assert status["ota"]["state"] == "staged" and status["ota"]["version"] == 2
    # the agent's next check finds it installed: canary and switch, nothing downloaded again
    before = len(release_server.requests)
    assert device.check()["state"] == "committed"
    assert [r.path for r in release_server.requests[before:]] == ["manifest.json"]
    shown = edge_agent("status", "--config", str(config))
    assert "pipeline digits: release digits version 2" in shown.stdout and "committed" in shown.stdout
    # a user error is one line and exit 2
    broken = device.state.parent / "broken.toml"
    broken.write_text(config.read_text().replace("[ota]\nenabled = true\n", "[ota]\nenabled = true\nbogus = 1\n"))
    bad = edge_agent("update", "--config", str(broken))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bogus" in bad.stderr


def test_on_a_schedule_the_updater_finds_a_release_by_itself(
    tmp_path: Path, release_server: ReleaseServer, release_root: Path, keys: Any, pki: Pki
) -> None:
    device = make_device(tmp_path, release_server.url("manifest.json"), keys[1], pki.ca_cert)
    updater = Updater(
        device.config.ota.model_copy(update={"interval_s": 0.2}), device.state, {"digits"}, (), device.statuses.append
    )
    updater.serve([device.pipeline])

    async def until_committed() -> int:
        task = asyncio.create_task(updater.run())
        try:
            while updater.status.state != "committed":
                if updater.checks == 2:  # the first check found nothing; now the release appears
                    publish(release_root, 2, keys[0])
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
        return updater.checks

    assert asyncio.run(asyncio.wait_for(until_committed(), 60)) >= 3  # no push: found by the periodic check
    assert device.pipeline.model.version == "2"


def test_a_full_disk_fails_the_download_and_the_model_serves_on(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    publish(release_root, 2, keys[0])
    staging = device.store.staging("digits", 2)
    (staging / "model.onnx.part").symlink_to("/dev/full")  # every write there fails with ENOSPC
    status = device.check()
    assert status["state"] == "failed" and "model.onnx" in status["error"], status
    assert "space" in status["error"] or "No space" in status["error"]
    assert device.pipeline.model.version == "0" and classify(device, 8) == "8"
    (staging / "model.onnx.part").unlink()
    assert device.check()["state"] == "committed"


def test_an_installed_release_that_no_longer_loads_is_rolled_back_at_start(
    device: Device, release_server: ReleaseServer, release_root: Path, keys: Any, pki: Pki
) -> None:
    publish(release_root, 2, keys[0])
    assert device.check()["state"] == "committed"
    folder = device.store.current_dir("digits")
    assert folder is not None
    model = folder / "model.onnx"
    model.write_bytes(b"\x08" * model.stat().st_size)  # garbage of the same size: only loading finds it
    restarted = make_device(device.state.parent, release_server.url("manifest.json"), keys[1], pki.ca_cert)
    assert restarted.pipeline.model.version == "0" and classify(restarted, 6) == "6"  # the factory model
    assert restarted.store.current("digits") is None and "does not load" in restarted.store.rejected("digits")[2]
