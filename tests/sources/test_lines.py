"""Lines sources on real files, a real FIFO and a real pseudo-terminal standing in for a serial port."""

from __future__ import annotations

import logging
import os
import sys
import threading
import tty
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import SourceError
from agent.sources.base import Frame
from agent.sources.lines import LinesRunner, LinesSource, SerialRunner, SerialSource, open_port
from tests.sources.playing import play as run_source


def play(cfg: LinesSource, stop_after: int = 0, on_frame: Any = None) -> tuple[list[Frame], LinesRunner]:
    """Run a lines source to its end in this thread (or until ``stop_after`` frames)."""
    return run_source(LinesRunner, cfg, stop_after, on_frame)


def lines_cfg(path: Path, **kw: Any) -> LinesSource:
    return LinesSource(type="lines", path=path, loop=kw.pop("loop", False), **kw)


def test_csv_with_header_reads_every_numeric_column(tmp_path: Path) -> None:
    path = tmp_path / "imu.csv"
    path.write_text("t,sensor,ax,ay\n0,imu1,0.5,1.5\n1,imu1,2.5,3.5\n")
    frames, runner = play(lines_cfg(path))
    assert [f.meta["fields"] for f in frames] == [["t", "ax", "ay"]] * 2
    assert frames[0].is_tensor and frames[0].data.dtype == np.float32
    np.testing.assert_array_equal(frames[1].data, [[1, 2.5, 3.5]])
    assert runner.bad_inputs == 0
    assert frames[0].origin == "imu.csv"


def test_csv_fields_pick_and_order_columns(tmp_path: Path) -> None:
    path = tmp_path / "imu.csv"
    path.write_text("t,ax,ay\n0,1,2\n1,3,4\n")
    frames, _ = play(lines_cfg(path, fields=["ay", "t"], window=2))
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].data, [[2, 0], [4, 1]])


def test_csv_without_header_names_columns_by_number(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("10,11,12\n20,21,22\n")
    frames, _ = play(lines_cfg(path, fields=["2", "0"], window=2))
    np.testing.assert_array_equal(frames[0].data, [[12, 10], [22, 20]])


def test_unknown_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "imu.csv"
    path.write_text("t,ax\n0,1\n")
    with pytest.raises(SourceError, match=r"column\(s\) az not found; the columns are: t, ax"):
        play(lines_cfg(path, fields=["az"]))


def test_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "env.jsonl"
    path.write_text('{"temp": 21.5, "hum": 40, "room": "lab", "ok": true}\n{"temp": 22, "hum": 41, "room": "lab"}\n')
    frames, runner = play(lines_cfg(path, format="json", window=2))
    assert frames[0].meta["fields"] == ["temp", "hum"]  # strings and booleans are not readings
    np.testing.assert_array_equal(frames[0].data, [[21.5, 40], [22, 41]])
    assert runner.bad_inputs == 0


def test_windows_with_overlap_have_the_right_rows(tmp_path: Path) -> None:
    path = tmp_path / "ramp.csv"
    path.write_text("".join(f"{i},{10 * i}\n" for i in range(10)))
    frames, _ = play(lines_cfg(path, window=4, hop=2))
    assert [f.meta["offset"] for f in frames] == [0, 2, 4, 6]
    for frame in frames:
        first = frame.meta["offset"]
        assert frame.data.shape == (4, 2)
        np.testing.assert_array_equal(frame.data[:, 0], np.arange(first, first + 4))
        np.testing.assert_array_equal(frame.data[:, 1], 10 * np.arange(first, first + 4))


def test_hop_defaults_to_window_and_may_skip_readings(tmp_path: Path) -> None:
    path = tmp_path / "ramp.csv"
    path.write_text("".join(f"{i}\n" for i in range(10)))
    frames, _ = play(lines_cfg(path, window=3))
    assert [f.data[:, 0].tolist() for f in frames] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    frames, _ = play(lines_cfg(path, window=2, hop=5))
    assert [f.data[:, 0].tolist() for f in frames] == [[0, 1], [5, 6]]


def test_garbage_csv_lines_are_counted_skipped_and_warned_once_per_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "noisy.csv"
    good = [f"{i},{i + 0.5}" for i in range(6)]
    garbage = ["1,abc", "2,zz", "7", "8", "nan,1", "", "\xff\xfe,1"]
    lines = [good[0], garbage[0], good[1], garbage[1], good[2], garbage[2], garbage[3], good[3], garbage[4]]
    lines += [garbage[5], good[4], good[5]]
    path.write_bytes(("a,b\n" + "\n".join(lines) + "\n").encode() + b"\xff\xfe\x00,1\n")
    with caplog.at_level(logging.WARNING):
        frames, runner = play(lines_cfg(path, window=2))
    rows = np.concatenate([f.data for f in frames])
    np.testing.assert_array_equal(rows, [[i, i + 0.5] for i in range(6)])
    assert runner.bad_inputs == 6  # two non-numeric, two short, a NaN, one not UTF-8 (the blank line is fine)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert any("not a number" in w for w in warnings)
    assert any("missing field" in w for w in warnings)
    assert any("not text" in w for w in warnings)


def test_garbage_json_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "env.jsonl"
    path.write_text(
        '{"t": 1, "h": 2}\n{"t": 3\n[1, 2]\n{"t": 4}\n{"t": "warm", "h": 5}\n{"t": 1e999, "h": 1}\n{"t": 5, "h": 6}\n'
    )
    frames, runner = play(lines_cfg(path, format="json"))
    assert [f.data.tolist() for f in frames] == [[[1, 2]], [[5, 6]]]
    assert runner.bad_inputs == 5


def test_overlong_line_is_one_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_bytes(b"1\n" + b"9" * 200_000 + b"\n2\n")
    frames, runner = play(lines_cfg(path))
    assert [f.data.tolist() for f in frames] == [[[1]], [[2]]]
    assert runner.bad_inputs == 1


def test_file_without_a_window_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.csv"
    path.write_text("x\nhello\nworld\n")
    with pytest.raises(SourceError, match="no window of 1 reading"):
        play(lines_cfg(path))


def test_missing_path_and_folder_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or FIFO"):
        play(lines_cfg(tmp_path / "nope.csv"))
    with pytest.raises(SourceError, match="not a file or a FIFO"):
        play(lines_cfg(tmp_path))


def test_loop_starts_over_and_restart_goes_back_to_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "ramp.csv"
    path.write_text("0\n1\n2\n")
    frames, _ = play(lines_cfg(path, loop=True), stop_after=7)
    assert [f.data[0, 0] for f in frames] == [0, 1, 2, 0, 1, 2, 0]

    def restart_once(runner: LinesRunner, frames: list[Frame]) -> None:
        if frames[-1].meta["offset"] == 1 and not restarted:
            restarted.append(True)
            runner.restart()

    restarted: list[bool] = []
    frames, _ = play(lines_cfg(path), on_frame=restart_once)
    assert [f.data[0, 0] for f in frames] == [0, 1, 0, 1, 2]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_fifo_written_by_a_thread(tmp_path: Path) -> None:
    fifo = tmp_path / "sensor.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("w") as f:  # blocks until the source opens the FIFO
            f.write("x,y\n")
            for i in range(5):
                f.write(f"{i},{-i}\n")
                f.flush()
            f.write("oops\n")

    thread = threading.Thread(target=writer)
    thread.start()
    frames, runner = play(lines_cfg(fifo, window=2, hop=1))  # returns when the writer closes
    thread.join(timeout=10)
    assert [f.meta["offset"] for f in frames] == [0, 1, 2, 3]
    np.testing.assert_array_equal(frames[3].data, [[3, -3], [4, -4]])
    assert runner.bad_inputs == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_fifo_source_stops_while_the_writer_stays(tmp_path: Path) -> None:
    fifo = tmp_path / "sensor.fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def writer() -> None:
        with fifo.open("w") as f:
            f.write("1\n2\n3\n")
            f.flush()
            done.wait(timeout=10)  # holds the FIFO open: no end of input

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        frames, _ = play(lines_cfg(fifo, loop=True), stop_after=3)
    finally:
        done.set()
        thread.join(timeout=10)
    assert [f.data[0, 0] for f in frames] == [1, 2, 3]


def test_serial_without_pyserial_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "serial", None)  # import serial → ImportError
    cfg = SerialSource(type="serial", port="/dev/ttyUSB0")
    with pytest.raises(SourceError, match=r"pip install 'edge-agent\[serial\]'"):
        SerialRunner(cfg, lambda frame: None, threading.Event())


class StopAfterWaits(threading.Event):
    """A stop flag that sets itself at the n-th wait, so a retry loop runs n times without sleeping."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.waits = waits
        self.calls = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.calls += 1
        if self.calls >= self.waits:
            self.set()
        return self.is_set()


def test_missing_serial_port_is_a_clear_error_retried_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    serial = pytest.importorskip("serial")
    cfg = SerialSource(type="serial", port="/dev/ttyNOPE", retry_s=0.01)
    with pytest.raises(SourceError, match=r"^serial port /dev/ttyNOPE not found: check"):
        open_port(serial, cfg)
    stop = StopAfterWaits(3)
    runner = SerialRunner(cfg, lambda frame: None, stop)
    with caplog.at_level(logging.INFO):
        runner.run()  # returns once stop is set, after three failed attempts: no exception
    assert stop.calls == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "serial port /dev/ttyNOPE not found: check that the device is plugged in and the port setting "
        "(ls /dev/tty*) (trying again every 0.01 s)"
    ]


class OnMessage(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals on this system")
def test_serial_reads_lines_from_a_pseudo_terminal() -> None:
    pytest.importorskip("serial")
    controller, device = os.openpty()
    tty.setraw(device)
    port = os.ttyname(device)
    opened = OnMessage(f"serial port {port} open")
    logger = logging.getLogger("agent.sources.lines")
    logger.addHandler(opened)
    logger.setLevel(logging.INFO)
    frames: list[Frame] = []
    stop = threading.Event()

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) == 2:
            stop.set()

    runner = SerialRunner(SerialSource(type="serial", port=port, format="json", window=2), emit, stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        assert opened.seen.wait(timeout=10), "the serial source never opened the port"
        # the source empties the port's input when it opens it, so the device "talks" only now
        os.write(controller, b'{"a": 1}\n{"a": 2}\ngarbage\n{"a": 3}\n{"a"')
        os.write(controller, b": 4}\n")
        thread.join(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)
        logger.removeHandler(opened)
        logger.setLevel(logging.NOTSET)
        os.close(controller)
        os.close(device)
    assert not thread.is_alive()
    assert [f.data[:, 0].tolist() for f in frames] == [[1, 2], [3, 4]]
    assert frames[0].origin == port
    assert runner.bad_inputs == 1
