"""When a source hands over its next frame, and how it waits for a device that is not there yet."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.errors import SourceError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Runner:
    """What every sensor source's runner has: the frame callback, the stop event, a count of malformed input,
    a rate the pipeline-rate command may change, a restart request and a pacer. Subclasses set ``rate_hz``
    from their config, and their run loop says what starting over means for them when ``_restart`` is set
    (a file from its beginning, a live input with empty windows)."""

    def __init__(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        self.emit = emit
        self.stop = stop
        self.bad_inputs = 0
        self.rate_hz = 0.0  # changed at run time by the pipeline-rate command
        self._restart = threading.Event()
        self._pacer = Pacer(stop)

    def restart(self) -> None:
        """Start over; call from any thread."""
        self._restart.set()

    def _begin_pass(self) -> None:
        """At the top of each pass over the input: the pacing schedule starts afresh after a restart was
        asked for, but a loop's next pass keeps it, so that pass's first frame comes one period after the
        previous pass's last, not at once. (The first pass needs no reset: a schedule set when the runner
        was made is already due.)"""
        if self._restart.is_set():
            self._pacer.reset()
        self._restart.clear()


class Pacer:
    """Spaces frames ``1 / rate_hz`` apart; the rate is read at every call, so it can change at run time."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._next = time.monotonic()

    def reset(self) -> None:
        self._next = time.monotonic()

    def wait(self, rate_hz: float) -> bool:
        """For replays: sleep until the next frame is due; False when ``stop`` was set meanwhile."""
        if rate_hz <= 0:
            return not self.stop.is_set()
        delay = self._next - time.monotonic()
        if delay > 0 and self.stop.wait(delay):
            return False
        # a slow read must not make later frames burst to catch up
        self._next = max(self._next + 1.0 / rate_hz, time.monotonic())
        return not self.stop.is_set()

    def due(self, rate_hz: float) -> bool:
        """For live inputs, which cannot be slowed down: whether this frame is kept (True) or dropped."""
        if rate_hz <= 0:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        period = 1.0 / rate_hz
        # follow the schedule rather than the arrival time, so that jitter does not halve the rate, but bank
        # at most half a period after a gap
        self._next = max(self._next + period, now - period / 2)
        return True


def open_with_retry(open_device: Callable[[], T], stop: threading.Event, retry_s: float) -> T | None:
    """Call ``open_device`` until it stops raising SourceError; None when ``stop`` is set first.

    A device that is unplugged or busy is usually back later, so the source waits for it instead of
    ending its pipeline; each distinct error is logged once, not at every attempt.
    """
    last = ""
    while not stop.is_set():
        try:
            device = open_device()
        except SourceError as exc:
            if str(exc) != last:
                last = str(exc)
                log.error("%s (trying again every %g s)", exc, retry_s)
            if stop.wait(retry_s):
                return None
            continue
        if last:
            log.info("the device is available again")
        return device
    return None
