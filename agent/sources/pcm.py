"""PCM audio: WAV decoding to float32 mono, resampling, and windows over a stream of samples."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import SourceError

FULL_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}  # by bytes per sample
LOWPASS_TAPS = 101


@dataclass(frozen=True)
class WavAudio:
    samples: np.ndarray  # (n,) float32 in [-1, 1], mono
    sample_rate: int
    truncated: bool  # the file holds fewer frames than its header says; ``samples`` is what was there


def _not_pcm(path: Path, why: str) -> SourceError:
    return SourceError(
        f"{path}: not a PCM WAV file ({why}); convert it, e.g. ffmpeg -i {path.name} -c:a pcm_s16le out.wav"
    )


def read_wav(path: Path, header_only: bool = False) -> WavAudio:
    """Decode a PCM WAV (8/16/24/32-bit integer, any channels, mixed down by averaging)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate, frames = wav.getsampwidth(), wav.getnchannels(), wav.getframerate(), wav.getnframes()
            if width not in FULL_SCALE:
                raise _not_pcm(path, f"{8 * width}-bit samples")
            if channels < 1 or rate < 1:
                raise _not_pcm(path, f"{channels} channel(s) at {rate} Hz")
            raw = b"" if header_only else wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise _not_pcm(path, str(exc) or "truncated header") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if header_only:
        return WavAudio(np.zeros(0, np.float32), rate, False)
    whole = len(raw) // (width * channels)
    samples = decode_pcm(raw[: whole * width * channels], width, channels)
    return WavAudio(samples, rate, whole < frames)


def decode_pcm(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian PCM frames → (n,) float32 in [-1, 1], channels averaged."""
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        ints = np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0
    elif width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)  # (n * channels, 3)
        ints = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)).astype(np.float32)
        ints[ints >= 2**23] -= 2**24  # sign of the top byte
    else:
        ints = np.frombuffer(raw, "<i2" if width == 2 else "<i4").astype(np.float32)
    scaled = ints / np.float32(FULL_SCALE[width])
    mono: np.ndarray = scaled.reshape(-1, channels).mean(axis=1, dtype=np.float32)  # (n,)
    return mono


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Linear interpolation to ``rate_out``, after a windowed-sinc low-pass when going down (so that content
    above the new Nyquist frequency is removed rather than folded back); floor(n * out / in) samples."""
    if rate_in == rate_out:
        return samples
    if rate_out < rate_in:
        cutoff = 0.5 * rate_out / rate_in  # cycles per input sample
        taps = np.arange(LOWPASS_TAPS) - (LOWPASS_TAPS - 1) / 2
        kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(LOWPASS_TAPS)
        samples = np.convolve(samples, kernel / kernel.sum(), mode="same")
    count = len(samples) * rate_out // rate_in
    at = np.arange(count) * (rate_in / rate_out)  # positions in input samples
    out: np.ndarray = np.interp(at, np.arange(len(samples)), samples).astype(np.float32)  # (count,)
    return out


class SampleWindower:
    """Windows of ``window`` samples whose starts are ``hop`` apart, over blocks of any size."""

    def __init__(self, window: int, hop: int) -> None:
        self.window = window
        self.hop = hop
        self.reset()

    def reset(self) -> None:
        self._buffer = np.zeros(0, np.float32)
        self._start = 0  # index of the buffer's first sample in the stream
        self._skip = 0  # samples to drop when the hop is longer than the window

    def push(self, block: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """The windows (window,) float32 that ``block`` completed, each with the index of its first sample."""
        if self._skip:
            dropped = min(self._skip, len(block))
            block = block[dropped:]
            self._skip -= dropped
            self._start += dropped
        self._buffer = np.concatenate([self._buffer, block.astype(np.float32)])
        out = []
        while len(self._buffer) >= self.window:
            out.append((self._buffer[: self.window].copy(), self._start))
            step = min(self.hop, len(self._buffer))
            self._skip = self.hop - step
            self._buffer = self._buffer[step:]
            self._start += step
        return out
