"""Image sources read with OpenCV (optional): a video file replayed frame by frame, or a V4L2 camera."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from agent.errors import SourceError
from agent.schema import Section
from agent.sources.base import Frame
from agent.sources.pacing import Runner, open_with_retry

log = logging.getLogger(__name__)

MAX_BAD_IN_A_ROW = 10  # frames of a file that fail to decode one after another before the file counts as broken


class VideoSource(Section):
    type: Literal["video"] = Field(description="Replay a video file frame by frame (needs edge-agent[video]).")
    path: Path = Field(description="The video file: any container and codec the installed OpenCV reads (mp4, avi…).")
    every: int = Field(
        1, ge=1, description="Take every Nth frame of the file (1: all of them); the others are skipped."
    )
    realtime: bool = Field(
        True,
        description="Hand frames over at the file's own frame rate (divided by every), as a camera would; "
        "false: as fast as they are read.",
    )
    rate_hz: float | None = Field(
        None, ge=0, description="Frames per second to hand over, instead of what realtime says; 0: as fast as read."
    )
    loop: bool = Field(True, description="Start over after the last frame; false stops the pipeline after one pass.")


class CameraSource(Section):
    type: Literal["camera"] = Field(description="Capture from a V4L2 camera (needs edge-agent[video]).")
    device: str | int = Field(
        "/dev/video0",
        description="The camera: its device path (/dev/video0) or index (0); list with: v4l2-ctl --list-devices.",
    )
    width: int | None = Field(None, gt=0, description="Frame width (pixels) to ask for; unset: the driver's default.")
    height: int | None = Field(None, gt=0, description="Frame height (pixels) to ask for; unset: the driver's default.")
    fps: float | None = Field(None, gt=0, description="Frames per second to ask the camera for; unset: its default.")
    fourcc: str | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="Pixel format to ask for, e.g. MJPG (lets USB cameras reach higher sizes and rates than YUYV); "
        "unset: the driver's default.",
    )
    rate_hz: float = Field(
        0.0, ge=0, description="At most this many frames per second (later ones are dropped); 0: every frame."
    )
    retry_s: float = Field(2.0, gt=0, description="Seconds between attempts to open a camera that is missing or busy.")


def import_cv2() -> Any:
    """The OpenCV module, imported only by the sources that need it."""
    try:
        return importlib.import_module("cv2")
    except ImportError as exc:
        if exc.name not in (None, "cv2"):  # cv2 is there, a library it loads is not
            raise SourceError(f"OpenCV cannot load {exc.name} ({exc}): pip install opencv-python-headless") from None
        raise SourceError("the video and camera sources need OpenCV: pip install 'edge-agent[video]'") from None


def to_rgb(cv2: Any, image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey, or BGRA) image as RGB uint8 (H, W, 3)."""
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), np.uint8)
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), np.uint8)
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), np.uint8)


class VideoRunner(Runner):
    """Runs in its own thread: hands frames of a video file to ``emit``, in real time or as fast as read.

    A frame that fails to decode is counted in ``bad_inputs`` and skipped; MAX_BAD_IN_A_ROW of them one after
    another end the pipeline with a SourceError.
    """

    def __init__(self, cfg: VideoSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cv2 = import_cv2()
        self.cfg = cfg
        cap = self._open()  # a missing or unreadable file fails here: its pipeline's error, not the daemon's
        try:
            fps = float(cap.get(self.cv2.CAP_PROP_FPS))
            self.frame_count = max(0, int(cap.get(self.cv2.CAP_PROP_FRAME_COUNT)))  # 0: the file does not say
            if not cap.grab():
                raise SourceError(f"{cfg.path}: no frame can be decoded; check the file plays, or re-encode it")
        finally:
            cap.release()
        self.fps = fps if np.isfinite(fps) and fps > 0 else 0.0
        if cfg.rate_hz is not None:
            rate = cfg.rate_hz
        elif not cfg.realtime:
            rate = 0.0
        elif self.fps:
            rate = self.fps / cfg.every
        else:
            raise SourceError(f"{cfg.path}: the file does not say its frame rate; set rate_hz, or realtime = false")
        self.rate_hz = rate  # changed at run time by the pipeline-rate command

    def run(self) -> None:
        while not self.stop.is_set():
            self._begin_pass()
            cap = self._open()
            try:
                emitted = self._play(cap)
            finally:
                cap.release()
            if self.stop.is_set():
                return
            if self._restart.is_set():
                log.info("replay of %s starts over", self.cfg.path)
                continue
            if emitted == 0:  # every frame of the pass failed, fewer of them than MAX_BAD_IN_A_ROW
                raise SourceError(f"{self.cfg.path}: no frame can be decoded; check the file plays, or re-encode it")
            if not self.cfg.loop:
                return

    def _open(self) -> Any:
        if not self.cfg.path.is_file():
            raise SourceError(f"{self.cfg.path}: no such file")
        cap = self.cv2.VideoCapture(str(self.cfg.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{self.cfg.path}: not a video OpenCV can read (damaged, or an unknown codec); check it plays, "
                "or re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        return cap

    def _play(self, cap: Any) -> int:
        """One pass over the file; how many frames were handed over."""
        index = -1  # the frame's place in the file, failed ones included
        emitted = 0
        bad_in_a_row = 0
        while not self.stop.is_set() and not self._restart.is_set():
            index += 1
            if not cap.grab():  # decodes too: false at the end, or on a frame it could not decode
                if self.frame_count == 0 or index >= self.frame_count:
                    return emitted
                bad_in_a_row = self._bad(index, bad_in_a_row)
                continue
            if index % self.cfg.every:
                bad_in_a_row = 0
                continue
            pos_s = float(cap.get(self.cv2.CAP_PROP_POS_MSEC)) / 1000
            ok, image = cap.retrieve()
            if not ok or image is None:
                bad_in_a_row = self._bad(index, bad_in_a_row)
                continue
            bad_in_a_row = 0
            rgb = to_rgb(self.cv2, image)  # (H, W, 3)
            if not self._pacer.wait(self.rate_hz):
                break
            self.emit(Frame(rgb, time.time(), self.cfg.path.name, meta={"frame": index, "pos_s": pos_s}))
            emitted += 1
        return emitted

    def _bad(self, index: int, in_a_row: int) -> int:
        self.bad_inputs += 1
        in_a_row += 1
        if in_a_row == 1:
            log.warning("%s: frame %d cannot be decoded; skipped (counted as a bad input)", self.cfg.path, index)
        if in_a_row >= MAX_BAD_IN_A_ROW:
            raise SourceError(
                f"{self.cfg.path}: {in_a_row} frames in a row up to frame {index} cannot be decoded; the file is "
                "damaged: re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
            )
        return in_a_row


class CameraRunner(Runner):
    """Runs in its own thread: captures frames from a camera, waiting for it while it is missing or busy."""

    def __init__(self, cfg: CameraSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cv2 = import_cv2()
        self.cfg = cfg
        # bad_inputs counts reads that delivered no frame
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        device = cfg.device
        self.device: str | int = int(device) if isinstance(device, str) and device.isdigit() else device
        self.origin = f"camera:{self.device}"
        self.frames = 0

    def run(self) -> None:
        while not self.stop.is_set():
            cap = open_with_retry(self._open, self.stop, self.cfg.retry_s)
            if cap is None:
                return
            try:
                self._capture(cap)
            finally:
                cap.release()
            # opened but silent: wait before opening again, or a camera that never delivers would spin
            if self.stop.wait(self.cfg.retry_s):
                return

    def _open(self) -> Any:
        path = Path(f"/dev/video{self.device}" if isinstance(self.device, int) else self.device)
        if sys.platform.startswith("linux") or not isinstance(self.device, int):
            if not path.exists():
                raise SourceError(
                    f"camera {path} not found: check that it is plugged in and the device setting (ls /dev/video*)"
                )
            if not os.access(path, os.R_OK | os.W_OK):
                raise SourceError(f"camera {path} permission denied: add the agent's user to the video group")
        api = getattr(self.cv2, "CAP_V4L2", None) if sys.platform.startswith("linux") else None
        target = self.device if isinstance(self.device, int) else str(path)
        cap = self.cv2.VideoCapture(target, api if api is not None else self.cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {path} cannot be opened: busy (another program has it) or not a capture device "
                "(v4l2-ctl --list-devices)"
            )
        self._ask(cap)
        return cap

    def _ask(self, cap: Any) -> None:
        """Ask for the configured format; a driver picks the nearest it has, so log what it gives."""
        cv2, cfg = self.cv2, self.cfg
        if cfg.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)):
            if value is not None:
                cap.set(prop, value)
        if cfg.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        log.info("%s open: %dx%d at %g fps", self.origin, got[0], got[1], cap.get(cv2.CAP_PROP_FPS))
        if (cfg.width and cfg.width != got[0]) or (cfg.height and cfg.height != got[1]):
            log.warning("%s gives %dx%d, not the %sx%s asked for", self.origin, *got, cfg.width, cfg.height)

    def _capture(self, cap: Any) -> None:
        """Frames until stop, or until the camera delivers none (unplugged, or stalled past the driver's timeout)."""
        while not self.stop.is_set():
            if self._restart.is_set():
                self._restart.clear()
                self.frames = 0
                self._pacer.reset()
            ok, image = cap.read()  # blocks until the next frame
            if not ok or image is None:
                self.bad_inputs += 1
                log.warning("%s stopped delivering frames; opening it again", self.origin)
                return
            index = self.frames
            self.frames += 1
            if self._pacer.due(self.rate_hz):
                rgb = to_rgb(self.cv2, image)  # (H, W, 3)
                self.emit(Frame(rgb, time.time(), self.origin, meta={"frame": index}))
