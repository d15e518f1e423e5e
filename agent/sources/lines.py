"""Sensor readings as CSV or JSON lines, from a file, a named pipe (FIFO) or a serial port, in windows."""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import Field

from agent.errors import SourceError
from agent.sources.base import Frame, note_bad
from agent.sources.pacing import Runner, open_with_retry
from agent.sources.records import BadLine, LineFormat, LineParser, LineSplitter, Windower

log = logging.getLogger(__name__)

CHUNK = 65_536
POLL_MS = 200  # how long a FIFO read waits before looking at the stop flag again
SERIAL_TIMEOUT_S = 0.2  # likewise for a serial read


class LinesSource(LineFormat):
    type: Literal["lines"] = Field(description="CSV or JSON lines of sensor readings from a file or a FIFO.")
    path: Path = Field(description="A file, or a named pipe (FIFO, mkfifo) that another program writes lines to.")
    rate_hz: float = Field(
        0.0,
        ge=0,
        description="Windows per second; 0: as fast as they are read. From a FIFO, windows come as lines are "
        "written, and those beyond this rate are dropped.",
    )
    loop: bool = Field(
        True,
        description="A file: start over after its last line. A FIFO: wait for the next writer when one closes. "
        "False ends the pipeline instead.",
    )


class SerialSource(LineFormat):
    type: Literal["serial"] = Field(description="CSV or JSON lines of sensor readings from a serial port (pyserial).")
    port: str = Field(description="Serial device, e.g. /dev/ttyUSB0 or /dev/ttyACM0 (Linux), COM3 (Windows).")
    baud: int = Field(115200, gt=0, description="Baud rate the device sends at.")
    rate_hz: float = Field(
        0.0, ge=0, description="At most this many windows per second (later ones are dropped); 0: every window."
    )
    retry_s: float = Field(2.0, gt=0, description="Seconds between attempts to open a port that is missing or busy.")


class _Windows:
    """Parser and windower of one pass over the input, restarted together."""

    def __init__(self, cfg: LineFormat) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.parser = LineParser(self.cfg)
        self.windower = Windower(self.cfg.window, self.cfg.step)


class LinesRunner(Runner):
    """Runs in its own thread: reads lines from a file or FIFO and hands windows to ``emit``."""

    def __init__(self, cfg: LinesSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        if cfg.path.is_fifo():
            self.fifo = True
        elif cfg.path.is_file():
            self.fifo = False
        elif cfg.path.exists():
            raise SourceError(f"{cfg.path}: not a file or a FIFO")
        else:
            raise SourceError(f"{cfg.path}: no such file or FIFO")
        self.cfg = cfg
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self._warned: set[str] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            self._begin_pass()
            state = _Windows(self.cfg)
            emitted = 0
            splitter = LineSplitter()
            with contextlib.closing(self._fifo_chunks() if self.fifo else self._file_chunks()) as chunks:
                for chunk in chunks:
                    for line in splitter.feed(chunk):
                        emitted += self._take(line, state)
                    if self.stop.is_set() or (self._restart.is_set() and not self.fifo):
                        break
                else:
                    for line in splitter.flush():
                        emitted += self._take(line, state)
            if self.stop.is_set():
                return
            if self._restart.is_set() and not self.fifo:
                log.info("lines of %s start over", self.cfg.path)
                continue
            if not self.fifo and emitted == 0:
                raise SourceError(
                    f"{self.cfg.path}: no window of {self.cfg.window} reading(s) in the file "
                    f"({self.bad_inputs} bad line(s))"
                )
            if not self.cfg.loop:
                return

    def _take(self, line: bytes, state: _Windows) -> int:
        """Parse one line; 1 when it completed a window that was handed over."""
        if self.stop.is_set():
            return 0
        if self._restart.is_set():
            if not self.fifo:
                return 0  # the pass ends at the next chunk
            # closing the FIFO would break the writer's pipe: start over from an empty window instead
            self._restart.clear()
            state.reset()
        try:
            row = state.parser.parse(line)
        except BadLine as exc:
            self.bad_inputs += 1
            note_bad(exc, str(self.cfg.path), self._warned, "line")
            return 0
        got = None if row is None else state.windower.push(row)
        if got is None:
            return 0
        window, offset = got
        ts = time.time()
        if self.fifo:
            if not self._pacer.due(self.rate_hz):
                return 0
        elif not self._pacer.wait(self.rate_hz):
            return 0
        else:
            ts = time.time()  # a replayed file: the time it is handed over
        meta = {"offset": offset, "fields": list(state.parser.fields)}
        self.emit(Frame(window, ts, self.cfg.path.name, is_tensor=True, meta=meta))
        return 1

    def _file_chunks(self) -> Generator[bytes, None, None]:
        try:
            with self.cfg.path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except OSError as exc:
            raise SourceError(f"{self.cfg.path}: cannot read ({exc.strerror or exc})") from None

    def _fifo_chunks(self) -> Generator[bytes, None, None]:
        """What writers put in the FIFO until the last one closes it (or stop is set)."""
        # non-blocking, so that waiting for a writer can be interrupted by stop; on Linux, poll() reports
        # no hang-up before a writer has come and gone
        try:
            fd = os.open(self.cfg.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"{self.cfg.path}: cannot open the FIFO ({exc.strerror or exc})") from None
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not self.stop.is_set():
                if not poller.poll(POLL_MS):
                    continue
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    return  # every writer closed the FIFO
                yield chunk
        finally:
            os.close(fd)


def import_pyserial() -> ModuleType:
    """The pyserial module, imported only by the sources that need it."""
    try:
        module = importlib.import_module("serial")
    except ImportError:
        raise SourceError("the serial source needs pyserial: pip install 'edge-agent[serial]'") from None
    if not hasattr(module, "Serial"):
        raise SourceError(
            "the installed 'serial' package is not pyserial: pip uninstall serial; pip install 'edge-agent[serial]'"
        )
    return module


def open_port(serial: ModuleType, cfg: SerialSource) -> Any:
    """An open pyserial port; SourceError (one line) when it is missing, busy or refused."""
    try:
        # exclusive: a second program reading the same port would steal half of the lines
        return serial.Serial(cfg.port, baudrate=cfg.baud, timeout=SERIAL_TIMEOUT_S, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            why = "not found: check that the device is plugged in and the port setting (ls /dev/tty*)"
        elif code in (errno.EACCES, errno.EPERM):
            why = "permission denied: add the agent's user to the dialout group"
        elif code in (errno.EBUSY, errno.EAGAIN):
            why = "busy: another program has it open"
        else:
            why = f"cannot be opened ({exc})"
        raise SourceError(f"serial port {cfg.port} {why}") from None


class SerialRunner(Runner):
    """Runs in its own thread: reads lines from a serial port, waiting for the port while it is missing."""

    def __init__(self, cfg: SerialSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.serial = import_pyserial()
        self.cfg = cfg
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self._warned: set[str] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            port = open_with_retry(lambda: open_port(self.serial, self.cfg), self.stop, self.cfg.retry_s)
            if port is None:
                return
            log.info("serial port %s open at %d baud", self.cfg.port, self.cfg.baud)
            try:
                self._read(port)
            except (self.serial.SerialException, OSError) as exc:
                log.warning("serial port %s failed (%s); opening it again", self.cfg.port, exc)
            finally:
                with contextlib.suppress(self.serial.SerialException, OSError):
                    port.close()

    def _read(self, port: Any) -> None:
        state = _Windows(self.cfg)
        splitter = LineSplitter()
        while not self.stop.is_set():
            if self._restart.is_set():
                self._restart.clear()
                state.reset()
            chunk: bytes = port.read(max(1, port.in_waiting))  # b"" after SERIAL_TIMEOUT_S of silence
            for line in splitter.feed(chunk):
                self._take(line, state)

    def _take(self, line: bytes, state: _Windows) -> None:
        try:
            row = state.parser.parse(line)
        except BadLine as exc:
            self.bad_inputs += 1
            note_bad(exc, self.cfg.port, self._warned, "line")
            return
        got = None if row is None else state.windower.push(row)
        if got is None or not self._pacer.due(self.rate_hz):
            return
        window, offset = got
        meta = {"offset": offset, "fields": list(state.parser.fields)}
        self.emit(Frame(window, time.time(), self.cfg.port, is_tensor=True, meta=meta))
