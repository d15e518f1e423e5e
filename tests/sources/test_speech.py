"""Real speech through the real pipeline: two sentences spoken by espeak-ng (a committed WAV), replayed by the
WAV source in Silero VAD's windows, run by the real Silero VAD model (recurrent state, sample-rate constant),
post-processed into speech start/end events and written to the durable outbox, where they are read back and
checked against where the speech really is. ``scripts/make_speech_assets.py`` made the assets; nothing here
needs espeak-ng or the network.
"""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accelerators.base import TensorSpec
from agent.config import PipelineConfig, PreprocessConfig
from agent.errors import SourceError
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox, OutboxSettings
from agent.mqtt.sender import OutboxSender
from agent.mqtt.settings import MqttSection
from agent.mqtt.topics import Topics
from agent.pipeline import LoadedModel, Pipeline
from agent.sources.base import Frame
from agent.sources.preprocess import Preprocessor
from agent.state import SeqAllocator

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "speech"
WAV = ASSETS / "two_sentences.wav"
MODEL = ASSETS / "silero_vad_16k.onnx"
LAYOUT = json.loads((ASSETS / "two_sentences.json").read_text())
SEGMENTS: list[tuple[float, float]] = [(s["start_s"], s["end_s"]) for s in LAYOUT["segments"]]

RATE = 16_000
HOP = 512  # new samples per call: what Silero VAD is trained on at 16 kHz
CONTEXT = 64  # Silero VAD sees the last 64 samples of the previous call again: windows of 576, 512 apart
WINDOW = HOP + CONTEXT
MIN_SPEECH = 3  # ~0.1 s of speech before it counts
MIN_SILENCE = 6  # ~0.2 s: longer than the pauses between espeak-ng's words (at most 3 windows here)
TOLERANCE_S = 0.3


def vad_pipeline(wav: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "voice",
            "source": {"type": "wav", "path": str(wav), "window": WINDOW, "hop": HOP, "realtime": False, "loop": False},
            "model": {
                "path": str(MODEL),
                "backend": "onnxruntime-cpu",
                "state": {"state": "stateN"},  # the LSTM state carries from one window to the next
                "constants": {"sr": RATE},
            },
            "postprocess": {
                "type": "vad",
                "start_threshold": 0.5,
                "end_threshold": 0.35,
                "min_speech_windows": MIN_SPEECH,
                "min_silence_windows": MIN_SILENCE,
            },
        }
    )


def run_pipeline(cfg: PipelineConfig, state: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the pipeline until the file ends; the results as written to the outbox, and the pipeline's counters."""
    model = LoadedModel(cfg)
    assert model.input.name == "input" and model.input.shape == (None, None)  # the source feeds it, any length
    topics = Topics("edge", "dev")
    pipeline = Pipeline(cfg, model, topics, SeqAllocator(state, cfg.name))
    outbox = Outbox(state / "outbox.sqlite", OutboxSettings())

    async def run() -> None:
        # the link is never started: with the broker away, results wait in the outbox, where they are read
        link = MqttLink(MqttSection(), topics, asyncio.get_running_loop())
        await pipeline.run(OutboxSender(outbox, link, 16), qos=1, flush_timeout=30.0)

    try:
        asyncio.run(run())
        messages = outbox.pending(limit=100_000)
    finally:
        outbox.close()
        model.close()
    assert pipeline.error is None, pipeline.error
    assert all(m.topic == "edge/dev/voice/result" for m in messages)
    return [json.loads(m.payload) for m in messages], pipeline.stats()


def events(results: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Each event with where its run of windows began (``event_offset``): the event itself comes on the window
    that confirms it, min_*_windows windows in."""
    found = []
    for r in results:
        if r["event"] is not None:
            needed = MIN_SPEECH if r["event"] == "speech_start" else MIN_SILENCE
            assert r["offset"] == r["source"]["offset_s"]
            assert r["event_offset"] == pytest.approx(r["offset"] - (needed - 1) * HOP / RATE)
            found.append((r["event"], r["event_offset"]))
    return found


def window_span(result: dict[str, Any]) -> tuple[float, float]:
    """The new samples of a result's window, in seconds: its context overlaps the previous window."""
    start = result["source"]["offset_s"] + CONTEXT / RATE
    return start, start + HOP / RATE


def expected_windows(samples: int) -> int:
    return (samples - WINDOW) // HOP + 1  # a tail shorter than a window is not played


def check_segment(found: list[tuple[str, float]], segment: tuple[float, float]) -> None:
    (start_event, started), (end_event, ended) = found
    assert start_event == "speech_start" and end_event == "speech_end"
    assert started == pytest.approx(segment[0], abs=TOLERANCE_S), (found, segment)
    assert ended == pytest.approx(segment[1], abs=TOLERANCE_S), (found, segment)


def check_states(results: list[dict[str, Any]], segments: list[tuple[float, float]]) -> None:
    """Silence well away from the speech is silence; speech well inside a sentence is speech."""
    lag = TOLERANCE_S + MIN_SILENCE * HOP / RATE  # an end is confirmed this long after the speech stops, at most
    for r in results:
        start, end = window_span(r)
        inside = any(a + TOLERANCE_S + MIN_SPEECH * HOP / RATE <= start and end <= b - TOLERANCE_S for a, b in segments)
        outside = all(end <= a - TOLERANCE_S or start >= b + lag for a, b in segments)
        if inside:
            assert r["speech"] is True, r
        elif outside:
            assert r["speech"] is False and r["event"] is None, r


def test_assets_agree_with_their_layout() -> None:
    with wave.open(str(WAV), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.getnframes() == LAYOUT["samples"]
    assert len(SEGMENTS) == 2
    (a0, b0), (a1, b1) = SEGMENTS
    assert 0.9 <= a0 < b0 < a1 < b1 <= LAYOUT["duration_s"] - 0.9  # silence around and between the sentences
    assert a1 - b0 >= 1.4
    assert MODEL.stat().st_size == LAYOUT["model"]["bytes"]


def test_two_sentences_give_two_speech_segments_where_the_speech_is(tmp_path: Path) -> None:
    results, stats = run_pipeline(vad_pipeline(WAV), tmp_path)
    windows = expected_windows(LAYOUT["samples"])
    # every window of 576 samples, 512 apart, was taken, inferred and stored: none dropped, none refused
    assert stats["frames"] == stats["inferences"] == stats["stored"] == windows == len(results)
    assert stats["bad_inputs"] == 0 and stats["frames_dropped"] == 0 and stats["inference_errors"] == 0
    offsets = [r["source"]["offset_s"] for r in results]
    assert offsets == pytest.approx([i * HOP / RATE for i in range(windows)])
    assert all(r["source"]["sample_rate"] == RATE for r in results)
    assert [r["seq"] for r in results] == sorted({r["seq"] for r in results})

    found = events(results)
    assert [e for e, _ in found] == ["speech_start", "speech_end"] * 2, found
    check_segment(found[:2], SEGMENTS[0])
    check_segment(found[2:], SEGMENTS[1])
    # nothing in the leading silence: the first event is the first sentence's start
    leading = [r for r in results if window_span(r)[1] <= SEGMENTS[0][0] - 0.05]
    assert leading and all(r["probability"] < 0.35 and not r["speech"] and r["event"] is None for r in leading)
    check_states(results, SEGMENTS)
    assert results[-1]["speech"] is False  # the file ends in silence


def test_a_truncated_file_still_gives_the_first_segment_and_counts_the_cut(tmp_path: Path) -> None:
    """Cut halfway through the second sentence, and half a sample in: the first sentence is whole, the second
    starts and never ends, and the missing data is counted once as bad input."""
    (_, _), (second_start, second_end) = SEGMENTS
    keep = round((second_start + second_end) / 2 * RATE)  # whole samples kept
    data = WAV.read_bytes()
    header = data.index(b"data") + 8  # the data chunk's samples start here
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: header + 2 * keep + 1])

    results, stats = run_pipeline(vad_pipeline(cut), tmp_path / "state")
    assert stats["bad_inputs"] == 1  # the truncation, counted once
    assert stats["inferences"] == expected_windows(keep) == len(results)
    assert stats["inference_errors"] == 0 and stats["frames_dropped"] == 0

    found = events(results)
    assert [e for e, _ in found] == ["speech_start", "speech_end", "speech_start"], found
    check_segment(found[:2], SEGMENTS[0])
    assert found[2][1] == pytest.approx(second_start, abs=TOLERANCE_S)
    check_states(results, [SEGMENTS[0], (second_start, keep / RATE + TOLERANCE_S)])
    assert results[-1]["speech"] is True  # the file ends mid-sentence


def test_a_dynamic_length_input_takes_any_window_but_one_batch_item() -> None:
    """Silero VAD's input is (batch, samples), both dynamic: a window of any length fits as a batch of one."""
    pre = Preprocessor(PreprocessConfig(), TensorSpec("input", (None, None), "float32"))
    for n in (WINDOW, 1, 1000):
        tensor, _ = pre(Frame(np.zeros(n, np.float64), 0.0, "w", is_tensor=True))
        assert tensor.shape == (1, n) and tensor.dtype == np.float32
    with pytest.raises(SourceError, match=r"shape \(2, 576\) does not fit model input 'input' \(\?, \?\)"):
        pre(Frame(np.zeros((2, WINDOW), np.float32), 0.0, "w", is_tensor=True))  # two items: the state has one
    fixed = Preprocessor(PreprocessConfig(), TensorSpec("input", (1, WINDOW), "float32"))
    with pytest.raises(SourceError, match="does not fit"):
        fixed(Frame(np.zeros(HOP, np.float32), 0.0, "w", is_tensor=True))
