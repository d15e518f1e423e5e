"""A source's runner from its config: each runs in its own thread and hands Frames to the pipeline.

A source that cannot start (a video OpenCV cannot open, a missing audio file, a taken port) fails its own
pipeline only: ``make_source`` hands back a runner that raises the error when the pipeline runs it, so that the
daemon's other pipelines keep serving and the failed one's status says what to fix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from agent.config import FILE_SOURCES, ReplaySource, SingleSource
from agent.errors import SourceError
from agent.sources.audio import MicrophoneRunner, MicrophoneSource, WavRunner, WavSource
from agent.sources.base import Frame
from agent.sources.http_input import HttpInputRunner, HttpInputSource
from agent.sources.lines import LinesRunner, LinesSource, SerialRunner, SerialSource
from agent.sources.mqtt_input import MqttInputRunner, MqttInputSource
from agent.sources.replay import ReplayRunner
from agent.sources.synthetic import SyntheticRunner, SyntheticSource
from agent.sources.video import CameraRunner, CameraSource, VideoRunner, VideoSource


class SourceRunner(Protocol):
    @property
    def bad_inputs(self) -> int: ...  # malformed input counted and skipped, never fatal

    rate_hz: float  # frames (windows) per second; the pipeline-rate command changes it

    def run(self) -> None: ...  # blocking: in the pipeline's source thread, until the input ends or stop is set

    def restart(self) -> None: ...  # start over from the beginning where that makes sense


class FailedSource:
    """The runner of a source that could not start: running it raises why, which ends only its pipeline."""

    def __init__(self, error: SourceError) -> None:
        self.error = error
        self.bad_inputs = 0
        self.rate_hz = 0.0

    def run(self) -> None:
        raise self.error

    def restart(self) -> None:
        """Nothing to start over: the restart-pipeline command builds the source afresh."""


def make_source(cfg: SingleSource, emit: Callable[[Frame], None], stop: threading.Event) -> SourceRunner:
    """The source's runner; a source that cannot start gives a FailedSource (its pipeline's error, not the
    daemon's). A ConfigError (an MQTT input's CA file that cannot be loaded) still stops the start."""
    try:
        return _runner(cfg, emit, stop)
    except SourceError as exc:
        return FailedSource(exc)


def check_source(cfg: SingleSource) -> None:
    """Open a file source as its pipeline would at start, reading nothing further; SourceError (one line) if
    it cannot be. Other sources are left alone: a check must not take a camera or a port from a running daemon."""
    if isinstance(cfg, FILE_SOURCES):
        _runner(cfg, lambda _frame: None, threading.Event())


RUNNERS: dict[type, Callable[..., SourceRunner]] = {
    ReplaySource: ReplayRunner,
    LinesSource: LinesRunner,
    SerialSource: SerialRunner,
    WavSource: WavRunner,
    MicrophoneSource: MicrophoneRunner,
    SyntheticSource: SyntheticRunner,
    MqttInputSource: MqttInputRunner,
    HttpInputSource: HttpInputRunner,
    VideoSource: VideoRunner,
    CameraSource: CameraRunner,
}


def _runner(cfg: SingleSource, emit: Callable[[Frame], None], stop: threading.Event) -> SourceRunner:
    return RUNNERS[type(cfg)](cfg, emit, stop)
