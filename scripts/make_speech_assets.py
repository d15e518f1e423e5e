#!/usr/bin/env python3
"""Build the real-speech test assets under tests/assets/speech from espeak-ng and a pinned PyPI wheel.

    scripts/make_speech_assets.py [OUT_DIR] [--wheels DIR] [--any-tools]

Needs espeak-ng and SoX (apt-get install espeak-ng sox). What comes out is committed, so the tests
need neither espeak-ng nor the network:

* ``two_sentences.wav``: 16 kHz mono 16-bit PCM, laid out as silence, a sentence, a longer silence,
  another sentence, silence. The sentences are spoken by espeak-ng (pinned version, voice, speed and
  pitch) and resampled from its 22.05 kHz to 16 kHz by SoX without dither; low Gaussian noise from a
  fixed seed runs under the whole file, so the "silence" is not digital zero.
* ``two_sentences.json``: where each sentence really is, in seconds from the start of the file: the
  position where its audio was placed, after trimming the near-silence espeak-ng pads it with.
* ``silero_vad_16k.onnx``: Silero VAD's 16 kHz model (MIT, 1.3 MB), the export with the inputs users
  meet in Silero's own ``silero_vad.onnx``: ``input`` (batch, samples) and ``state`` (2, batch, 128),
  with dynamic dimensions, and the sample rate ``sr``. It is read out of the ``silero-vad`` wheel downloaded with
  ``pip download --no-deps`` (the package depends on torch and is never installed) and checked
  against the SHA-256 pinned below; its MIT licence goes beside it as ``silero_vad_LICENSE``.

The output is byte-for-byte the same on every run with the pinned tools; a different espeak-ng or SoX
is refused rather than silently producing other audio (``--any-tools`` accepts it, for a new pin).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "assets" / "speech"

ESPEAK_VERSION = "1.51"  # Debian bookworm's espeak-ng
SOX_VERSION = "14.4.2"
VOICE = "en-us"
SPEED_WPM = 150
PITCH = 50
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen.",
)
SAMPLE_RATE = 16_000
LEAD_S, GAP_S, TAIL_S = 1.0, 1.5, 1.0  # silence before, between and after the sentences
PEAK = 0.5  # each sentence is scaled to this peak (-6 dBFS)
NOISE_RMS = 0.002  # about -54 dBFS: a quiet room, well below speech
NOISE_SEED = 20_240_611
TRIM_FRACTION = 0.02  # a sentence starts and ends at its first and last sample above 2% of its peak

SILERO = "silero-vad==6.2.3"
# 16 kHz only (1.3 MB; silero_vad.onnx adds 8 kHz at 2.3 MB); fed 64 samples of context + 512 new per call
SILERO_MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
SILERO_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
SILERO_LICENSE = "silero_vad-6.2.3.dist-info/licenses/LICENSE"  # MIT: the notice travels with the copy

WAV_NAME = "two_sentences.wav"
MODEL_NAME = "silero_vad_16k.onnx"
LICENSE_NAME = "silero_vad_LICENSE"


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise SystemExit(f"{command[0]} is not installed: apt-get install espeak-ng sox") from None
    return done.stdout.strip() or done.stderr.strip()


def check_tools(any_tools: bool) -> dict[str, str]:
    """The espeak-ng and SoX version lines; other versions than the pinned ones are refused unless allowed."""
    espeak = tool_version(["espeak-ng", "--version"])
    sox = tool_version(["sox", "--version"])
    if not any_tools:
        if f"text-to-speech: {ESPEAK_VERSION} " not in espeak + " ":
            raise SystemExit(f"espeak-ng {ESPEAK_VERSION} is pinned, found: {espeak} (--any-tools to accept it)")
        if f"v{SOX_VERSION}" not in sox:
            raise SystemExit(f"SoX {SOX_VERSION} is pinned, found: {sox} (--any-tools to accept it)")
    return {"espeak_ng": espeak.split(":")[1].split()[0], "sox": sox.split("v")[-1]}


def read_pcm16(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit from SoX")
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0  # (n,)


def speak(text: str, work: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng at 16 kHz, trimmed to its first and last audible sample, peak ``PEAK``."""
    native, resampled = work / "native.wav", work / "16k.wav"
    subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(SPEED_WPM), "-p", str(PITCH), "-w", str(native), text], check=True
    )
    # -R: repeatable (fixed seeds), -D: no dither, so the same input gives the same bytes
    subprocess.run(
        ["sox", "-R", "-D", str(native), "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", str(resampled)], check=True
    )
    audio = read_pcm16(resampled)
    loud = np.flatnonzero(np.abs(audio) >= TRIM_FRACTION * np.abs(audio).max())
    speech = audio[loud[0] : loud[-1] + 1]
    scaled: np.ndarray = speech * (PEAK / np.abs(speech).max())
    return scaled


def build_wav(out: Path, any_tools: bool) -> dict[str, object]:
    """Write the WAV and return the description that goes into the JSON beside it."""
    tools = check_tools(any_tools)
    track: list[np.ndarray] = [np.zeros(round(LEAD_S * SAMPLE_RATE))]
    segments = []
    at = len(track[0])
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            if i:
                track.append(np.zeros(round(GAP_S * SAMPLE_RATE)))
                at += len(track[-1])
            speech = speak(text, Path(tmp))
            track.append(speech)
            segments.append({"start_s": at / SAMPLE_RATE, "end_s": (at + len(speech)) / SAMPLE_RATE, "text": text})
            at += len(speech)
    track.append(np.zeros(round(TAIL_S * SAMPLE_RATE)))
    signal = np.concatenate(track)  # (n,)
    signal += np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_RMS, len(signal))
    pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(out / WAV_NAME), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return {
        "wav": WAV_NAME,
        "sample_rate": SAMPLE_RATE,
        "samples": len(pcm),
        "duration_s": len(pcm) / SAMPLE_RATE,
        "segments": segments,
        "made_with": {
            **tools,
            "voice": VOICE,
            "speed_wpm": SPEED_WPM,
            "pitch": PITCH,
            "peak": PEAK,
            "noise_rms": NOISE_RMS,
            "noise_seed": NOISE_SEED,
        },
    }


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """The wheel for ``requirement`` in ``dest``, downloaded there (no dependencies) when it is not."""
    name = requirement.split("==", maxsplit=1)[0].replace("-", "_").lower()
    version = requirement.split("==", maxsplit=1)[1]

    def found() -> list[Path]:
        return [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]

    if not found():
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*command, "-d", str(dest), requirement], check=True)
    wheels = found()
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {requirement} in {dest}, found {[p.name for p in wheels]}")
    return wheels[0]


def extract_model(out: Path, wheels: Path | None) -> dict[str, object]:
    """Write Silero VAD from the pinned wheel (from ``wheels`` if it holds it, else downloaded to a temp dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_wheel(SILERO, wheels or Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(SILERO_MEMBER)
            notice = zf.read(SILERO_LICENSE)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SILERO_SHA256:
        raise SystemExit(f"{SILERO_MEMBER} in {wheel.name}: sha256 {digest}, expected {SILERO_SHA256}")
    (out / MODEL_NAME).write_bytes(data)
    (out / LICENSE_NAME).write_bytes(notice)
    return {
        "file": MODEL_NAME,
        "source": f"{SILERO}:{SILERO_MEMBER}",
        "sha256": digest,
        "bytes": len(data),
        "license": LICENSE_NAME,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--wheels", type=Path, help="a folder that may already hold the silero-vad wheel")
    parser.add_argument("--any-tools", action="store_true", help="accept other espeak-ng / SoX versions")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    described = build_wav(args.out, args.any_tools)
    described["model"] = extract_model(args.out, args.wheels)
    (args.out / WAV_NAME).with_suffix(".json").write_text(json.dumps(described, indent=2) + "\n")
    for name in (WAV_NAME, Path(WAV_NAME).with_suffix(".json").name, MODEL_NAME, LICENSE_NAME):
        print(f"{args.out / name}: {(args.out / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
