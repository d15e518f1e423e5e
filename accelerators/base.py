"""The contract between the agent and a backend: probe, capabilities, load, run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Probe:
    """Whether a backend can be used here, and if not, why."""

    available: bool
    reason: str = ""
    device: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What an accelerator can do; figures are estimates until calibration replaces them."""

    name: str
    kind: str  # "cpu", "gpu", "npu", "tpu", "none"
    formats: frozenset[str]  # model file suffixes it loads, e.g. {".onnx"}
    dtypes: frozenset[str] = frozenset({"float32"})
    peak_ops_per_s: Mapping[str, float] = field(default_factory=dict)  # dtype -> ops/s
    memory_bandwidth_bytes_per_s: float | None = None
    on_chip_memory_bytes: int | None = None
    transfer_bytes_per_s: float | None = None  # host <-> device; None when it shares host memory
    dispatch_overhead_s: float = 0.0
    supported_ops: frozenset[str] | None = None  # None: every op of its formats


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the backend sees it."""

    name: str
    shape: tuple[int | None, ...]  # None for a dimension the model leaves dynamic
    dtype: str  # numpy dtype name, e.g. "float32"
    quantization: tuple[float, int] | None = None  # (scale, zero_point) for quantized tensors


class BackendOptions(BaseModel):
    """Options every backend accepts; backends subclass this with a ``type`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(1, ge=1, le=64, description="CPU threads the backend may use for one inference.")


@runtime_checkable
class Session(Protocol):
    """A loaded model. Not thread-safe: one thread runs it at a time."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; raises InferenceError for bad inputs or a failing device."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """One accelerator as the agent sees it."""

    name: str

    def probe(self) -> Probe: ...

    def capabilities(self) -> Capabilities: ...

    def load(self, model: Path, options: BackendOptions | None = None) -> Session:
        """Load a model file; raises ModelLoadError with a message naming the file."""
        ...


def check_inputs(specs: tuple[TensorSpec, ...], inputs: Mapping[str, np.ndarray]) -> None:
    """Validate names, ranks, static dimensions and dtypes before handing tensors to a runtime."""
    from accelerators.errors import InferenceError

    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise InferenceError(f"missing model input(s): {', '.join(missing)}")
    for spec in specs:
        arr = inputs[spec.name]
        if arr.ndim != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, arr.shape, strict=True)
        ):
            raise InferenceError(
                f"input {spec.name!r} has shape {tuple(arr.shape)}, model expects {format_shape(spec.shape)}"
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise InferenceError(f"input {spec.name!r} has dtype {arr.dtype}, model expects {spec.dtype}")


def format_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
