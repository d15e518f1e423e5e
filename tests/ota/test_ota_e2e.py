"""End to end: the real daemon as a subprocess, a real mosquitto, a real HTTPS release server.

A release is published, pushed over MQTT, and results from the new version follow without a gap in
``seq``; the daemon killed with SIGKILL at several points of an install comes back up serving a whole
model and finishes (or refuses) the update afterwards.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish_mqtt
import pytest

from agent.mqtt.localbroker import Mosquitto
from agent.ota.faults import CRASH_ENV
from agent.ota.manifest import generate_keypair, load_private_key
from tests.conftest import write_config
from tests.ota.https_server import Pki, ReleaseServer
from tests.ota.releases import PIPELINE_TOML, publish

DEVICE = "ota-dev"
RESULTS = f"edge/{DEVICE}/digits/result"
STATUS = f"edge/{DEVICE}/ota/status"
FLEET = "edge/fleet/ota"


def agent_config(tmp_path: Path, port: int, server: ReleaseServer, pki: Pki) -> tuple[Path, Any]:
    private, public = generate_keypair(tmp_path, "fleet")
    ota = (
        f'[ota]\nenabled = true\nmanifest_url = "{server.url("manifest.json")}"\nkeys = ["{public}"]\n'
        f'ca_file = "{pki.ca_cert}"\ninterval_s = 0\nwatch_s = 1\nfleet_topic = "{FLEET}"\n'
    )
    pipelines = PIPELINE_TOML.replace("rate_hz = 0", "rate_hz = 25")
    return write_config(tmp_path, port, pipelines + ota, device_id=DEVICE), load_private_key(private)


def push(port: int, topic: str = f"edge/{DEVICE}/ota") -> None:
    publish_mqtt.single(topic, b"{}", qos=1, hostname="127.0.0.1", port=port)


def status_is(state: str) -> Any:
    return lambda m: m.topic == STATUS and m.json()["state"] == state


def test_a_pushed_release_serves_with_no_gap_in_seq(
    mosquitto: Mosquitto,
    subscribe: Any,
    agent_process: Any,
    tmp_path: Path,
    release_server: ReleaseServer,
    release_root: Path,
    pki: Pki,
) -> None:
    config, key = agent_config(tmp_path, mosquitto.port, release_server, pki)
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/#")
    agent = agent_process(["run", "--config", str(config)])
    seqs: list[int] = []
    versions: list[str] = []

    def until(done: Any) -> Any:
        """The next message ``done`` accepts; every result on the way is recorded."""
        while True:
            msg = sub.next()
            if msg.topic == RESULTS:
                seqs.append(msg.json()["seq"])
                versions.append(msg.json()["version"])
            if done(msg):
                return msg

    until(lambda m: m.topic == RESULTS)
    assert versions == ["0"]  # the factory model
    # the check at start found no release yet (404): reported, and the factory model serves on
    assert until(status_is("failed")).json()["error"]
    publish(release_root, 2, key)
    push(mosquitto.port)
    committed = until(status_is("committed")).json()
    until(lambda m: m.topic == RESULTS and m.json()["version"] == "2")
    for _ in range(5):  # and it keeps serving the new version
        until(lambda m: m.topic == RESULTS)
    assert [b - a for a, b in itertools.pairwise(seqs)] == [1] * (len(seqs) - 1), "a result went missing"
    assert set(versions) == {"0", "2"} and versions == sorted(versions)  # one switch, never back
    assert committed["version"] == 2 and committed["installed"] == 2 and committed["bytes"] > 0
    # a fleet-wide push reaches it too
    publish(release_root, 3, key)
    push(mosquitto.port, FLEET)
    assert until(status_is("committed")).json()["version"] == 3
    until(lambda m: m.topic == RESULTS and m.json()["version"] == "3")
    assert [b - a for a, b in itertools.pairwise(seqs)] == [1] * (len(seqs) - 1), "a result went missing"
    assert agent.stop() == 0
    # the retained status tells a late subscriber what happened
    late = subscribe(mosquitto.port, STATUS).next()
    assert late.retain and json.loads(late.payload)["version"] == 3


@pytest.mark.parametrize("point", ["download", "install-after-rename", "switch-after-replace"])
def test_kill_9_during_an_install_leaves_a_whole_model_serving(
    point: str,
    mosquitto: Mosquitto,
    subscribe: Any,
    agent_process: Any,
    tmp_path: Path,
    release_server: ReleaseServer,
    release_root: Path,
    pki: Pki,
) -> None:
    config, key = agent_config(tmp_path, mosquitto.port, release_server, pki)
    publish(release_root, 2, key)
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/#")
    doomed = agent_process(["run", "--config", str(config)], {CRASH_ENV: point})
    # the check at start reaches the crash point: the process dies by SIGKILL
    assert doomed.proc.wait(60) == -9, "".join(doomed.log)
    agent = agent_process(["run", "--config", str(config)])
    results = [sub.wait_for(lambda m: m.topic == RESULTS).json() for _ in range(3)]
    if point == "switch-after-replace":
        # it died while version 2 was on trial: back on the factory model, 2 refused from now on
        final = sub.wait_for(lambda m: m.topic == STATUS and m.json()["state"] in ("rejected", "committed")).json()
        assert final["state"] == "rejected" and "failed before" in final["error"]
        assert all(r["version"] == "0" for r in results)
        agent.wait_log("on trial")
    else:
        # at start the update is finished: from the partial download (a Range request) or the installed copy
        committed = sub.wait_for(status_is("committed")).json()
        assert committed["version"] == 2
        sub.wait_for(lambda m: m.topic == RESULTS and m.json()["version"] == "2")
        gets = [r for r in release_server.requests if r.method == "GET" and r.path != "manifest.json"]
        whole = [r.path for r in gets if r.range_header is None]
        # no file came twice from its first byte: what the killed agent had received was kept and resumed
        assert sorted(whole) == sorted(set(whole)), [(r.path, r.range_header) for r in gets]
        if point == "install-after-rename":
            assert len(gets) == 3  # installed before the kill: nothing fetched again
    assert agent.stop() == 0
