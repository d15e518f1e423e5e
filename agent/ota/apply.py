"""An installed release as a pipeline's model, and the canary run that must pass before it serves.

A release replaces the pipeline's model file and variants, and its pre- and post-processing where the
release sets them (validated by the same models as the config file); labels come with it. The canary
loads the release on its planned accelerators, runs the release's reference input and compares the
outputs with the expected ones, then checks the latency against a budget.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from agent.config import PipelineConfig, PostprocessConfig, PreprocessConfig, format_validation_error
from agent.errors import OtaError
from agent.ota.manifest import MANIFEST_NAME, Manifest, decode_envelope
from agent.ota.release import load_reference

log = logging.getLogger(__name__)

CANARY_RUNS = 5  # timed runs of the reference input, after one warm-up


def installed_manifest(folder: Path) -> Manifest:
    """The manifest of a release in the store. Its signature was checked before it was installed; expiry
    and version only matter for new releases, so neither is checked again here."""
    try:
        payload, _ = decode_envelope((folder / MANIFEST_NAME).read_bytes())
        return Manifest.model_validate_json(payload)
    except (OSError, ValueError, OtaError) as exc:
        raise OtaError(f"{folder}: unreadable installed manifest: {exc}") from exc


def release_pipeline(cfg: PipelineConfig, folder: Path, manifest: Manifest) -> PipelineConfig:
    """``cfg`` with its model (and pre/post-processing where the release sets them) taken from the release."""
    model = cfg.model.model_copy(
        update={
            "path": folder / manifest.model,
            "variants": [folder / v for v in manifest.variants],
            "version": str(manifest.version),
        }
    )
    update: dict[str, Any] = {"model": model}
    where = f"release {manifest.name} version {manifest.version}"
    try:
        if manifest.preprocess is not None:
            update["preprocess"] = PreprocessConfig.model_validate(manifest.preprocess)
        post = cfg.postprocess
        if manifest.postprocess is not None:
            post = TypeAdapter(PostprocessConfig).validate_python(manifest.postprocess)
    except ValidationError as exc:
        raise OtaError(f"{where}: {format_validation_error(exc)}") from None
    labels = getattr(post, "labels", None)
    if manifest.labels is not None and hasattr(post, "labels"):
        post = post.model_copy(update={"labels": folder / manifest.labels})
    elif manifest.postprocess is not None and isinstance(labels, Path):
        if str(labels) not in manifest.files:  # a path into the device's file system: never from a release
            raise OtaError(f"{where}: postprocess.labels names {str(labels)!r}, which is not a file of the release")
        post = post.model_copy(update={"labels": folder / str(labels)})
    update["postprocess"] = post
    return cfg.model_copy(update=update)


def canary(session: Any, manifest: Manifest, folder: Path, budget_ms: float | None) -> float:
    """Run the reference input on ``session`` (a loaded model's session); return the median latency in ms.

    Raises OtaError (one line) when an output is missing, of another shape, not finite or outside the
    release's tolerance, or when the latency exceeds the budget (the release's own, else ``budget_ms``).
    """
    if manifest.reference is not None:
        inputs, expected = load_reference(folder / manifest.reference.file)
        atol, rtol = manifest.reference.atol, manifest.reference.rtol
    else:  # no reference: a smoke test on zeros, outputs must at least be finite
        inputs = {s.name: np.zeros([d if d > 0 else 1 for d in s.shape], s.dtype) for s in session.inputs}
        expected, atol, rtol = {}, 0.0, 0.0
    names = {s.name for s in session.inputs}
    if set(inputs) != names:
        raise OtaError(f"canary: the reference input has tensors {sorted(inputs)}, the model takes {sorted(names)}")
    outputs = session.run(inputs)
    for name, want in expected.items():
        got = outputs.get(name)
        if got is None:
            raise OtaError(f"canary: the model has no output {name!r} (it has {sorted(outputs)})")
        if got.shape != want.shape:
            raise OtaError(f"canary: output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}")
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            raise OtaError(f"canary: output {name!r} differs from the expected by up to {diff:.3g} "
                           f"(tolerance atol {atol:g}, rtol {rtol:g})")  # fmt: skip
    for name, got in outputs.items():
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            raise OtaError(f"canary: output {name!r} holds NaN or infinity")
    times = []
    for _ in range(CANARY_RUNS):
        start = time.perf_counter()
        session.run(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    budget = manifest.reference.latency_ms if manifest.reference and manifest.reference.latency_ms else budget_ms
    if budget is not None and median > budget:
        raise OtaError(f"canary: {median:.2f} ms per run on the reference input, over the budget of {budget:.2f} ms")
    log.info("canary of %s version %d passed: %.2f ms per run", manifest.name, manifest.version, median)
    return median
