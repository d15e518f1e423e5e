"""Profile a model file of any supported format into the one layer IR."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.errors import ModelError
from agent.models.ir import ModelProfile

FORMATS = (".onnx", ".tflite")


def profile_model(
    path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None, default_dim: int = 1
) -> ModelProfile:
    """Layer-by-layer profile of ``path``; dynamic dimensions take ``input_shapes``, else ``default_dim``."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from agent.models.onnx_profile import profile_onnx

        return profile_onnx(path, input_shapes, default_dim)
    if suffix == ".tflite":
        from agent.models.tflite_profile import profile_tflite

        return profile_tflite(path, input_shapes, default_dim)
    raise ModelError(f"{path}: cannot profile {suffix or 'extension-less'} files; supported: {', '.join(FORMATS)}")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1,3,224,224`` -> ("NAME", (1, 3, 224, 224)); raises ModelError naming what is wrong."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 1 for d in shape):
        raise ModelError(f"--input {text!r}: expected NAME=D1,D2,... with positive integers, e.g. images=1,3,224,224")
    return name, shape
