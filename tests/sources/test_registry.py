"""A source that cannot start fails its own pipeline, not the daemon: make_source hands back a runner that
raises the reason when run; check_source (`edge-agent config check`) opens file sources as a start would."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.errors import SourceError
from agent.sources.audio import WavSource
from agent.sources.http_input import HttpInputSource
from agent.sources.lines import LinesSource
from agent.sources.registry import FailedSource, check_source, make_source
from agent.sources.synthetic import SyntheticSource


def test_a_missing_audio_file_gives_a_runner_that_fails_when_run(tmp_path: Path) -> None:
    cfg = WavSource(type="wav", path=tmp_path / "gone.wav", window=16)
    runner = make_source(cfg, lambda _frame: None, threading.Event())
    assert isinstance(runner, FailedSource)
    assert (runner.bad_inputs, runner.rate_hz) == (0, 0.0)  # what the status and the rate command read
    runner.restart()  # nothing to start over, and no error for asking
    with pytest.raises(SourceError, match=r"gone\.wav: cannot read \(No such file or directory\)"):
        runner.run()
    with pytest.raises(SourceError, match=r"gone\.wav: cannot read"):
        check_source(cfg)


def test_a_file_that_is_no_wav_is_named_by_the_check(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    with pytest.raises(SourceError) as info:
        check_source(WavSource(type="wav", path=text, window=16))
    assert str(info.value).startswith(f"{text}: ") and "\n" not in str(info.value)


def test_a_folder_where_a_lines_file_belongs(tmp_path: Path) -> None:
    cfg = LinesSource(type="lines", path=tmp_path)
    with pytest.raises(SourceError, match="not a file or a FIFO"):
        check_source(cfg)
    assert isinstance(make_source(cfg, lambda _frame: None, threading.Event()), FailedSource)


def test_sources_that_start_are_left_as_they_are(tmp_path: Path) -> None:
    assert not isinstance(
        make_source(SyntheticSource(type="synthetic"), lambda _frame: None, threading.Event()), FailedSource
    )
    check_source(SyntheticSource(type="synthetic"))
    # a live input is not opened by a check: it would take the port from a daemon that runs
    check_source(HttpInputSource(type="http", host="127.0.0.1", port=1))
