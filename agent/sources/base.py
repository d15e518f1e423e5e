"""What a source hands to a pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One sample from a sensor: an image (H, W, C) uint8 or a ready tensor, with where it came from."""

    data: np.ndarray
    ts: float  # time.time() when the sample was taken
    origin: str  # e.g. the file name, the camera device
    is_tensor: bool = False  # True: feed as-is (a .npy), skip image pre-processing
    meta: dict[str, Any] = field(default_factory=dict)


class BadInput(Exception):
    """An input that cannot be used (a garbage line, an undecodable payload); ``kind`` groups them so that
    each kind is logged once, while every one is counted."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def note_bad(exc: BadInput, where: str, warned: set[str], what: str = "input") -> None:
    """Log the first bad input of each kind; the caller counts them all."""
    if exc.kind not in warned:
        warned.add(exc.kind)
        log.warning("%s: skipping a bad %s (%s: %s); further ones like it are counted, not logged",
                    where, what, exc.kind, exc)  # fmt: skip
