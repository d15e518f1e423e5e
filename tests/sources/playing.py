"""Run a source's runner to its end in the test's own thread, collecting its frames."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agent.sources.base import Frame

R = TypeVar("R")


def play(
    runner_type: Callable[[Any, Callable[[Frame], None], threading.Event], R],
    cfg: Any,
    stop_after: int = 0,
    on_frame: Callable[[R, list[Frame]], None] | None = None,
) -> tuple[list[Frame], R]:
    """Until the source ends, or ``stop_after`` frames; ``on_frame(runner, frames so far)`` after each frame."""
    frames: list[Frame] = []
    stop = threading.Event()

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if on_frame is not None:
            on_frame(runner, frames)
        if stop_after and len(frames) >= stop_after:
            stop.set()

    runner = runner_type(cfg, emit, stop)
    runner.run()  # type: ignore[attr-defined]
    return frames, runner
