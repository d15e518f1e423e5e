"""A source's runner from its config: each runs in its own thread and hands Frames to the pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from agent.config import SourceConfig
from agent.sources.audio import MicrophoneRunner, MicrophoneSource, WavRunner, WavSource
from agent.sources.base import Frame
from agent.sources.http_input import HttpInputRunner, HttpInputSource
from agent.sources.lines import LinesRunner, LinesSource, SerialRunner, SerialSource
from agent.sources.mqtt_input import MqttInputRunner, MqttInputSource
from agent.sources.replay import ReplayRunner
from agent.sources.synthetic import SyntheticRunner, SyntheticSource
from agent.sources.video import CameraRunner, CameraSource, VideoRunner, VideoSource


class SourceRunner(Protocol):
    bad_inputs: int  # malformed input counted and skipped, never fatal
    rate_hz: float  # frames (windows) per second; the pipeline-rate command changes it

    def run(self) -> None: ...  # blocking: in the pipeline's source thread, until the input ends or stop is set

    def restart(self) -> None: ...  # start over from the beginning where that makes sense


def make_source(cfg: SourceConfig, emit: Callable[[Frame], None], stop: threading.Event) -> SourceRunner:
    if isinstance(cfg, LinesSource):
        return LinesRunner(cfg, emit, stop)
    if isinstance(cfg, SerialSource):
        return SerialRunner(cfg, emit, stop)
    if isinstance(cfg, WavSource):
        return WavRunner(cfg, emit, stop)
    if isinstance(cfg, MicrophoneSource):
        return MicrophoneRunner(cfg, emit, stop)
    if isinstance(cfg, SyntheticSource):
        return SyntheticRunner(cfg, emit, stop)
    if isinstance(cfg, MqttInputSource):
        return MqttInputRunner(cfg, emit, stop)
    if isinstance(cfg, HttpInputSource):
        return HttpInputRunner(cfg, emit, stop)
    if isinstance(cfg, VideoSource):
        return VideoRunner(cfg, emit, stop)
    if isinstance(cfg, CameraSource):
        return CameraRunner(cfg, emit, stop)
    return ReplayRunner(cfg, emit, stop)
