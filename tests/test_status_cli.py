"""``edge-agent status`` on status files as the daemon writes them: live, stale, stopped, and read by a user
who may not read the service's config (root:edge-agent 0640)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent import cli, status_cli
from agent.status_file import read_status, write_status


def _status(pid: int, written_at: float, state: str = "running") -> dict[str, Any]:
    return {
        "state": state,
        "pid": pid,
        "version": "9.9",
        "written_at": written_at,
        "interval_s": 2.0,
        "device": "cam-porch",
        "uptime_s": 4000,
        "watchdog": {"stuck": {}},
        "pipelines": {
            "faces": {
                "version": "3",
                "accelerators": ["litert-cpu"],
                "inferences": 42,
                "inference_ms_p50": 2.5,
                "queue_depth": 1,
                "results_queued": 0,
                "placement": [{"accelerator": "litert-cpu", "layers": [0, 89], "predicted_ms": 2.4}],
            }
        },
        "outbox": {"backlog": 7, "backlog_bytes": 2048, "inflight": 1, "delivered": 35},
        "mqtt": {"connected": False},
    }


def test_live_stale_and_stopped_files_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = time.time()
    write_status(path, _status(os.getpid(), now))
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # any user may read it
    live = read_status([path], now=now + 1)
    assert live is not None and live.alive and live.state == "running"
    stale = read_status([path], now=now + 60)  # not rewritten for many intervals: the agent hung or died
    assert stale is not None and not stale.alive and stale.state == "not running"
    write_status(path, _status(2**22 + 12345, now))  # a pid that no process has
    gone = read_status([path], now=now)
    assert gone is not None and not gone.alive
    write_status(path, _status(os.getpid(), now, state="stopped"))
    stopped = read_status([path], now=now)
    assert stopped is not None and stopped.state == "stopped" and not stopped.alive
    path.write_text("{not json")
    assert read_status([path]) is None


def test_a_user_who_cannot_read_the_config_still_sees_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_status(run / "status.json", _status(os.getpid(), time.time()))
    config = tmp_path / "config.toml"
    config.write_text("[mqtt]\npassword = 'secret'\n")
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(config))
    monkeypatch.setattr(status_cli, "SYSTEMD_RUNTIME_DIR", run)
    # root reads every file, so the permission this user lacks is stood in for here
    monkeypatch.setattr(cli.os, "access", lambda path, mode: Path(path) != config)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"edge-agent 9.9: running (pid {os.getpid()}, up 1h 06m, device cam-porch)")
    assert f"(cannot read {config}" in out[1]
    assert out[2] == "pipeline faces: version 3 on litert-cpu [ok]"
    assert "placement: litert-cpu layers 0-89 (2.4 ms predicted)" in out[4]
    assert "outbox: 7 result(s) waiting (2,048 bytes), 1 in flight, 35 delivered since start" in out
    assert "broker: not connected" in out
    assert cli.main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["daemon"]["state"] == "running" and shown["state_dir"] is None
    # no agent at all: exit 3, as systemctl status
    (run / "status.json").unlink()
    assert cli.main(["status"]) == status_cli.EXIT_NOT_RUNNING
    assert "not running (no status file" in capsys.readouterr().out
