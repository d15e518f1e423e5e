"""WAV replay on files written here with numpy and wave; the microphone source without its package."""

from __future__ import annotations

import sys
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import SourceError
from agent.sources.audio import MicrophoneRunner, MicrophoneSource, WavRunner, WavSource
from agent.sources.base import Frame
from agent.sources.pcm import SampleWindower, resample
from tests.sources.playing import play as run_source

TONE_HZ = 440.0


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """Write float samples in [-1, 1], (n,) or (n, channels), as integer PCM of ``width`` bytes."""
    frames = samples.reshape(len(samples), -1)
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.round(frames * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype("<i2" if width == 2 else "<i4").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(raw)
    return path


def silence_tone_silence(rate: int, freq: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(rate) / rate
    tone = amplitude * np.sin(2 * np.pi * freq * t)
    return np.concatenate([np.zeros(rate), tone, np.zeros(rate)])  # (3 * rate,)


def play(cfg: WavSource, stop_after: int = 0) -> tuple[list[Frame], WavRunner]:
    return run_source(WavRunner, cfg, stop_after)


def wav_cfg(path: Path, **kw: Any) -> WavSource:
    return WavSource(type="wav", path=path, realtime=False, loop=kw.pop("loop", False), **kw)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def check_tone_windows(frames: list[Frame], rate: int, tone_rms: float, window: int) -> None:
    for frame in frames:
        start = frame.meta["offset_s"]
        end = start + window / rate
        if start >= 1.0 and end <= 2.0:
            assert rms(frame.data) == pytest.approx(tone_rms, rel=0.05), start
        elif end <= 1.0 or start >= 2.0:
            assert rms(frame.data) < 0.01, start


def test_windows_over_silence_tone_silence(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "beep.wav", silence_tone_silence(16_000), 16_000)
    frames, runner = play(wav_cfg(path, window=512, hop=256))
    assert len(frames) == (48_000 - 512) // 256 + 1  # 186: a tail shorter than a window is not played
    assert all(f.data.shape == (512,) and f.data.dtype == np.float32 and f.is_tensor for f in frames)
    assert [f.meta["offset_s"] for f in frames] == pytest.approx([i * 256 / 16_000 for i in range(186)])
    assert all(f.meta["sample_rate"] == 16_000 for f in frames)
    assert frames[0].origin == "beep.wav"
    check_tone_windows(frames, 16_000, 0.5 / np.sqrt(2), 512)
    assert rms(frames[0].data) == 0.0
    middle = frames[int(1.5 * 16_000 / 256)].data
    assert rms(middle) > 0.3
    assert np.abs(np.concatenate([f.data for f in frames])).max() <= 1.0
    assert runner.bad_inputs == 0


def test_window_content_is_the_file_in_order(tmp_path: Path) -> None:
    samples = np.linspace(-0.9, 0.9, 1000)
    path = write_wav(tmp_path / "ramp.wav", samples, 8000)
    frames, _ = play(wav_cfg(path, window=100, hop=300))
    assert [f.meta["offset_s"] * 8000 for f in frames] == pytest.approx([0, 300, 600, 900])
    for frame in frames:
        start = round(frame.meta["offset_s"] * 8000)
        np.testing.assert_allclose(frame.data, samples[start : start + 100], atol=1e-4)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_other_sample_widths_scale_to_unit_range(tmp_path: Path, width: int) -> None:
    path = write_wav(tmp_path / f"beep{width}.wav", silence_tone_silence(8000), 8000, width=width)
    frames, _ = play(wav_cfg(path, window=400))
    check_tone_windows(frames, 8000, 0.5 / np.sqrt(2), 400)
    assert rms(frames[30].data) > 0.3  # 1.5 s: inside the tone
    assert rms(frames[0].data) == 0.0  # 8-bit silence is 128, which must come out as 0


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = silence_tone_silence(8000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # (24000, 2)
    path = write_wav(tmp_path / "stereo.wav", stereo, 8000)
    frames, _ = play(wav_cfg(path, window=8000))
    assert [f.data.shape for f in frames] == [(8000,)] * 3
    assert rms(frames[1].data) == pytest.approx(0.25 / np.sqrt(2), rel=0.01)
    np.testing.assert_allclose(frames[1].data, left[8000:16000] / 2, atol=1e-4)


def test_resampling_44k1_to_16k_keeps_length_and_pitch(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "cd.wav", silence_tone_silence(44_100), 44_100)
    frames, runner = play(wav_cfg(path, window=16_000, sample_rate=16_000))
    assert runner.sample_rate == 16_000
    assert sum(len(f.data) for f in frames) == 48_000  # 3 s at 16 kHz
    assert [f.meta["offset_s"] for f in frames] == [0.0, 1.0, 2.0]
    tone = frames[1].data
    assert peak_hz(tone, 16_000) == pytest.approx(TONE_HZ, abs=1.0)
    assert rms(tone) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert rms(frames[0].data) < 0.01


def test_downsampling_removes_what_the_new_rate_cannot_carry() -> None:
    t = np.arange(44_100) / 44_100
    high = 0.5 * np.sin(2 * np.pi * 12_000 * t)  # above 8 kHz: would fold back to 4 kHz without the low-pass
    assert rms(resample(high.astype(np.float32), 44_100, 16_000)[200:-200]) < 0.005


def test_upsampling_keeps_pitch() -> None:
    t = np.arange(8000) / 8000
    up = resample((0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), 8000, 16_000)
    assert len(up) == 16_000
    assert peak_hz(up, 16_000) == pytest.approx(TONE_HZ, abs=1.0)


def test_realtime_sets_the_rate_from_the_hop(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "beep.wav", silence_tone_silence(16_000), 16_000)
    stop = threading.Event()
    realtime = WavRunner(WavSource(type="wav", path=path, window=512, hop=256), lambda f: None, stop)
    assert realtime.rate_hz == 16_000 / 256
    assert WavRunner(wav_cfg(path, window=512), lambda f: None, stop).rate_hz == 0


def test_loop_and_restart_start_from_the_beginning(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "short.wav", np.linspace(0, 0.5, 300), 1000)
    frames, _ = play(wav_cfg(path, window=100, loop=True), stop_after=5)
    assert [f.meta["offset_s"] for f in frames] == [0.0, 0.1, 0.2, 0.0, 0.1]

    seen: list[float] = []
    stop = threading.Event()

    def emit(frame: Frame) -> None:
        seen.append(frame.meta["offset_s"])
        if len(seen) == 2:
            runner.restart()

    runner = WavRunner(wav_cfg(path, window=100), emit, stop)
    runner.run()
    assert seen == [0.0, 0.1, 0.0, 0.1, 0.2]


def test_a_looping_replay_keeps_its_pace_across_the_start_over(tmp_path: Path) -> None:
    # 50-sample hops at 1000 Hz: 20 windows a second, two a pass. Six windows over three passes are five
    # periods apart from first to last; a pass that started the schedule afresh would send its first window
    # at once, two periods less in all. (Load only delays frames past their schedule: a floor noise cannot undercut.)
    path = write_wav(tmp_path / "short.wav", np.linspace(0, 0.5, 100), 1000)
    frames, _ = play(WavSource(type="wav", path=path, window=50, realtime=True, loop=True), stop_after=6)
    assert [f.meta["offset_s"] for f in frames] == [0.0, 0.05] * 3
    assert frames[-1].ts - frames[0].ts >= 5 * 0.05 * 0.95


def test_truncated_data_plays_what_is_there_and_counts_once(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "cut.wav", silence_tone_silence(8000), 8000)
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * 12_001])  # 12000 whole frames and a half one, of 24000
    frames, runner = play(wav_cfg(path, window=4000))
    assert [f.meta["offset_s"] for f in frames] == [0.0, 0.5, 1.0]
    assert runner.bad_inputs == 1


def test_truncated_header_and_non_wav_fail_at_start(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "cut.wav", silence_tone_silence(8000), 8000)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(SourceError, match=r"cut\.wav: not a PCM WAV file"):
        play(wav_cfg(path))
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 10)
    with pytest.raises(SourceError, match=r"notes\.wav: not a PCM WAV file .*ffmpeg"):
        play(wav_cfg(text))
    with pytest.raises(SourceError, match="cannot read"):
        play(wav_cfg(tmp_path / "missing.wav"))


def test_file_shorter_than_a_window_is_an_error(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "blip.wav", np.zeros(100), 8000)
    with pytest.raises(SourceError, match="fewer than one window of 512"):
        play(wav_cfg(path, window=512))


def test_microphone_without_sounddevice_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(SourceError, match=r"pip install 'edge-agent\[audio\]'"):
        MicrophoneRunner(MicrophoneSource(type="microphone"), lambda f: None, threading.Event())


@pytest.mark.parametrize(("window", "hop"), [(512, 256), (100, 100), (50, 130)])
def test_sample_windower_matches_slicing_whatever_the_block_sizes(window: int, hop: int) -> None:
    rng = np.random.default_rng(7)
    stream = rng.standard_normal(5000).astype(np.float32)
    windower = SampleWindower(window, hop)
    got: list[tuple[np.ndarray, int]] = []
    at = 0
    while at < len(stream):
        size = int(rng.integers(1, 700))
        got += windower.push(stream[at : at + size])
        at += size
    starts = list(range(0, len(stream) - window + 1, hop))
    assert [start for _, start in got] == starts
    for data, start in got:
        np.testing.assert_array_equal(data, stream[start : start + window])
