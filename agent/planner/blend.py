"""Measured per-layer times blended into a column of estimates, so the two stay comparable.

A layer timed on the accelerator takes its measured time. A layer without a timing (the runtime fused
it away unrecognisably, or did not report it) keeps its estimate, scaled by how far the estimates were
off over the layers that were timed: an accelerator that runs the timed layers at half the estimate
runs the others at about half too, so neither kind of figure looks cheaper than the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def blend_measured(estimates: np.ndarray, measured: Sequence[float | None]) -> np.ndarray:
    """``estimates`` (ms per layer, inf where the accelerator cannot run it) with the measured values applied.

    Layers it cannot run stay inf whatever was measured: what it runs is the cost model's call.
    """
    if len(measured) != len(estimates):
        raise ValueError(f"{len(measured)} measured layer times for {len(estimates)} layers")
    out = estimates.astype(float)  # (layers,)
    known = {i: float(ms) for i, ms in enumerate(measured) if ms is not None and math.isfinite(estimates[i])}
    if not known:
        return out
    guessed = sum(float(estimates[i]) for i in known)
    ratio = sum(known.values()) / guessed if guessed > 0 else 1.0
    out[np.isfinite(out)] *= ratio
    for i, ms in known.items():
        out[i] = ms
    return out
