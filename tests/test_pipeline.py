"""A pipeline in process, with frames arriving faster than inference: every frame is accounted for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from agent.app import Agent
from agent.config import load_config
from agent.mqtt.localbroker import Mosquitto
from tests.conftest import FACE_MODEL, write_config


def test_drops_are_counted_and_every_inference_is_published(
    mosquitto: Mosquitto, subscribe: Any, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(60):
        np.save(frames / f"{i:03d}.npy", np.full((1, 128, 128, 3), (i % 7) / 7, np.float32))
    (frames / "999.npy").write_bytes(b"not a tensor")
    config_file = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "burst"
queue_size = 1
overflow = "drop_oldest"
source = {{ type = "replay", path = "{frames}", rate_hz = 0, loop = false }}
model = {{ path = "{FACE_MODEL}" }}
postprocess = {{ type = "ssd", labels = ["face"] }}
""",
    )
    sub = subscribe(mosquitto.port, "edge/dev/burst/result")
    agent = Agent(load_config(config_file))
    assert asyncio.run(agent.run()) == 0
    (pipeline,) = agent.pipelines
    stats = pipeline.stats()
    assert stats["frames"] == 60 and stats["bad_inputs"] == 1
    # nothing vanishes: each frame was either inferred or counted as dropped
    assert stats["inferences"] + stats["frames_dropped"] == 60
    assert stats["published"] == stats["inferences"] and stats["publish_failed"] == 0
    received = [sub.next().json() for _ in range(stats["inferences"])]
    seqs = [r["seq"] for r in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    origins = [r["source"]["origin"] for r in received]
    assert origins == sorted(origins)  # frames are published in the order they were taken


def test_replay_at_full_speed_infers_every_file_by_default(mosquitto: Mosquitto, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(40):
        np.save(frames / f"{i:03d}.npy", np.zeros((1, 128, 128, 3), np.float32))
    config_file = write_config(
        tmp_path,
        mosquitto.port,
        f"""
[[pipelines]]
name = "all"
queue_size = 1
source = {{ type = "replay", path = "{frames}", rate_hz = 0, loop = false }}
model = {{ path = "{FACE_MODEL}" }}
""",
    )
    agent = Agent(load_config(config_file))
    assert asyncio.run(agent.run()) == 0
    stats = agent.pipelines[0].stats()
    assert stats["frames_dropped"] == 0 and stats["inferences"] == 40 and stats["published"] == 40
