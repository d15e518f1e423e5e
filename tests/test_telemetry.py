"""System snapshot, latency windows and the telemetry message."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry import LatencyWindow, system_snapshot, telemetry_message

NOW = 1_700_000_000.0


def test_system_snapshot_has_plausible_figures(tmp_path: Path) -> None:
    snap = system_snapshot(tmp_path)
    json.dumps(snap, allow_nan=False)  # publishable as is
    assert 0.0 <= snap["cpu_percent"] <= 100.0
    assert snap["cpu_count"] >= 1
    assert len(snap["load_average"]) == 3
    assert all(x >= 0 for x in snap["load_average"])
    mem = snap["memory"]
    assert 0.0 <= mem["percent"] <= 100.0
    assert 0 < mem["available"] <= mem["total"]
    assert mem["total"] == psutil.virtual_memory().total
    proc = snap["process"]
    assert proc["rss"] > 0
    assert proc["pid"] == psutil.Process().pid
    assert proc["threads"] >= 1
    assert proc["uptime_s"] >= 0
    assert snap["uptime_s"] > 0
    disk = snap["disk"]
    assert disk["path"] == str(tmp_path)
    assert disk["total"] > 0
    assert 0 <= disk["free"] <= disk["total"]
    assert 0.0 <= disk["percent"] <= 100.0


def test_temperatures_are_named_celsius_and_the_hottest_is_reported() -> None:
    snap = system_snapshot()
    temps = snap["temperatures"]
    assert isinstance(temps, dict)
    for key, celsius in temps.items():
        assert "/" in key
        assert -60.0 < celsius < 150.0
    assert snap["temperature_c"] == (max(temps.values()) if temps else None)


def test_disk_of_a_missing_path_is_null_not_an_error(tmp_path: Path) -> None:
    snap = system_snapshot(tmp_path / "not-there")
    assert snap["disk"] is None
    assert snap["memory"]["total"] > 0  # the rest is still reported


def test_latency_window_percentiles_match_numpy() -> None:
    data = [float(x) for x in range(1, 101)] + [250.0, 0.5, 17.25]
    random.Random(7).shuffle(data)
    window = LatencyWindow(size=1024)
    for ms in data:
        window.add(ms)
    snap = window.snapshot()
    assert snap["count"] == len(data)
    assert snap["window"] == len(data)
    for q in (50, 90, 99):
        assert snap[f"p{q}"] == pytest.approx(np.percentile(data, q), abs=5e-4)


def test_latency_window_keeps_only_the_last_n_but_counts_all() -> None:
    window = LatencyWindow(size=10)
    for ms in range(100):
        window.add(float(ms))
    snap = window.snapshot()
    assert snap["count"] == 100
    assert snap["window"] == 10
    assert snap["p50"] == pytest.approx(np.percentile(np.arange(90, 100), 50))
    assert snap["p99"] == pytest.approx(np.percentile(np.arange(90, 100), 99))


def test_empty_window_has_no_percentiles_and_nan_is_ignored() -> None:
    window = LatencyWindow()
    assert window.snapshot() == {"count": 0, "window": 0, "p50": None, "p90": None, "p99": None}
    window.add(float("nan"))
    window.add(float("inf"))
    window.add(3.0)
    assert window.snapshot() == {"count": 1, "window": 1, "p50": 3.0, "p90": 3.0, "p99": 3.0}
    with pytest.raises(ValueError, match="size"):
        LatencyWindow(size=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1, max_size=300),
    st.integers(min_value=1, max_value=64),
)
def test_latency_window_property(data: list[float], size: int) -> None:
    window = LatencyWindow(size=size)
    for ms in data:
        window.add(ms)
    snap = window.snapshot()
    recent = data[-size:]
    assert snap["count"] == len(data)
    assert snap["window"] == len(recent)
    for q in (50, 90, 99):
        assert snap[f"p{q}"] == pytest.approx(np.percentile(recent, q), abs=5e-4)


def test_latency_window_is_safe_across_threads() -> None:
    window = LatencyWindow(size=100)
    start = threading.Barrier(4)

    def add_many(offset: int) -> None:
        start.wait()
        for i in range(2000):
            window.add(float(offset + i % 10))
            if i % 100 == 0:
                window.snapshot()  # readers interleave with writers

    threads = [threading.Thread(target=add_many, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = window.snapshot()
    assert snap["count"] == 8000
    assert snap["window"] == 100
    assert snap["p50"] is not None
    assert 0.0 <= snap["p50"] <= 39.0


def _pipeline_stats(frames: int = 100) -> dict[str, object]:
    # the shape Pipeline.stats() returns
    return {
        "frames": frames,
        "frames_dropped": 3,
        "bad_inputs": 1,
        "inferences": frames - 4,
        "inference_errors": 0,
        "published": frames - 5,
        "publish_failed": 0,
        "queue_depth": 2,
        "unacked_at_stop": 0,
        "inference_ms_p50": 4.5,
    }


def test_telemetry_message_shape_and_json() -> None:
    window = LatencyWindow()
    for ms in (1.0, 2.0, 3.0):
        window.add(ms)
    stats = {**_pipeline_stats(), "latency_ms": window}
    accel = {"cpu": {"inferences": np.int64(96), "latency_ms": window.snapshot()}}
    outbox = {"backlog": 7, "backlog_bytes": 1234}
    placement = {"cam": {"segments": [("cpu", 0, 10)], "predicted_ms": np.float32(2.5)}}
    ota = {"state": "idle", "path": Path("/var/lib/edge-agent")}
    msg = telemetry_message({"cpu_percent": 12.5}, {"cam": stats}, accel, outbox, placement, ota, now=NOW)

    text = json.dumps(msg, allow_nan=False)  # numpy scalars, tuples, paths and windows all converted
    assert json.loads(text) == msg
    assert set(msg) == {"ts", "system", "pipelines", "accelerators", "outbox", "placement", "ota"}
    assert msg["ts"] == "2023-11-14T22:13:20.000Z"
    cam = msg["pipelines"]["cam"]
    assert cam["frames"] == 100
    assert cam["frames_dropped"] == 3
    assert cam["latency_ms"] == {"count": 3, "window": 3, "p50": 2.0, "p90": 2.8, "p99": 2.98}
    assert msg["accelerators"]["cpu"]["inferences"] == 96
    assert msg["outbox"] == outbox
    assert msg["placement"]["cam"] == {"segments": [["cpu", 0, 10]], "predicted_ms": 2.5}
    assert msg["ota"] == {"state": "idle", "path": "/var/lib/edge-agent"}


def test_telemetry_message_is_a_copy_and_strict_json() -> None:
    stats = {**_pipeline_stats(), "weird": float("nan"), "big": float("inf")}
    system = {"memory": {"percent": 20.0}}
    msg = telemetry_message(system, {"cam": stats}, {}, None, {}, None, now=NOW)
    stats["frames"] = 999
    system["memory"]["percent"] = 99.0
    assert msg["pipelines"]["cam"]["frames"] == 100
    assert msg["system"]["memory"]["percent"] == 20.0
    assert msg["pipelines"]["cam"]["weird"] is None
    assert msg["pipelines"]["cam"]["big"] is None
    assert msg["outbox"] is None
    assert msg["ota"] is None
    json.dumps(msg, allow_nan=False)


def test_a_pipeline_without_a_window_reports_its_own_median() -> None:
    msg = telemetry_message({}, {"cam": _pipeline_stats()}, {}, None, {}, None, now=NOW)
    assert msg["pipelines"]["cam"]["latency_ms"] == {"count": 96, "p50": 4.5, "p90": None, "p99": None}


def test_rates_against_the_previous_message() -> None:
    first = telemetry_message({}, {"cam": _pipeline_stats(100), "mic": _pipeline_stats(50)}, {}, None, {}, None, NOW)
    assert first["pipelines"]["cam"]["frames_per_s"] is None  # nothing to compare with yet
    # two seconds later: cam took 60 more frames; mic restarted (its counters went back)
    second = telemetry_message(
        {},
        {"cam": _pipeline_stats(160), "mic": _pipeline_stats(10), "new": _pipeline_stats(5)},
        {},
        None,
        {},
        None,
        NOW + 2.0,
        previous=json.loads(json.dumps(first)),  # as read back from the wire works too
    )
    cam = second["pipelines"]["cam"]
    assert cam["frames_per_s"] == 30.0
    assert cam["inferences_per_s"] == 30.0
    assert cam["published_per_s"] == 30.0
    assert cam["frames_dropped_per_s"] == 0.0
    assert second["pipelines"]["mic"]["frames_per_s"] is None
    assert second["pipelines"]["new"]["frames_per_s"] is None
    # a previous message from the same instant (or a broken one) gives no rate rather than a division by zero
    same = telemetry_message({}, {"cam": _pipeline_stats(160)}, {}, None, {}, None, NOW, previous=first)
    assert same["pipelines"]["cam"]["frames_per_s"] is None
    broken = telemetry_message({}, {"cam": _pipeline_stats(160)}, {}, None, {}, None, NOW, previous={"ts": "x"})
    assert broken["pipelines"]["cam"]["frames_per_s"] is None


def test_a_real_snapshot_goes_into_a_message() -> None:
    msg = telemetry_message(system_snapshot(), {}, {}, None, {}, None)
    assert msg["system"]["process"]["rss"] > 0
    json.dumps(msg, allow_nan=False)
