"""Replay a folder of images or ``.npy`` tensors at a set rate, once or looping."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.config import ReplaySource
from agent.errors import SourceError
from agent.sources.base import Frame
from agent.sources.pacing import Runner

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
TENSOR_SUFFIXES = frozenset({".npy"})
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs rather than eat the device's memory


def list_files(cfg: ReplaySource) -> list[Path]:
    """The files a replay source will play, in name order; SourceError if there are none."""
    if cfg.path.is_file():
        files = [cfg.path]
    elif cfg.path.is_dir():
        files = sorted(
            p
            for p in cfg.path.glob(cfg.pattern)
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | TENSOR_SUFFIXES
        )
    else:
        raise SourceError(f"{cfg.path}: no such file or folder")
    if not files:
        raise SourceError(f"{cfg.path}: no image (.jpg, .png, ...) or .npy files match {cfg.pattern!r}")
    return files


def read_file(path: Path) -> Frame:
    """Decode one file into a Frame; SourceError (one line) when it is unreadable."""
    now = time.time()
    if path.suffix.lower() in TENSOR_SUFFIXES:
        try:
            tensor = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise SourceError(f"{path}: not a readable .npy tensor ({exc})") from None
        return Frame(tensor, now, path.name, is_tensor=True)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise SourceError(f"{path}: image of {img.width}x{img.height} pixels is too large")
            img.load()
            mode = "L" if img.mode in ("L", "I", "I;16", "1") else "RGB"
            pixels = np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SourceError(f"{path}: unreadable image ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W, 1)
    return Frame(pixels, now, path.name, meta={"width": pixels.shape[1], "height": pixels.shape[0]})


class ReplayRunner(Runner):
    """Runs in its own thread: reads files and hands frames to ``emit`` at the configured rate."""

    def __init__(self, cfg: ReplaySource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cfg = cfg
        self.files = list_files(cfg)
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self._cache: dict[Path, Frame] = {}
        self._cache_left = int(cfg.cache_mb * 1024 * 1024)

    def run(self) -> None:
        while not self.stop.is_set():
            good = 0
            self._begin_pass()
            for path in self.files:
                if self.stop.is_set():
                    return
                if self._restart.is_set():
                    break
                if not self._pacer.wait(self.rate_hz):
                    return
                try:
                    frame = self._read(path)
                except SourceError as exc:
                    self.bad_inputs += 1
                    log.warning("skipping input: %s", exc)
                    continue
                good += 1
                self.emit(frame)
            if self._restart.is_set():
                log.info("replay of %s starts over", self.cfg.path)
                continue
            if good == 0:
                raise SourceError(f"{self.cfg.path}: none of {len(self.files)} file(s) could be read")
            if not self.cfg.loop:
                return

    def _read(self, path: Path) -> Frame:
        cached = self._cache.get(path)
        if cached is not None:
            return dataclasses.replace(cached, ts=time.time())
        frame = read_file(path)
        if self.cfg.loop and frame.data.nbytes <= self._cache_left:
            self._cache[path] = frame
            self._cache_left -= frame.data.nbytes
        return frame
