"""The running agent's status file: what ``edge-agent status`` shows about the daemon.

The agent rewrites it every ``status_interval_s`` (a temporary file renamed over the old one, so a reader
never sees half of it). Under systemd it lives in the runtime folder (``/run/edge-agent``, readable by any
user, gone at reboot); elsewhere in the state folder. A reader tells a live agent from a stale file by its
pid and its age.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.state import resolve_state_dir

NAME = "status.json"
SYSTEMD_RUNTIME_DIR = Path("/run/edge-agent")  # RuntimeDirectory=edge-agent in the unit
STALE_AFTER_INTERVALS = 3  # a file not rewritten for this many intervals belongs to an agent that is gone


def status_path(config: Config, env: Mapping[str, str] | None = None) -> Path:
    """Where the agent writes its status file."""
    env = os.environ if env is None else env
    if config.agent.status_file is not None:
        return config.agent.status_file
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / NAME
    return resolve_state_dir(config.agent.state_dir, env) / NAME


def candidate_paths(config: Config, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where a reader looks: where this config's agent writes, then where the systemd service writes (a user
    running ``edge-agent status`` has no $RUNTIME_DIRECTORY of the service)."""
    env = os.environ if env is None else env
    first = status_path(config, env)
    if config.agent.status_file is not None:
        return [first]
    return list(dict.fromkeys([first, SYSTEMD_RUNTIME_DIR / NAME]))


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Replace the file atomically; readable by everyone (it holds no secrets), so that any user can run
    ``edge-agent status`` against the service."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    tmp.chmod(0o644)
    tmp.replace(path)


@dataclass(frozen=True)
class DaemonStatus:
    path: Path
    data: dict[str, Any]
    age_s: float  # since the agent last wrote it
    alive: bool  # its process still runs and it was rewritten recently

    @property
    def state(self) -> str:
        if self.alive:
            return str(self.data.get("state", "running"))
        return "stopped" if self.data.get("state") == "stopped" else "not running"


def read_status(paths: list[Path], now: float | None = None) -> DaemonStatus | None:
    """The newest readable status file among ``paths``, or None when there is none."""
    now = time.time() if now is None else now
    found: list[DaemonStatus] = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        written = _number(data.get("written_at"), 0.0)
        interval = _number(data.get("interval_s"), 2.0)
        age = max(0.0, now - written)
        alive = (
            data.get("state") != "stopped"
            and age <= STALE_AFTER_INTERVALS * interval + 1.0
            and _running(data.get("pid"))
        )
        found.append(DaemonStatus(path, data, age, alive))
    return max(found, key=lambda s: (s.alive, -s.age_s), default=None)


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _running(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the service's user, not ours: it exists
        return True
    return True
