"""The contract between the agent and a backend: probe, capabilities, load, run."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from accelerators.errors import InputError
from accelerators.host import Host


@dataclass(frozen=True)
class Probe:
    """Whether a backend can be used here, and if not, why."""

    available: bool
    reason: str = ""
    device: str = ""


class Family(StrEnum):
    """What kind of work a layer does; calibration and the planner's cost model are per family."""

    CONV = "conv"  # standard (dense or grouped) convolution, kernel larger than 1x1
    DEPTHWISE_CONV = "depthwise_conv"  # one filter per input channel
    POINTWISE_CONV = "pointwise_conv"  # 1x1 convolution
    CONV_TRANSPOSE = "conv_transpose"
    FULLY_CONNECTED = "fully_connected"  # activation x constant weight matrix
    MATMUL = "matmul"  # activation x activation (attention) or batched matmul
    RECURRENT = "recurrent"  # LSTM, GRU, RNN cells
    ELEMENTWISE = "elementwise"  # arithmetic and activation functions, one output per input element
    NORMALIZATION = "normalization"  # batch/layer/instance norm, softmax
    POOLING = "pooling"  # max/average/global pooling, reductions
    RESIZE = "resize"  # upsampling, interpolation
    RESHAPE = "reshape"  # reshape, transpose, concat, slice, pad, gather: moves data, computes nothing
    QUANTIZE = "quantize"  # quantize, dequantize, cast
    OTHER = "other"


# Families whose cost is dominated by multiply-accumulates; the rest are memory-bound.
MAC_FAMILIES = frozenset(
    {
        Family.CONV,
        Family.DEPTHWISE_CONV,
        Family.POINTWISE_CONV,
        Family.CONV_TRANSPOSE,
        Family.FULLY_CONNECTED,
        Family.MATMUL,
        Family.RECURRENT,
    }
)


@dataclass(frozen=True)
class FamilyRate:
    """One calibration figure: how fast this accelerator ran a representative layer of one family."""

    macs_per_s: float  # effective multiply-accumulates per second (0 for families without MACs)
    bytes_per_s: float  # effective activation + parameter bytes moved per second
    layer_ms: float  # median time of the representative layer, dispatch overhead removed
    dtype: str = "float32"


@dataclass(frozen=True)
class Capabilities:
    """What an accelerator can do. Catalog figures are estimates; ``measured`` rates override them."""

    name: str
    kind: str  # "cpu", "gpu", "npu", "tpu", "none"
    formats: frozenset[str]  # model file suffixes it loads, e.g. {".onnx"}
    dtypes: frozenset[str] = frozenset({"float32"})
    peak_ops_per_s: Mapping[str, float] = field(default_factory=dict)  # dtype -> MAC/s (1 MAC = 2 ops)
    memory_bandwidth_bytes_per_s: float | None = None
    on_chip_memory_bytes: int | None = None
    transfer_bytes_per_s: float | None = None  # host <-> device; None when it shares host memory
    dispatch_overhead_s: float = 0.0
    supported_ops: frozenset[str] | None = None  # None: every op of its formats
    part: str = ""  # catalog entry the estimates come from, e.g. "Coral Edge TPU (USB)"
    measured: Mapping[str, FamilyRate] = field(default_factory=dict)  # family -> calibration figure
    measured_dispatch_overhead_s: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "part": self.part,
            "formats": sorted(self.formats),
            "dtypes": sorted(self.dtypes),
            "peak_ops_per_s": dict(self.peak_ops_per_s),
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "on_chip_memory_bytes": self.on_chip_memory_bytes,
            "transfer_bytes_per_s": self.transfer_bytes_per_s,
            "dispatch_overhead_s": self.dispatch_overhead_s,
            "supported_ops": None if self.supported_ops is None else sorted(self.supported_ops),
            "measured": {
                family: {
                    "macs_per_s": rate.macs_per_s,
                    "bytes_per_s": rate.bytes_per_s,
                    "layer_ms": rate.layer_ms,
                    "dtype": rate.dtype,
                }
                for family, rate in self.measured.items()
            },
            "measured_dispatch_overhead_s": self.measured_dispatch_overhead_s,
        }


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the backend sees it."""

    name: str
    shape: tuple[int | None, ...]  # None for a dimension the model leaves dynamic
    dtype: str  # numpy dtype name, e.g. "float32"
    quantization: tuple[float, int] | None = None  # (scale, zero_point) for quantized tensors


class BackendOptions(BaseModel):
    """Options for loading one model: how much of the device one session may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(1, ge=1, le=64, description="CPU threads the backend may use for one inference.")
    exclusive: bool = Field(
        False,
        description="The session has the CPU cores to itself (one model, one segment): its runtime's threads may "
        "spin-wait between runs and parallel sections, faster alone but costly beside other sessions.",
    )


class BackendConfig(BaseModel):
    """A backend's device-level settings (``[[accelerators]]`` in the agent's config).

    Each backend module subclasses this with ``type: Literal["<its type>"]`` and its own fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Backend type this entry configures.")
    enabled: bool = Field(True, description="false: list this backend as unavailable and never use it.")

    def disabled(self) -> Probe | None:
        """The probe of an accelerator whose type is switched off in the config, else None."""
        if self.enabled:
            return None
        return Probe(False, f"disabled in the config ([[accelerators]] type = '{self.type}')")


class FixedSpecs:
    """For a Session whose tensor specs are fixed when it is loaded: set ``_inputs``/``_outputs`` in
    ``__init__`` and this exposes them as ``inputs``/``outputs``."""

    _inputs: tuple[TensorSpec, ...] = ()
    _outputs: tuple[TensorSpec, ...] = ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs


@runtime_checkable
class Session(Protocol):
    """A loaded model. Not thread-safe: one thread runs it at a time."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; InputError (from check_inputs) for inputs that do not fit, InferenceError otherwise."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """One accelerator as the agent sees it (a backend type may offer several, e.g. one per device)."""

    name: str

    def probe(self) -> Probe: ...

    def capabilities(self) -> Capabilities: ...

    def load(self, model: Path, options: BackendOptions | None = None) -> Session:
        """Load a model file; raises ModelLoadError with a message naming the file."""
        ...


def check_inputs(specs: tuple[TensorSpec, ...], inputs: Mapping[str, np.ndarray]) -> None:
    """Validate names, ranks, static dimensions and dtypes before handing tensors to a runtime (InputError).

    Runs before every inference, so the common case (every input present, its shape equal to a static
    spec, the dtype the spec names) costs a few comparisons: a fraction of a microsecond per input.
    """
    for spec in specs:
        arr = inputs.get(spec.name)
        if arr is None:
            missing = [s.name for s in specs if s.name not in inputs]
            raise InputError(f"missing model input(s): {', '.join(missing)}")
        shape = arr.shape
        if shape != spec.shape and (
            len(shape) != len(spec.shape)
            or any(want is not None and want != got for want, got in zip(spec.shape, shape, strict=True))
        ):
            raise InputError(f"input {spec.name!r} has shape {tuple(shape)}, model expects {format_shape(spec.shape)}")
        if arr.dtype != spec.dtype:  # numpy compares a dtype with its name (dtype.name itself takes microseconds)
            raise InputError(f"input {spec.name!r} has dtype {arr.dtype}, model expects {spec.dtype}")


def format_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class BackendType(Protocol):
    """What ``@register`` takes: a class that lists the accelerators of one backend type on a host."""

    type: ClassVar[str]
    formats: ClassVar[frozenset[str]]  # model file suffixes its accelerators load
    Config: ClassVar[builtins.type[BackendConfig]]  # "type" is also this protocol's attribute name

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        """Every accelerator of this type on ``host``, available or not (then probe() says why)."""
        ...
