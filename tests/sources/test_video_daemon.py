"""The video source in the real daemon: a video file made here from the demo photos (astronaut and coffee
frames in turn, 10 fps), BlazeFace with SSD post-processing, results read from a real mosquitto. A second
pipeline replays a truncated copy, or a file OpenCV cannot open at all: it fails on its own, with one clear
line, while the first one goes on; only a daemon left with no pipeline at all exits."""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paho.mqtt import publish

from agent.mqtt.localbroker import Mosquitto
from tests.conftest import ASSETS, FACE_MODEL, ROOT, Subscriber, write_config

try:
    cv2: Any = importlib.import_module("cv2")
except ImportError:
    cv2 = None
pytestmark = pytest.mark.skipif(cv2 is None, reason="OpenCV is not installed: pip install opencv-python-headless")

FPS = 10
SIZE = 512  # the astronaut photo is 512x512; the coffee photo is stretched to it
ASTRONAUT_FACE = [179, 82, 274, 176]  # the demo's box around her face, in the photo's pixels
DEVICE = "vid"


def pipeline(name: str, video: Path) -> str:
    return f"""
[[pipelines]]
name = "{name}"
source = {{ type = "video", path = "{video}", loop = true }}
model = {{ path = "{FACE_MODEL}" }}
preprocess = {{ resize = "letterbox", mean = [127.5], std = [127.5] }}
postprocess = {{ type = "ssd", labels = ["face"], score_threshold = 0.6, iou_threshold = 0.3 }}
"""


def write_video(path: Path, frames: int, fourcc: str = "MJPG") -> Path:
    """A video at FPS (MJPG in AVI, or MPEG-4 part 2 in MP4): even frames the astronaut, odd ones the coffee cup."""
    astronaut = cv2.imread(str(ASSETS / "images" / "astronaut.jpg"))  # (512, 512, 3) BGR
    coffee = cv2.resize(cv2.imread(str(ASSETS / "images" / "coffee.jpg")), (SIZE, SIZE))
    assert astronaut.shape == (SIZE, SIZE, 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (SIZE, SIZE))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for i in range(frames):
        writer.write(astronaut if i % 2 == 0 else coffee)
    writer.release()
    return path


def truncate(path: Path, out: Path, keep: float) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def ask_status(port: int, sub: Subscriber, n: int) -> dict[str, Any]:
    """The agent's status command, over MQTT: the reply's result."""
    publish.single(f"edge/{DEVICE}/cmd/status", json.dumps({"id": f"s{n}"}), qos=1, hostname="127.0.0.1", port=port)
    reply = sub.wait_for(lambda m: m.topic == f"edge/{DEVICE}/cmd/status/reply" and m.json().get("id") == f"s{n}")
    body = reply.json()
    assert body["ok"], body
    result: dict[str, Any] = body["result"]
    return result


def test_faces_in_a_video_file_and_a_truncated_one_that_fails_alone(
    mosquitto: Mosquitto, subscribe: Any, agent_process: Any, tmp_path: Path
) -> None:
    good = write_video(tmp_path / "faces.avi", 2 * FPS)
    # the header (and its frame count, 40) intact, the second half of the frames gone
    broken = truncate(write_video(tmp_path / "long.avi", 4 * FPS), tmp_path / "truncated.avi", 0.5)
    config = write_config(tmp_path, mosquitto.port, pipeline("good", good) + pipeline("broken", broken), DEVICE)
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/#")
    agent = agent_process(["run", "--config", str(config)])

    # the broken pipeline plays what is left of its file, then fails: its status says why
    agent.wait_log("truncated.avi: frame")  # the first frame that cannot be decoded (a warning)
    deadline = time.monotonic() + 30
    for n in itertools.count():
        status = ask_status(mosquitto.port, sub, n)["pipelines"]
        if status["broken"]["error"] is not None or time.monotonic() > deadline:
            break
    error = status["broken"]["error"]
    assert error is not None, status["broken"]
    assert str(broken) in error and "cannot be decoded; the file is damaged: re-encode it" in error
    assert "\n" not in error
    assert status["good"]["error"] is None

    # ... while the good one goes on: results from here on come after the broken pipeline stopped
    results = [sub.wait_for(lambda m: m.topic == f"edge/{DEVICE}/good/result").json() for _ in range(int(2.5 * FPS))]
    assert agent.stop() == 0
    log = "".join(agent.log)
    assert f"pipeline broken stopped: {error}" in log  # the one line, again, in the journal
    assert "Traceback" not in log

    seqs = [r["seq"] for r in results]
    assert all(b > a for a, b in itertools.pairwise(seqs)), seqs
    stamps = [r["source"]["ts"] for r in results]
    assert stamps == sorted(stamps)  # ISO 8601 UTC: in text order is in time order
    frames = [r["source"]["frame"] for r in results]
    assert set(frames) <= set(range(2 * FPS))
    # within a pass the frame and its position in the file only grow; the loop starts over at frame 0
    restarts = 0
    for r, nxt in itertools.pairwise(results):
        if nxt["source"]["frame"] > r["source"]["frame"]:
            assert nxt["source"]["pos_s"] > r["source"]["pos_s"]
        else:
            assert nxt["source"]["frame"] <= 1  # frame 0, or 1 if the newest-first queue dropped 0
            restarts += 1
    assert restarts >= 1  # 2.5 s of results from a 2 s file: it looped
    for r in results:
        assert r["source"]["origin"] == "faces.avi"
        assert r["source"]["pos_s"] == pytest.approx(r["source"]["frame"] / FPS, abs=1e-3)

    astronaut = [r for r in results if r["source"]["frame"] % 2 == 0]
    coffee = [r for r in results if r["source"]["frame"] % 2 == 1]
    assert astronaut and coffee
    for r in astronaut:
        (face,) = r["detections"]
        assert face["label"] == "face" and face["score"] > 0.8
        # MJPG compression moves it by a pixel or two, no more
        assert np.allclose(face["box"], ASTRONAUT_FACE, atol=4), face["box"]
    assert all(r["detections"] == [] for r in coffee), [r["detections"] for r in coffee if r["detections"]]


CANNOT_OPEN = (
    "not a video OpenCV can read (damaged, or an unknown codec); check it plays, or re-encode it: "
    "ffmpeg -i IN -c:v libx264 OUT.mp4"
)


def cut_recording(tmp_path: Path) -> Path:
    """A recording cut short before its index was written (an MP4 without its moov atom, at the end): no video
    at all, OpenCV cannot open it."""
    return truncate(write_video(tmp_path / "recording.mp4", 2 * FPS, "mp4v"), tmp_path / "cut.mp4", 0.5)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)  # fmt: skip


def test_a_video_file_opencv_cannot_open_fails_only_its_own_pipeline(
    mosquitto: Mosquitto, subscribe: Any, agent_process: Any, tmp_path: Path
) -> None:
    """The daemon starts with the pipelines that can: the broken one is logged once, as it fails, and its status
    says what to fix; the good one serves. A config check names the file before anything runs."""
    good = write_video(tmp_path / "faces.avi", 2 * FPS)
    cut = cut_recording(tmp_path)
    config = write_config(tmp_path, mosquitto.port, pipeline("good", good) + pipeline("broken", cut), DEVICE)
    config.write_text(config.read_text().replace("[agent]\n", "[agent]\nstatus_interval_s = 0.2\n"))
    sub = subscribe(mosquitto.port, f"edge/{DEVICE}/#")
    agent = agent_process(["run", "--config", str(config)])

    expected = f"{cut}: {CANNOT_OPEN}"
    line = agent.wait_log("pipeline broken stopped: ")  # logged as it fails, not only at shutdown
    assert line.rstrip("\n").endswith(f"ERROR agent.pipeline: pipeline broken stopped: {expected}"), line
    results = [sub.wait_for(lambda m: m.topic == f"edge/{DEVICE}/good/result").json() for _ in range(FPS)]
    assert all(r["source"]["origin"] == "faces.avi" for r in results)

    status = ask_status(mosquitto.port, sub, 0)["pipelines"]
    assert status["broken"]["error"] == expected
    assert status["good"]["error"] is None and status["good"]["inferences"] > 0

    # `edge-agent status`: the daemon's own status file
    deadline = time.monotonic() + 30
    while True:
        shown = cli("status", "--config", str(config))
        if f"[stopped: {expected}]" in shown.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert any(ln.startswith("pipeline broken: ") and ln.endswith(f"[stopped: {expected}]") for ln in lines), lines
    assert any(ln.startswith("pipeline good: ") and ln.endswith("[ok]") for ln in lines), lines

    # the check names the pipeline and the file, one line, exit 2
    checked = cli("config", "check", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    # (FFmpeg may say "moov atom not found" before it, on its own)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("edge-agent: error:")]
    assert errors == [f"edge-agent: error: {config}: pipelines.broken.source: {expected}"], checked.stderr
    assert "Traceback" not in checked.stderr

    assert agent.stop() == 0  # the good pipeline served until the stop: a clean exit
    log = "".join(agent.log)
    assert log.count("pipeline broken stopped: ") == 1, log  # once, not again at shutdown
    assert "pipeline good stopped" not in log
    assert "Traceback" not in log


def test_a_daemon_whose_every_pipeline_cannot_start_exits_with_one_line(
    mosquitto: Mosquitto, agent_process: Any, tmp_path: Path
) -> None:
    """With no pipeline left to serve, the daemon ends: exit 2 and one line saying what to fix."""
    cut = cut_recording(tmp_path)
    config = write_config(tmp_path, mosquitto.port, pipeline("broken", cut), DEVICE)
    agent = agent_process(["run", "--config", str(config)])
    assert agent.proc.wait(60) == 2
    agent._reader.join(10)
    errors = [line for line in agent.log if line.startswith("edge-agent: error:")]
    assert errors == [f"edge-agent: error: {cut}: {CANNOT_OPEN}\n"], agent.log
    assert sum("pipeline broken stopped: " in line for line in agent.log) == 1, agent.log
    assert "Traceback" not in "".join(agent.log)
