"""The synthetic source: shapes, dtypes, patterns, seeds, counts, restart and stop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from agent.sources.base import Frame
from agent.sources.synthetic import SyntheticRunner, SyntheticSource
from tests.sources.playing import play as run_source


def cfg(**kw: Any) -> SyntheticSource:
    return SyntheticSource(type="synthetic", rate_hz=kw.pop("rate_hz", 0), **kw)


def play(source: SyntheticSource, stop_after: int = 0, on_frame: Any = None) -> list[Frame]:
    return run_source(SyntheticRunner, source, stop_after, on_frame)[0]


def test_count_shape_and_dtype() -> None:
    frames = play(cfg(shape=[2, 3], count=4))
    assert len(frames) == 4
    assert all(f.is_tensor and f.data.shape == (2, 3) and f.data.dtype == np.float32 for f in frames)
    assert [f.meta["index"] for f in frames] == [0, 1, 2, 3]
    assert frames[0].origin == "synthetic"


def test_zeros() -> None:
    (frame,) = play(cfg(shape=[4], pattern="zeros", count=1))
    np.testing.assert_array_equal(frame.data, np.zeros(4, np.float32))


def test_ramp_counts_along_the_frame_and_shifts_each_frame() -> None:
    frames = play(cfg(shape=[2, 2], pattern="ramp", count=2))
    np.testing.assert_allclose(frames[0].data, [[0, 0.25], [0.5, 0.75]])
    np.testing.assert_allclose(frames[1].data, [[0.25, 0.5], [0.75, 0]])
    (wrapped,) = play(cfg(shape=[300], dtype="uint8", pattern="ramp", count=1))
    assert wrapped.data.dtype == np.uint8
    assert wrapped.data[255] == 255 and wrapped.data[256] == 0


def test_noise_repeats_with_its_seed_and_differs_between_seeds_and_frames() -> None:
    first = play(cfg(shape=[64], seed=3, count=2))
    again = play(cfg(shape=[64], seed=3, count=2))
    other = play(cfg(shape=[64], seed=4, count=1))
    np.testing.assert_array_equal(first[0].data, again[0].data)
    assert not np.array_equal(first[0].data, first[1].data)
    assert not np.array_equal(first[0].data, other[0].data)
    assert 0.5 < float(np.std(first[0].data)) < 1.5  # standard normal


def test_uint8_rgb_shape_makes_an_image_frame() -> None:
    (image,) = play(cfg(shape=[4, 6, 3], dtype="uint8", count=1))
    assert not image.is_tensor
    assert image.data.shape == (4, 6, 3) and image.data.dtype == np.uint8
    assert image.meta["width"] == 6 and image.meta["height"] == 4
    (tensor,) = play(cfg(shape=[1, 4, 6, 3], dtype="uint8", count=1))
    assert tensor.is_tensor


def test_restart_starts_the_sequence_over() -> None:
    def restart_at_three(runner: SyntheticRunner, frames: list[Frame]) -> None:
        if len(frames) == 3:
            runner.restart()

    frames = play(cfg(shape=[8], seed=1, count=4), on_frame=restart_at_three)
    assert [f.meta["index"] for f in frames] == [0, 1, 2, 0, 1, 2, 3]
    np.testing.assert_array_equal(frames[0].data, frames[3].data)


def test_forever_runs_until_stopped() -> None:
    frames = play(cfg(shape=[1], count=0), stop_after=50)
    assert len(frames) == 50


def test_shape_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        cfg(shape=[2, 0])
    with pytest.raises(ValidationError):
        cfg(shape=[])
    with pytest.raises(ValidationError):
        SyntheticSource(type="synthetic", colour="red")  # type: ignore[call-arg]
