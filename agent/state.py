"""The agent's state directory, and sequence numbers that keep increasing across restarts."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # numbers reserved per disk write


def resolve_state_dir(configured: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The configured folder, else systemd's $STATE_DIRECTORY, /var/lib/edge-agent, ~/.local/state/edge-agent."""
    env = os.environ if env is None else env
    candidates: list[Path]
    if configured is not None:
        candidates = [configured]
    elif env.get("STATE_DIRECTORY"):
        candidates = [Path(env["STATE_DIRECTORY"].split(":")[0])]
    else:
        candidates = [Path("/var/lib/edge-agent"), Path.home() / ".local" / "state" / "edge-agent"]
    errors = []
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
        errors.append(f"{path}: not writable")
    raise ConfigError(f"no usable state directory ({'; '.join(errors)}); set agent.state_dir")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync it, rename over the target, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SeqAllocator:
    """Strictly increasing numbers per pipeline, also across restarts and crashes.

    Blocks of numbers are reserved on disk before use, so a crash can skip numbers but never repeat one.
    """

    def __init__(self, state_dir: Path, pipeline: str) -> None:
        self._path = state_dir / f"seq-{pipeline}.json"
        reserved = 0
        try:
            reserved = int(json.loads(self._path.read_text())["reserved"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # numbers based on the clock in ms stay above any count this file could have held
            reserved = int(time.time() * 1000)
            log.warning("%s: unreadable sequence state (%s); continuing from %d", self._path, exc, reserved + 1)
        self._next = reserved + 1
        self._reserved = reserved

    def next(self) -> int:
        if self._next > self._reserved:
            self._reserved = self._next + SEQ_BLOCK - 1
            atomic_write(self._path, json.dumps({"reserved": self._reserved}).encode())
        value = self._next
        self._next += 1
        return value
