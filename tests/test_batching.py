"""Several inputs into one model (a multi source), and their frames inferred together in batches: with the
real digits classifier (dynamic batch dimension) and the real daemon, results are right for every frame of
every input, and the same as frame-by-frame inference."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import Config, check_config_files, load_config
from agent.errors import ConfigError
from agent.mqtt.localbroker import Mosquitto
from tests.conftest import ASSETS, FACE_MODEL, write_config

DIGITS = ASSETS / "digits"
FRAMES_PER_INPUT = 10  # the ten digit images


def _run(tmp_path: Path, port: int, name: str, source: str, model: str, extra: str = "") -> list[dict[str, Any]]:
    """Run the in-process daemon until its replays end; the results in the order they were published."""
    from tests.conftest import Subscriber

    config = write_config(
        tmp_path / name,
        port,
        f"""
[[pipelines]]
name = "{name}"
source = {source}
model = {model}
{extra}
""",
        device_id="dev",
    )
    sub = Subscriber(port, f"edge/dev/{name}/result")
    try:
        agent = Agent(load_config(config))
        assert asyncio.run(agent.run()) == 0
        stats = agent.pipelines[0].stats()
        stats["drift_checks"] = agent.pipelines[0].model.session.drift_checks
        results = [sub.next().json() for _ in range(stats["inferences"])]
    finally:
        sub.close()
    results.append({"stats": stats})
    return results


def _digits_source(rate: int = 0) -> str:
    replay = f'{{ type = "replay", path = "{DIGITS / "images"}", rate_hz = {rate}, loop = false }}'
    return f'{{ type = "multi", names = ["left", "right"], sources = [{replay}, {replay}] }}'


DIGITS_MODEL = f'{{ path = "{DIGITS / "digits_mlp.onnx"}" }}'
DIGITS_PROCESSING = f"""preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 3, labels = "{DIGITS / "labels.txt"}" }}
queue_size = 32"""


def test_two_inputs_batched_into_one_model_give_every_frame_its_own_right_result(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    (tmp_path / "batched").mkdir()
    (tmp_path / "single").mkdir()
    batched = _run(
        tmp_path, mosquitto.port, "batched", _digits_source(), DIGITS_MODEL,
        DIGITS_PROCESSING + "\nbatch_size = 8\nbatch_wait_ms = 50",
    )  # fmt: skip
    stats = batched.pop()["stats"]
    assert stats["inferences"] == 2 * FRAMES_PER_INPUT and stats["frames_dropped"] == 0
    assert stats["batches"] < stats["inferences"]  # frames were inferred together
    assert not stats["drift_checks"]  # batches are not what the plan timed: no re-plans on them
    assert any(r.get("batch", 1) > 1 for r in batched)
    by_input: dict[str, list[str]] = {"left": [], "right": []}
    for r in batched:
        true_digit = r["source"]["origin"].removeprefix("digit_").removesuffix(".png")
        assert r["label"] == true_digit, r
        by_input[r["source"]["input"]].append(true_digit)
    assert sorted(by_input["left"]) == sorted(by_input["right"]) == [str(d) for d in range(10)]
    # the same frames one at a time: the same scores, so splitting the batch kept each frame's outputs
    single = _run(tmp_path, mosquitto.port, "single", _digits_source(), DIGITS_MODEL, DIGITS_PROCESSING)
    single_stats = single.pop()["stats"]
    assert single_stats["batches"] == single_stats["inferences"] == 2 * FRAMES_PER_INPUT
    assert single_stats["drift_checks"]
    assert all("batch" not in r for r in single)

    def scores(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
        return {(r["source"]["input"], r["source"]["origin"]): [t["score"] for t in r["top"]] for r in results}

    one, many = scores(single), scores(batched)
    assert one.keys() == many.keys()
    for key, values in one.items():
        assert many[key] == pytest.approx(values, abs=1e-5), key


def test_a_fixed_batch_model_infers_frame_by_frame_even_when_asked_to_batch(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    images = ASSETS / "images"
    replay = f'{{ type = "replay", path = "{images}", pattern = "*.jpg", rate_hz = 0, loop = false }}'
    (tmp_path / "faces").mkdir()
    results = _run(
        tmp_path,
        mosquitto.port,
        "faces",
        f'{{ type = "multi", sources = [{replay}, {replay}] }}',
        f'{{ path = "{FACE_MODEL}", backend = "litert-cpu" }}',
        'preprocess = { resize = "letterbox", mean = [127.5], std = [127.5] }\n'
        'postprocess = { type = "ssd", labels = ["face"] }\nbatch_size = 4\nqueue_size = 16',
    )
    stats = results.pop()["stats"]
    count = len(list(images.glob("*.jpg")))
    assert stats["inferences"] == stats["batches"] == 2 * count  # (1, 128, 128, 3): no batch dimension to fill
    assert {r["source"]["input"] for r in results} == {"replay-0", "replay-1"}
    astronaut = [r for r in results if r["source"]["origin"] == "astronaut.jpg"]
    assert len(astronaut) == 2 and all(len(r["detections"]) == 1 for r in astronaut)


def _load(tmp_path: Path, pipeline: str, check_files: bool = True) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\n[agent]\nstate_dir = "{tmp_path}"\n[[pipelines]]\n{pipeline}')
    return load_config(path, env={}, check_files=check_files)


def test_batching_and_multi_source_mistakes_are_one_line(tmp_path: Path) -> None:
    model = DIGITS / "digits_mlp.onnx"
    replay = f'{{ type = "replay", path = "{DIGITS / "images"}" }}'
    stateful = f'name = "p"\nsource = {replay}\nbatch_size = 4\nmodel = {{ path = "{model}", state = {{ h = "y" }} }}\n'
    with pytest.raises(ConfigError, match=r"batch_size > 1 with model\.state"):
        _load(tmp_path, stateful, check_files=False)
    names = f'name = "p"\nsource = {{ type = "multi", names = ["a"], sources = [{replay}, {replay}] }}\n'
    with pytest.raises(ConfigError, match="1 name"):
        _load(tmp_path, names + f'model = {{ path = "{model}" }}\n')
    missing = f'{{ type = "replay", path = "{tmp_path / "nowhere"}" }}'
    multi = f'{{ type = "multi", sources = [{replay}, {missing}] }}'
    config = _load(tmp_path, f'name = "p"\nsource = {multi}\nmodel = {{ path = "{model}" }}\n')
    with pytest.raises(ConfigError, match=r"source\.sources\[1\]\.path: no such file"):
        check_config_files(config, tmp_path / "c.toml", sources=True)  # as `edge-agent config check` does
