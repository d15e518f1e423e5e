"""``edge-agent status``: the running daemon as it last described itself (its status file: pipelines, models
and versions, placement, accelerators, queue depths, outbox backlog, watchdog), and what its state folder
holds (releases in service, rejected versions, the last update).

Exit status 0 while the daemon runs, 3 when it does not (as ``systemctl status``), 2 for a config error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.state import resolve_state_dir
from agent.status_file import NAME, SYSTEMD_RUNTIME_DIR, DaemonStatus, candidate_paths, read_status

EXIT_NOT_RUNNING = 3


def cmd_status(config: Config | None, as_json: bool, unreadable: Path | None = None) -> int:
    """``config`` None: the config file (``unreadable``) is not readable by this user (it may hold broker
    credentials): show the service's status file alone, without what its state folder holds."""
    paths = candidate_paths(config) if config is not None else [SYSTEMD_RUNTIME_DIR / NAME]
    daemon = read_status(paths)
    state_dir: Path | None = None
    ota = None
    if config is not None:
        state_dir = folder = resolve_state_dir(config.agent.state_dir)
        models = _stored_models(config, folder)
        ota = _read_json(folder / "ota" / "status.json")
    else:
        live = daemon.data.get("pipelines", {}) if daemon is not None else {}
        models = {
            name: {"release": None, "version": p.get("version"), "factory": False, "previous": None, "rejected": {}}
            for name, p in live.items()
        }
    if daemon is not None and daemon.data.get("ota"):
        ota = daemon.data["ota"]  # the daemon's own, fresher than the file when it runs
    code = 0 if daemon is not None and daemon.alive else EXIT_NOT_RUNNING
    if as_json:
        described = None
        if daemon is not None:
            described = {
                **daemon.data, "state": daemon.state, "age_s": round(daemon.age_s, 1), "path": str(daemon.path)
            }  # fmt: skip
        state = str(state_dir) if state_dir is not None else None
        print(json.dumps({"daemon": described, "state_dir": state, "pipelines": models, "ota": ota}, indent=2))
        return code
    print(_daemon_line(daemon, paths))
    if unreadable is not None:
        print(f"(cannot read {unreadable}: releases and rejected versions not shown; run as root for them)")
    running = daemon.data.get("pipelines", {}) if daemon is not None and daemon.alive else {}
    for name, m in models.items():
        print(_model_line(name, m, running.get(name)))
        for line in _pipeline_details(running.get(name)):
            print(f"  {line}")
        for version, why in m["rejected"].items():
            print(f"  rejected version {version}: {why}")
    if daemon is not None and daemon.alive:
        for line in _service_lines(daemon.data):
            print(line)
    if ota:
        about = f" {ota.get('release')} version {ota.get('version')}" if ota.get("version") is not None else ""
        error = f": {ota['error']}" if ota.get("error") else ""
        print(f"last update:{about} {ota.get('state')}{error}")
    return code


def _stored_models(config: Config, state_dir: Path) -> dict[str, dict[str, Any]]:
    from agent.ota.store import ReleaseStore

    store = ReleaseStore(state_dir / "ota")
    models: dict[str, dict[str, Any]] = {}
    for p in config.pipelines:
        release = p.model.release
        current = store.current(release) if release else None
        models[p.name] = {
            "release": release,
            "version": current if current is not None else p.model.version,
            "factory": current is None,
            "previous": store.previous(release) if release else None,
            "rejected": {str(v): why for v, why in store.rejected(release).items()} if release else {},
        }
    return models


def _daemon_line(daemon: DaemonStatus | None, paths: list[Path]) -> str:
    if daemon is None:
        return f"edge-agent: not running (no status file at {' or '.join(map(str, paths))})"
    data = daemon.data
    if not daemon.alive:
        last = "stopped cleanly" if data.get("state") == "stopped" else "did not stop cleanly"
        return f"edge-agent: not running (last status {_age(daemon.age_s)} old, pid {data.get('pid')}: {last})"
    up = _age(float(data.get("uptime_s") or 0))
    watchdog = data.get("watchdog") or {}
    stuck = watchdog.get("stuck") or {}
    stuck_text = f"; inference stuck in {', '.join(stuck)}" if stuck else ""
    return (
        f"edge-agent {data.get('version')}: {daemon.state} (pid {data.get('pid')}, up {up}, device "
        f"{data.get('device')}){stuck_text}"
    )


def _model_line(name: str, stored: dict[str, Any], live: dict[str, Any] | None) -> str:
    where = f"release {stored['release']} " if stored["release"] else ""
    factory = " (factory model)" if stored["factory"] else ""
    line = f"pipeline {name}: {where}version {stored['version']}{factory}"
    if live is None:
        return line
    accelerators = ", ".join(live.get("accelerators") or [])
    state = "stopped: " + str(live["error"]) if live.get("error") else "degraded" if live.get("degraded") else "ok"
    return f"{line} on {accelerators} [{state}]"


def _pipeline_details(live: dict[str, Any] | None) -> list[str]:
    if live is None:
        return []
    p50 = live.get("inference_ms_p50")
    latency = f"p50 {p50:.1f} ms" if p50 is not None else "none yet"
    lines = [
        f"{live.get('inferences', 0)} inferences ({latency}), "
        f"{live.get('frames', 0)} frames, {live.get('frames_dropped', 0)} dropped, "
        f"{live.get('bad_inputs', 0)} bad inputs, {live.get('inference_errors', 0)} errors; "
        f"queued: {live.get('queue_depth', 0)} for inference, {live.get('results_queued', 0)} for the outbox"
    ]
    for segment in live.get("placement") or []:
        first, last = segment["layers"]
        predicted = segment["predicted_ms"]
        lines.append(f"placement: {segment['accelerator']} layers {first}-{last} ({predicted} ms predicted)")
    for accelerator, why in (live.get("failed") or {}).items():
        lines.append(f"failed accelerator {accelerator}: {why}")
    return lines


def _service_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    outbox = data.get("outbox") or {}
    mqtt = data.get("mqtt") or {}
    if outbox:
        lines.append(
            f"outbox: {outbox.get('backlog', 0)} result(s) waiting ({outbox.get('backlog_bytes', 0):,} bytes), "
            f"{outbox.get('inflight', 0)} in flight, {outbox.get('delivered', 0)} delivered since start"
        )
    if mqtt:
        lines.append(f"broker: {'connected' if mqtt.get('connected') else 'not connected'}")
    return lines


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes} min"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_parser(sub: argparse._SubParsersAction[Any], config_arg: Any) -> None:
    status = sub.add_parser(
        "status",
        help="show the running agent: pipelines, models and versions, placement, queues, outbox, last update",
        description="Read the status file the running agent rewrites every agent.status_interval_s (default "
        "/run/edge-agent/status.json under systemd) and what its state folder holds: releases in service, "
        "rejected versions, the last update. Exit status 0 while the agent runs, 3 when it does not.",
    )
    config_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON")
