"""Releases for the updater tests: signed folders the test HTTPS server serves, made with the publisher
tools (agent.ota.release), from the digits model or from deliberately broken models built here."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from agent.ota.manifest import Manifest
from agent.ota.release import build_release, write_release
from tests.conftest import ASSETS, DIGITS_MODEL

DIGITS_IMAGES = ASSETS / "digits" / "images"
DIGITS_LABELS = ASSETS / "digits" / "labels.txt"

# the digits pipeline the updater tests serve: its preprocessing maps pixels to [0, 1]
PIPELINE_TOML = f"""
[[pipelines]]
name = "digits"
source = {{ type = "replay", path = "{DIGITS_IMAGES}", rate_hz = 0, loop = true }}
model = {{ path = "{DIGITS_MODEL}", release = "digits", version = "0" }}
preprocess = {{ color = "gray", mean = [255.0], std = [-255.0] }}
postprocess = {{ type = "classification", top_k = 2, labels = "{DIGITS_LABELS}" }}
"""


def publish(
    root: Path,
    version: int,
    key: Ed25519PrivateKey,
    model: Path = DIGITS_MODEL,
    *,
    name: str = "digits",
    reference: str | None = "auto",
    expires_in: timedelta = timedelta(days=30),
    now: datetime | None = None,
) -> Manifest:
    """Make ``root`` (the served folder) hold release ``version`` of ``model``, signed with ``key``."""
    for old in root.iterdir():
        old.unlink()
    shutil.copyfile(model, root / "model.onnx")
    shutil.copyfile(DIGITS_LABELS, root / "labels.txt")
    if reference is not None and reference != "auto":
        shutil.copyfile(reference, root / "reference.npz")
        reference = "reference.npz"
    manifest = build_release(
        root,
        name=name,
        version=version,
        model="model.onnx",
        labels="labels.txt",
        reference=reference,
        expires_in=expires_in,
        now=now,
    )
    write_release(root, manifest, [key])
    return manifest


def build_nan_on_live_input(path: Path) -> Path:
    """A digits-shaped model that is finite for inputs below -0.5 and NaN for the pipeline's [0, 1] pixels:
    probabilities = sqrt(-x - 0.5) @ W. It passes a canary whose reference input is all -1."""
    weights = helper.make_tensor("W", TensorProto.FLOAT, [64, 10], np.full(640, 0.01, np.float32).tolist())
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
        helper.make_node("Neg", ["flat"], ["neg"]),
        helper.make_node("Sub", ["neg", "half"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["root"]),
        helper.make_node("MatMul", ["root", "W"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan_on_live_input",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [weights, half],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def negative_reference(model: Path, path: Path) -> Path:
    """A reference of all -1 inputs and the model's outputs for them (computed with onnxruntime)."""
    import onnxruntime as ort

    pixels = np.full((1, 1, 8, 8), -1.0, np.float32)
    (out,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})
    np.savez(path, **{"input:pixels": pixels, "output:probabilities": out})
    return path
