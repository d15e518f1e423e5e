"""What the agent reports about itself: a system snapshot, latency windows, and the telemetry message.

The message published on ``Topics.telemetry`` is also what the Prometheus endpoint (``agent.metrics``) and the
Home Assistant sensors (``agent.mqtt.homeassistant``) read, so its shape is a contract::

    {"ts": "2024-05-01T12:00:00.000Z",
     "system": {"cpu_percent", "load_average", "memory": {...}, "process": {...}, "disk": {...},
                "temperatures": {"sensor/label": celsius}, "temperature_c", "uptime_s"},
     "pipelines": {name: {...counters, "latency_ms": {"count", "p50", "p90", "p99"}, "frames_per_s", ...}},
     "accelerators": {name: {"inferences", "latency_ms": {...}}},
     "outbox": {...} | null, "placement": {...}, "ota": {...} | null}
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

log = logging.getLogger(__name__)

WINDOW = 1024  # latencies kept per window: enough for stable p99, small enough to sort on every report
PERCENTILES = (50, 90, 99)
# counters of a pipeline that telemetry_message turns into per-second rates against the previous message
RATE_COUNTERS = ("frames", "frames_dropped", "inferences", "published")

_processes: dict[int, psutil.Process] = {}
_process_lock = threading.Lock()


def _this_process() -> psutil.Process:
    # one Process object for the life of the agent: cpu_percent() measures since its previous call on it;
    # keyed by pid so that a forked child does not report its parent
    pid = os.getpid()
    with _process_lock:
        if pid not in _processes:
            _processes.clear()
            _processes[pid] = psutil.Process(pid)
        return _processes[pid]


def system_snapshot(disk_path: Path | str = "/") -> dict[str, Any]:
    """Host and process figures, without blocking: CPU percentages are measured since the previous call (the
    first call of a process reads 0.0). ``disk_path`` is the file system to report, e.g. the state directory."""
    proc = _this_process()
    vm = psutil.virtual_memory()
    snap: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count() or 1,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
        "uptime_s": round(time.time() - psutil.boot_time(), 1),
    }
    try:
        with proc.oneshot():
            snap["process"] = {
                "pid": proc.pid,
                "rss": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(interval=None),
                "threads": proc.num_threads(),
                "uptime_s": round(time.time() - proc.create_time(), 1),
            }
    except psutil.Error as exc:  # /proc hidden or restricted: report the rest
        log.debug("process figures unavailable: %s", exc)
        snap["process"] = None
    try:
        du = psutil.disk_usage(str(disk_path))
        snap["disk"] = {"path": str(disk_path), "total": du.total, "free": du.free, "percent": du.percent}
    except OSError as exc:
        log.debug("disk usage of %s unavailable: %s", disk_path, exc)
        snap["disk"] = None
    temps = temperatures()
    snap["temperatures"] = temps
    # the hottest sensor is the one that throttles the SoC: one number for dashboards and alerts
    snap["temperature_c"] = max(temps.values()) if temps else None
    return snap


def temperatures() -> dict[str, float]:
    """``{"sensor/label": celsius}``; empty where psutil cannot read sensors (macOS, Windows, containers)."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        found = read()
    except (OSError, RuntimeError) as exc:
        log.debug("temperature sensors unreadable: %s", exc)
        return {}
    out: dict[str, float] = {}
    for sensor, entries in found.items():
        for i, entry in enumerate(entries):
            if entry.current is None or not math.isfinite(entry.current):
                continue
            key = f"{sensor}/{entry.label or i}"
            out[key] = round(float(entry.current), 1)
    return out


class LatencyWindow:
    """The last ``size`` latencies (ms) and how many were ever added; safe to share between threads."""

    def __init__(self, size: int = WINDOW) -> None:
        if size < 1:
            raise ValueError(f"a latency window needs size >= 1, not {size}")
        self._lock = threading.Lock()
        self._ms: deque[float] = deque(maxlen=size)
        self._count = 0

    def add(self, ms: float) -> None:
        if not math.isfinite(ms):  # one NaN would make every percentile NaN until it leaves the window
            return
        with self._lock:
            self._ms.append(float(ms))
            self._count += 1

    def snapshot(self) -> dict[str, float | int | None]:
        """``{"count": all ever added, "window": samples behind the percentiles, "p50", "p90", "p99"}``; the
        percentiles are None while the window is empty."""
        with self._lock:
            recent = np.fromiter(self._ms, dtype=np.float64, count=len(self._ms))
            count = self._count
        snap: dict[str, float | int | None] = {"count": count, "window": len(recent)}
        values = np.percentile(recent, PERCENTILES) if len(recent) else [None] * len(PERCENTILES)
        for q, v in zip(PERCENTILES, values, strict=True):
            snap[f"p{q}"] = None if v is None else round(float(v), 3)
        return snap


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def telemetry_message(
    system: dict[str, Any],
    pipelines: dict[str, dict[str, Any]],
    accelerators: dict[str, dict[str, Any]],
    outbox: dict[str, Any] | None,
    placement: dict[str, dict[str, Any]],
    ota: dict[str, Any] | None,
    now: float | None = None,
    *,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One JSON-ready dict (see the module docstring). Values may be LatencyWindows (snapshotted here), numpy
    scalars, tuples, paths or dataclass-free nests of those; NaN and infinity become null, which strict JSON
    parsers (Home Assistant's) accept. With ``previous`` (the last message this returned) each pipeline also
    gets ``<counter>_per_s`` rates; they are null on the first message and after a pipeline restarted."""
    now = time.time() if now is None else now
    piped: dict[str, Any] = {}
    for name, stats in pipelines.items():
        entry = _jsonable(stats)
        if "latency_ms" not in entry:
            # a pipeline without a window still reports the median it keeps itself
            p50 = entry.get("inference_ms_p50")
            entry["latency_ms"] = {"count": entry.get("inferences"), "p50": p50, "p90": None, "p99": None}
        piped[str(name)] = entry
    message: dict[str, Any] = {
        "ts": iso(now),
        "system": _jsonable(system),
        "pipelines": piped,
        "accelerators": _jsonable(accelerators),
        "outbox": None if outbox is None else _jsonable(outbox),
        "placement": _jsonable(placement),
        "ota": None if ota is None else _jsonable(ota),
    }
    _add_rates(message, previous, now)
    return message


def _add_rates(message: dict[str, Any], previous: Mapping[str, Any] | None, now: float) -> None:
    dt = None
    before: Mapping[str, Any] = {}
    if previous is not None:
        try:
            dt = now - datetime.fromisoformat(str(previous["ts"])).timestamp()
            before = previous.get("pipelines") or {}
        except (KeyError, ValueError, TypeError):
            dt = None
    for name, entry in message["pipelines"].items():
        old = before.get(name) if isinstance(before, Mapping) else None
        for counter in RATE_COUNTERS:
            rate = None
            cur = entry.get(counter)
            was = old.get(counter) if isinstance(old, Mapping) else None
            # a counter that went down belongs to a restarted pipeline: no honest rate for this interval
            if dt is not None and dt > 0 and _number(cur) and _number(was) and cur >= was:
                rate = round((cur - was) / dt, 3)
            entry[f"{counter}_per_s"] = rate


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _jsonable(value: Any) -> Any:
    """A deep copy that json.dumps(allow_nan=False) takes: later changes to the counters do not leak in."""
    if isinstance(value, LatencyWindow):
        return value.snapshot()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | deque):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)  # paths, enums, versions ...: their text is what a reader of the message needs
