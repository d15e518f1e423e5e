"""Generated frames, for tests and demos: noise, a ramp or zeros, of any shape, at a set rate."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from agent.schema import Section
from agent.sources.base import Frame
from agent.sources.pacing import Runner

log = logging.getLogger(__name__)


class SyntheticSource(Section):
    type: Literal["synthetic"] = Field(description="Generated frames, for tests and demos; no sensor needed.")
    shape: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 224, 224, 3],
        min_length=1,
        description="Shape of each frame; uint8 with (height, width, 3) makes an RGB image, anything else a tensor.",
    )
    dtype: Literal["float32", "uint8"] = Field("float32", description="Element type.")
    pattern: Literal["noise", "ramp", "zeros"] = Field(
        "noise",
        description="noise: float32 standard normal, uint8 uniform 0..255; ramp: 0, 1, 2, ... along the flattened "
        "frame, shifted by one every frame (uint8 wraps at 256, float32 is scaled to [0, 1)); zeros.",
    )
    seed: int = Field(0, description="Seed of the noise, so that runs repeat; restart starts the sequence over.")
    rate_hz: float = Field(1.0, ge=0, description="Frames per second; 0: as fast as they are taken.")
    count: int = Field(0, ge=0, description="Frames to make before the source ends; 0: forever.")


class SyntheticRunner(Runner):
    """Runs in its own thread: makes frames and hands them to ``emit`` at the configured rate."""

    def __init__(self, cfg: SyntheticSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        super().__init__(emit, stop)
        self.cfg = cfg
        # bad_inputs counts nothing generated is malformed; kept for the runner interface
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self.image = cfg.dtype == "uint8" and len(cfg.shape) == 3 and cfg.shape[2] == 3
        self._size = math.prod(cfg.shape)

    def run(self) -> None:
        while not self.stop.is_set():
            self._begin_pass()
            rng = np.random.default_rng(self.cfg.seed)
            index = 0
            while not self.cfg.count or index < self.cfg.count:
                if self._restart.is_set() or not self._pacer.wait(self.rate_hz):
                    break
                self.emit(self._frame(index, rng))
                index += 1
            if self.stop.is_set():
                return
            if not self._restart.is_set():
                return  # count frames made
            log.info("synthetic source starts over")

    def make(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Frame number ``index`` of the pattern, in the configured shape and dtype."""
        shape = tuple(self.cfg.shape)
        if self.cfg.pattern == "zeros":
            return np.zeros(shape, self.cfg.dtype)
        if self.cfg.pattern == "ramp":
            ramp = np.arange(index, index + self._size, dtype=np.int64)
            if self.cfg.dtype == "uint8":
                return (ramp % 256).astype(np.uint8).reshape(shape)
            return ((ramp % self._size) / self._size).astype(np.float32).reshape(shape)
        if self.cfg.dtype == "uint8":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.standard_normal(size=shape, dtype=np.float32)

    def _frame(self, index: int, rng: np.random.Generator) -> Frame:
        data = self.make(index, rng)
        meta: dict[str, object] = {"index": index, "pattern": self.cfg.pattern}
        if self.image:
            meta |= {"width": data.shape[1], "height": data.shape[0]}
            return Frame(data, time.time(), "synthetic", meta=meta)
        return Frame(data, time.time(), "synthetic", is_tensor=True, meta=meta)
