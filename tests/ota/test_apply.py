"""A release as a pipeline's model (its pre/post-processing and labels) and the canary run, on real models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.errors import OtaError
from agent.ota.apply import canary, release_pipeline
from agent.ota.release import build_release
from agent.pipeline import LoadedModel
from tests.conftest import DIGITS_MODEL, write_config
from tests.ota.releases import DIGITS_LABELS, PIPELINE_TOML


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "release"
    out.mkdir()
    shutil.copyfile(DIGITS_MODEL, out / "model.onnx")
    (out / "names.txt").write_text("\n".join(f"digit {i}" for i in range(10)))
    return out


def pipeline(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config(write_config(tmp_path, 1883, PIPELINE_TOML)).pipelines[0]


def test_a_release_brings_its_model_labels_and_processing(tmp_path: Path, folder: Path) -> None:
    manifest = build_release(
        folder, name="digits", version=4, model="model.onnx", labels="names.txt",
        preprocess={"color": "gray", "mean": [255.0], "std": [-255.0]},
        postprocess={"type": "classification", "top_k": 1},
    )  # fmt: skip
    cfg = release_pipeline(pipeline(tmp_path), folder, manifest)
    assert cfg.model.path == folder / "model.onnx" and cfg.model.version == "4"
    assert cfg.postprocess.type == "classification" and cfg.postprocess.top_k == 1
    assert cfg.postprocess.labels == folder / "names.txt"
    model = LoadedModel(cfg)
    assert canary(model.session, manifest, folder, None) > 0  # its own reference output, reproduced


def test_release_settings_are_validated_and_cannot_reach_outside_the_release(tmp_path: Path, folder: Path) -> None:
    base = pipeline(tmp_path)
    bad = build_release(folder, name="digits", version=4, model="model.onnx", preprocess={"layout": "chw"})
    with pytest.raises(OtaError, match=r"release digits version 4: .*layout"):
        release_pipeline(base, folder, bad)
    hostile = build_release(
        folder, name="digits", version=5, model="model.onnx",
        postprocess={"type": "classification", "labels": "/etc/passwd"},
    )  # fmt: skip
    with pytest.raises(OtaError, match="not a file of the release"):
        release_pipeline(base, folder, hostile)
    kept = build_release(folder, name="digits", version=6, model="model.onnx")
    assert release_pipeline(base, folder, kept).postprocess.labels == DIGITS_LABELS  # the config's own labels


def test_the_canary_refuses_wrong_outputs_and_a_blown_latency_budget(tmp_path: Path, folder: Path) -> None:
    manifest = build_release(folder, name="digits", version=4, model="model.onnx", latency_ms=1e-6)
    model = LoadedModel(release_pipeline(pipeline(tmp_path), folder, manifest))
    with pytest.raises(OtaError, match=r"over the budget of 0\.00 ms"):
        canary(model.session, manifest, folder, None)
    relaxed = build_release(folder, name="digits", version=5, model="model.onnx")
    assert canary(model.session, relaxed, folder, budget_ms=60_000.0) > 0
    with pytest.raises(OtaError, match="over the budget"):
        canary(model.session, relaxed, folder, budget_ms=1e-6)  # the agent's own budget when the release sets none
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(DIGITS_MODEL, other / "model.onnx")
    np.savez(other / "ref.npz", **{"input:pixels": np.zeros((1, 1, 8, 8), np.float32),
                                   "output:probabilities": np.full((1, 10), 0.5, np.float32)})  # fmt: skip
    wrong = build_release(other, name="digits", version=6, model="model.onnx", reference="ref.npz")
    with pytest.raises(OtaError, match="differs from the expected by up to"):
        canary(model.session, wrong, other, None)
