"""What a source hands to a pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One sample from a sensor: an image (H, W, C) uint8 or a ready tensor, with where it came from."""

    data: np.ndarray
    ts: float  # time.time() when the sample was taken
    origin: str  # e.g. the file name, the camera device
    is_tensor: bool = False  # True: feed as-is (a .npy), skip image pre-processing
    meta: dict[str, Any] = field(default_factory=dict)
