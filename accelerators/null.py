"""The null backend: loads a model only to learn its tensors, then answers zeros. For tests and dry runs.

Its kind is "none", so automatic selection never picks it; name it (``null``) to use it. ``fail_after``
makes it break on purpose, which failover tests need; ``delay_ms`` stands in for a slow accelerator.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from accelerators.base import (
    Backend,
    BackendConfig,
    BackendOptions,
    Capabilities,
    FixedSpecs,
    Probe,
    Session,
    TensorSpec,
    check_inputs,
)
from accelerators.errors import InferenceError, ModelLoadError
from accelerators.host import Host
from accelerators.litert import LiteRtConfig, LiteRtCpu
from accelerators.modelfile import check_model_file
from accelerators.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeConfig
from accelerators.registry import register

FORMATS = frozenset({".onnx", ".tflite"})


class NullConfig(BackendConfig):
    type: Literal["null"] = Field("null", description="No device: outputs are zeros (tests, dry runs).")
    fail_after: int | None = Field(
        None, ge=0, description="Raise InferenceError on every run after this many runs of a session; unset: never."
    )
    delay_ms: float = Field(0.0, ge=0, le=60_000, description="Sleep this long in every run, like a slow device.")


@register
class NullType:
    type = "null"
    formats = FORMATS
    Config = NullConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, NullConfig)
        return [NullBackend(host, config)]


class NullBackend:
    name = "null"

    def __init__(self, host: Host, config: NullConfig) -> None:
        self._host = host
        self._config = config

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        return Probe(True, device="no device: every output is zeros")

    def capabilities(self) -> Capabilities:
        # It does no work, so a planner that is told to consider it sees the fastest part there is;
        # failover tests rely on that (the plan lands here, then fail_after makes it fail).
        dtypes = frozenset({"float32", "int8", "uint8"})
        return Capabilities(
            name=self.name,
            kind="none",
            formats=FORMATS,
            dtypes=dtypes,
            peak_ops_per_s=dict.fromkeys(dtypes, 1e15),
            memory_bandwidth_bytes_per_s=1e15,
        )

    def load(self, model: Path, options: BackendOptions | None = None) -> NullSession:
        check_model_file(model)
        suffix = model.suffix.lower()
        if suffix not in FORMATS:
            raise ModelLoadError(f"{model}: the null backend reads {' and '.join(sorted(FORMATS))} files only")
        # The CPU runtimes read the tensor specs; their session is dropped right away.
        reader: Session
        if suffix == ".onnx":
            cpu = OnnxRuntimeBackend("CPUExecutionProvider", self._host, OnnxRuntimeConfig(), built=True)
            reader = cpu.load(model)
        else:
            reader = LiteRtCpu(LiteRtConfig(xnnpack=False)).load(model)
        try:
            return NullSession(model, reader.inputs, reader.outputs, self._config)
        finally:
            reader.close()


class NullSession(FixedSpecs):
    def __init__(
        self, model: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], config: NullConfig
    ) -> None:
        self._model = model
        self._inputs = inputs
        self._outputs = outputs
        self._config = config
        self.runs = 0  # successful runs so far

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        limit = self._config.fail_after
        if limit is not None and self.runs >= limit:
            raise InferenceError(f"{self._model.name}: null backend fails after {limit} run(s) (fail_after)")
        if self._config.delay_ms:
            time.sleep(self._config.delay_ms / 1000)
        self.runs += 1
        # Dynamic dimensions (None) become 1: there is no computation to tell their size.
        return {
            spec.name: np.zeros(tuple(1 if d is None else d for d in spec.shape), dtype=spec.dtype)
            for spec in self._outputs
        }

    def close(self) -> None:
        self.runs = 0
