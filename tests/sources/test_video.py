"""Video replay on MJPG files written here with OpenCV; the camera source on devices that are not there."""

from __future__ import annotations

import importlib
import logging
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import SourceError
from agent.sources import video
from agent.sources.base import Frame
from agent.sources.video import CameraRunner, CameraSource, VideoRunner, VideoSource
from tests.sources.playing import play as run_source

try:
    cv2: Any = importlib.import_module("cv2")
except ImportError:
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV is not installed: pip install opencv-python-headless")

FPS = 20
W, H = 64, 48


def colour(i: int) -> tuple[int, int, int]:
    """Frame i's RGB colour: every channel differs, so a BGR/RGB swap shows."""
    return (i * 6, 250 - i * 6, 40 + i * 5)


def write_video(path: Path, n: int = 20) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert writer.isOpened()
    for i in range(n):
        r, g, b = colour(i)
        writer.write(np.full((H, W, 3), (b, g, r), np.uint8))  # OpenCV writes BGR
    writer.release()
    return path


def corrupt_frames(path: Path, frames: list[int]) -> None:
    """Zero the JPEG data of the given frames in an MJPG AVI, leaving the container intact."""
    data = bytearray(path.read_bytes())
    at = data.index(b"movi")
    end = data.index(b"idx1")
    chunks: list[tuple[int, int]] = []
    while (at := data.find(b"00dc", at, end)) >= 0:
        size = struct.unpack("<I", data[at + 4 : at + 8])[0]
        chunks.append((at + 8, size))
        at += 8 + size
    for k in frames:
        start, size = chunks[k]
        data[start : start + size] = bytes(size)
    path.write_bytes(bytes(data))


def play(cfg: VideoSource, stop_after: int = 0) -> tuple[list[Frame], VideoRunner]:
    return run_source(VideoRunner, cfg, stop_after)


def video_cfg(path: Path, **kw: Any) -> VideoSource:
    return VideoSource(type="video", path=path, realtime=False, loop=kw.pop("loop", False), **kw)


def nearest(frame: Frame, n: int) -> int:
    """Which frame's colour this one is closest to, after checking it is one solid colour."""
    mean = frame.data.reshape(-1, 3).mean(axis=0)
    assert np.abs(frame.data.astype(np.int16) - mean.astype(np.int16)).max() <= 6  # MJPG is lossy
    return int(np.argmin([np.abs(mean - colour(i)).sum() for i in range(n)]))


@needs_cv2
def test_every_frame_in_rgb_order_with_meta(tmp_path: Path) -> None:
    frames, runner = play(video_cfg(write_video(tmp_path / "clip.avi")))
    assert len(frames) == 20
    assert all(f.data.shape == (H, W, 3) and f.data.dtype == np.uint8 and not f.is_tensor for f in frames)
    assert [nearest(f, 20) for f in frames] == list(range(20))
    np.testing.assert_allclose(frames[0].data[0, 0], colour(0), atol=6)  # red first: not BGR
    assert [f.meta["frame"] for f in frames] == list(range(20))
    assert [f.meta["pos_s"] for f in frames] == pytest.approx([i / FPS for i in range(20)])
    assert frames[0].origin == "clip.avi"
    assert runner.bad_inputs == 0


@needs_cv2
def test_every_second_frame(tmp_path: Path) -> None:
    frames, _ = play(video_cfg(write_video(tmp_path / "clip.avi"), every=2))
    assert [f.meta["frame"] for f in frames] == list(range(0, 20, 2))
    assert [nearest(f, 20) for f in frames] == list(range(0, 20, 2))


@needs_cv2
def test_rate_from_the_file_when_realtime(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi")
    stop = threading.Event()
    assert VideoRunner(VideoSource(type="video", path=path), lambda f: None, stop).rate_hz == FPS
    assert VideoRunner(VideoSource(type="video", path=path, every=4), lambda f: None, stop).rate_hz == FPS / 4
    assert VideoRunner(VideoSource(type="video", path=path, rate_hz=0), lambda f: None, stop).rate_hz == 0
    assert VideoRunner(VideoSource(type="video", path=path, rate_hz=3), lambda f: None, stop).rate_hz == 3
    assert VideoRunner(video_cfg(path), lambda f: None, stop).rate_hz == 0


@needs_cv2
def test_loop_and_restart_start_from_the_first_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.avi", n=3)
    frames, _ = play(video_cfg(path, loop=True), stop_after=7)
    assert [f.meta["frame"] for f in frames] == [0, 1, 2, 0, 1, 2, 0]

    seen: list[int] = []
    stop = threading.Event()

    def emit(frame: Frame) -> None:
        seen.append(frame.meta["frame"])
        if len(seen) == 2:
            runner.restart()

    runner = VideoRunner(video_cfg(path), emit, stop)
    runner.run()
    assert seen == [0, 1, 0, 1, 2]


@needs_cv2
def test_a_frame_that_cannot_be_decoded_is_counted_and_skipped(tmp_path: Path) -> None:
    path = write_video(tmp_path / "scratched.avi", n=40)
    corrupt_frames(path, [4])
    frames, runner = play(video_cfg(path))
    indexes = [f.meta["frame"] for f in frames]
    assert 4 not in indexes
    assert runner.bad_inputs >= 1
    assert len(frames) + runner.bad_inputs == 40  # every slot of the file either handed over or counted
    assert [nearest(f, 40) for f in frames[:4]] == [0, 1, 2, 3]


@needs_cv2
def test_many_undecodable_frames_in_a_row_end_with_an_error(tmp_path: Path) -> None:
    path = write_video(tmp_path / "wrecked.avi", n=40)
    corrupt_frames(path, list(range(4, 24)))
    with pytest.raises(SourceError, match=r"wrecked\.avi: 10 frames in a row .* re-encode"):
        play(video_cfg(path))


@needs_cv2
def test_unreadable_files_fail_at_start(tmp_path: Path) -> None:
    noise = tmp_path / "noise.avi"
    noise.write_bytes(np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"noise\.avi: not a video OpenCV can read .*ffmpeg") as info:
        VideoRunner(video_cfg(noise), lambda f: None, threading.Event())
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match=r"missing\.mp4: no such file"):
        VideoRunner(video_cfg(tmp_path / "missing.mp4"), lambda f: None, threading.Event())


def test_without_opencv_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(SourceError, match=r"pip install 'edge-agent\[video\]'"):
        VideoRunner(video_cfg(tmp_path / "clip.avi"), lambda f: None, threading.Event())
    with pytest.raises(SourceError, match=r"pip install 'edge-agent\[video\]'"):
        CameraRunner(CameraSource(type="camera"), lambda f: None, threading.Event())


class StopAfterWaits(threading.Event):
    """A stop flag that sets itself at the n-th wait: the retries of open_with_retry, counted without timing."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        if self.waits >= self.n:
            self.set()
        return super().wait(timeout)


@needs_cv2
def test_missing_camera_is_logged_once_and_retried_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    stop = StopAfterWaits(5)
    runner = CameraRunner(CameraSource(type="camera", device="/dev/video99", retry_s=0.001), lambda f: None, stop)
    attempts = 0
    real_open = runner._open

    def counting_open() -> Any:
        nonlocal attempts
        attempts += 1
        return real_open()

    runner._open = counting_open  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="agent.sources"):
        runner.run()  # returns, does not raise
    assert attempts == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "camera /dev/video99 not found" in errors[0] and "ls /dev/video*" in errors[0]


@needs_cv2
def test_a_device_that_is_not_a_camera_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    stop = StopAfterWaits(3)
    runner = CameraRunner(CameraSource(type="camera", device="/dev/null", retry_s=0.001), lambda f: None, stop)
    with caplog.at_level(logging.ERROR, logger="agent.sources"):
        runner.run()
    assert stop.waits == 3
    assert [r.getMessage() for r in caplog.records].count(
        "camera /dev/null cannot be opened: busy (another program has it) or not a capture device "
        "(v4l2-ctl --list-devices) (trying again every 0.001 s)"
    ) == 1


@needs_cv2
def test_camera_index_names_its_device() -> None:
    runner = CameraRunner(CameraSource(type="camera", device="99"), lambda f: None, threading.Event())
    assert runner.device == 99 and runner.origin == "camera:99"
    if sys.platform.startswith("linux"):
        with pytest.raises(SourceError, match="camera /dev/video99 not found"):
            runner._open()


class FakeCapture:
    """Stands in for a camera that delivers ``frames`` frames and then goes silent."""

    def __init__(self, frames: int) -> None:
        self.left = frames
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left == 0:
            return False, None
        self.left -= 1
        return True, np.full((H, W, 3), (255, 0, 0), np.uint8)  # BGR blue

    def release(self) -> None:
        self.released = True


@needs_cv2
def test_a_camera_that_goes_silent_is_opened_again(caplog: pytest.LogCaptureFixture) -> None:
    frames: list[Frame] = []
    stop = threading.Event()
    runner = CameraRunner(CameraSource(type="camera", retry_s=0.001), frames.append, stop)
    captures = [FakeCapture(3), FakeCapture(2)]
    opened: list[FakeCapture] = []

    def fake_open() -> FakeCapture:
        if not captures:
            stop.set()
            raise SourceError("camera /dev/video0 not found")
        opened.append(captures.pop(0))
        return opened[-1]

    runner._open = fake_open  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="agent.sources"):
        runner.run()
    assert [f.meta["frame"] for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.origin == "camera:/dev/video0" for f in frames)
    np.testing.assert_array_equal(frames[0].data[0, 0], [0, 0, 255])  # RGB
    assert all(c.released for c in opened)
    assert runner.bad_inputs == 2
    assert sum("stopped delivering frames" in r.getMessage() for r in caplog.records) == 2


def test_camera_config_rejects_unknown_keys_and_bad_fourcc() -> None:
    with pytest.raises(ValueError, match="resolution"):
        CameraSource.model_validate({"type": "camera", "resolution": "640x480"})
    with pytest.raises(ValueError, match="fourcc"):
        CameraSource(type="camera", fourcc="MJPEG")
    assert CameraSource.model_validate({"type": "camera", "device": 2}).device == 2
    assert video.MAX_BAD_IN_A_ROW == 10
