"""Checks a model file before any runtime sees it: hostile files get one clear error, not a crash."""

from __future__ import annotations

from pathlib import Path

from accelerators.errors import ModelLoadError


def check_model_file(path: Path) -> None:
    """Raise ModelLoadError naming ``path`` if it is not a plausible, self-contained model of its format."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from accelerators.onnx_file import check_onnx_file

        check_onnx_file(path)
    elif suffix == ".tflite":
        try:
            from accelerators.tflite_file import check_tflite_file  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # the TFLite checker is optional: without it the runtime's own checks apply
            return
        check_tflite_file(path)
