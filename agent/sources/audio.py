"""Audio sources: a WAV file replayed in windows, or a live microphone (sounddevice, optional)."""

from __future__ import annotations

import contextlib
import importlib
import logging
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
from agent.sources.pcm import SampleWindower, read_wav, resample

log = logging.getLogger(__name__)


class WavSource(Section):
    type: Literal["wav"] = Field(description="Replay a PCM WAV file (8/16/24/32-bit) in windows of samples.")
    path: Path = Field(description="The WAV file; stereo and multi-channel files are mixed down to mono.")
    window: int = Field(16000, ge=1, description="Samples per frame: the tensor is (window,) float32 in [-1, 1].")
    hop: int | None = Field(
        None, ge=1, description="Samples from the start of one window to the start of the next; unset: window."
    )
    sample_rate: int | None = Field(
        None,
        gt=0,
        description="Resample to this rate (Hz) when the file's differs, by linear interpolation after a low-pass "
        "filter; unset: the file's own rate.",
    )
    realtime: bool = Field(
        True, description="One window every hop / sample_rate seconds, as a microphone would; false: as fast as taken."
    )
    loop: bool = Field(True, description="Start over after the last window; false stops the pipeline after one pass.")


class MicrophoneSource(Section):
    type: Literal["microphone"] = Field(description="Record from a microphone (needs edge-agent[audio]).")
    device: str | None = Field(
        None,
        description="Input device: its number or part of its name, as `python -m sounddevice` lists them; "
        "unset: the system default.",
    )
    sample_rate: int = Field(16000, gt=0, description="Samples per second to record at.")
    channels: int = Field(1, ge=1, description="Channels to record; they are mixed down to mono.")
    window: int = Field(16000, ge=1, description="Samples per frame: the tensor is (window,) float32 in [-1, 1].")
    hop: int | None = Field(
        None, ge=1, description="Samples from the start of one window to the start of the next; unset: window."
    )
    rate_hz: float = Field(
        0.0, ge=0, description="At most this many windows per second (later ones are dropped); 0: every window."
    )
    retry_s: float = Field(2.0, gt=0, description="Seconds between attempts to open a device that is missing or busy.")


class WavRunner(Runner):
    """Runs in its own thread: hands windows of a WAV file to ``emit``, in real time or as fast as taken.

    The file is decoded into memory once (4 bytes a sample: 230 MB for an hour at 16 kHz), on the first
    pass, in this thread; a tail shorter than a window is not played.
    """

    def __init__(self, cfg: WavSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cfg = cfg
        self.hop = cfg.hop if cfg.hop is not None else cfg.window
        header = read_wav(cfg.path, header_only=True)  # a non-WAV file fails here, before the pipeline starts
        self.sample_rate = cfg.sample_rate or header.sample_rate
        # changed at run time by the pipeline-rate command; 0: as fast as taken
        self.rate_hz = self.sample_rate / self.hop if cfg.realtime else 0.0
        self._samples: np.ndarray | None = None

    def run(self) -> None:
        samples = self._load()
        starts = range(0, len(samples) - self.cfg.window + 1, self.hop)
        while not self.stop.is_set():
            self._begin_pass()
            for start in starts:
                if self._restart.is_set() or not self._pacer.wait(self.rate_hz):
                    break
                window = samples[start : start + self.cfg.window]  # (window,)
                meta = {"offset_s": start / self.sample_rate, "sample_rate": self.sample_rate}
                self.emit(Frame(window, time.time(), self.cfg.path.name, is_tensor=True, meta=meta))
            if self.stop.is_set():
                return
            if self._restart.is_set():
                log.info("replay of %s starts over", self.cfg.path)
                continue
            if not self.cfg.loop:
                return

    def _load(self) -> np.ndarray:
        if self._samples is None:
            audio = read_wav(self.cfg.path)
            if audio.truncated:
                self.bad_inputs += 1
                log.warning(
                    "%s: the file ends before its header says; playing the %d whole frames it has",
                    self.cfg.path,
                    len(audio.samples),
                )
            samples = resample(audio.samples, audio.sample_rate, self.sample_rate)
            if len(samples) < self.cfg.window:
                raise SourceError(
                    f"{self.cfg.path}: {len(samples)} samples at {self.sample_rate} Hz, fewer than one window of "
                    f"{self.cfg.window}; use a smaller window"
                )
            self._samples = samples
        return self._samples


def import_sounddevice() -> Any:
    """The sounddevice module, imported only by the microphone source."""
    try:
        return importlib.import_module("sounddevice")
    except ImportError:
        raise SourceError("the microphone source needs sounddevice: pip install 'edge-agent[audio]'") from None
    except OSError as exc:  # sounddevice is there, the PortAudio library it loads is not
        raise SourceError(f"sounddevice cannot load PortAudio ({exc}): apt-get install libportaudio2") from None


class MicrophoneRunner(Runner):
    """Runs in its own thread: records windows from a microphone, waiting for the device while it is missing."""

    def __init__(self, cfg: MicrophoneSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.sd = import_sounddevice()
        self.cfg = cfg
        # bad_inputs counts blocks the device overwrote before they were read
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self.hop = cfg.hop if cfg.hop is not None else cfg.window
        self.origin = f"microphone:{cfg.device or 'default'}"
        self._warned = False

    def run(self) -> None:
        while not self.stop.is_set():
            stream = open_with_retry(self._open, self.stop, self.cfg.retry_s)
            if stream is None:
                return
            log.info("%s recording at %d Hz", self.origin, self.cfg.sample_rate)
            try:
                self._record(stream)
            except self.sd.PortAudioError as exc:
                log.warning("%s failed (%s); opening it again", self.origin, exc)
            finally:
                with contextlib.suppress(self.sd.PortAudioError):
                    stream.close()

    def _open(self) -> Any:
        name = self.cfg.device
        device: str | int | None = int(name) if name is not None and name.isdigit() else name
        try:
            stream = self.sd.InputStream(
                device=device, channels=self.cfg.channels, samplerate=self.cfg.sample_rate, dtype="float32"
            )
            stream.start()
        except (self.sd.PortAudioError, ValueError) as exc:
            raise SourceError(
                f"{self.origin} cannot be opened ({exc}); list the devices with: python -m sounddevice"
            ) from None
        return stream

    def _record(self, stream: Any) -> None:
        windows = SampleWindower(self.cfg.window, self.hop)
        while not self.stop.is_set():
            if self._restart.is_set():
                self._restart.clear()
                windows.reset()
            block, overflowed = stream.read(self.hop)  # (hop, channels); blocks for hop / sample_rate s
            if overflowed:
                self.bad_inputs += 1
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "%s: samples were lost (the pipeline reads too slowly); counted from now on", self.origin
                    )
            for window, start in windows.push(np.asarray(block, np.float32).mean(axis=1)):
                if self._pacer.due(self.rate_hz):
                    meta = {"offset_s": start / self.cfg.sample_rate, "sample_rate": self.cfg.sample_rate}
                    self.emit(Frame(window, time.time(), self.origin, is_tensor=True, meta=meta))
