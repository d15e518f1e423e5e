"""onnxruntime, CPU execution provider."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from accelerators.base import BackendOptions, Capabilities, Probe, TensorSpec, check_inputs
from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.registry import register

# onnxruntime's type strings -> numpy dtype names
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc
    return onnxruntime


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_DTYPES.get(arg.type, arg.type))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class OnnxRuntimeSession:
    def __init__(self, session: Any, model: Path) -> None:
        self._session = session
        self._model = model
        self._inputs = tuple(_spec(a) for a in session.get_inputs())
        self._outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            values = self._session.run(self._output_names, {s.name: inputs[s.name] for s in self._inputs})
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
            raise InferenceError(f"{self._model.name}: onnxruntime failed: {_first_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._session = None


@register
class OnnxRuntimeCpu:
    """onnxruntime's CPU execution provider, configured for a small shared-core device."""

    name = "onnxruntime-cpu"

    def probe(self) -> Probe:
        try:
            ort = _import_ort()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return Probe(False, "this onnxruntime build has no CPUExecutionProvider")
        return Probe(True, device=f"onnxruntime {ort.__version__} CPU")

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            kind="cpu",
            formats=frozenset({".onnx"}),
            dtypes=frozenset({"float32", "float16", "int8", "uint8"}),
        )

    def load(self, model: Path, options: BackendOptions | None = None) -> OnnxRuntimeSession:
        ort = _import_ort()
        opts = options or BackendOptions()
        so = ort.SessionOptions()
        so.intra_op_num_threads = opts.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads burn the cores other sessions and the agent itself need (measured: up to
        # +190% latency for chained sessions on a 2-core device), so they sleep instead.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{model}: onnxruntime cannot load it: {_first_line(exc)}") from exc
        return OnnxRuntimeSession(session, model)
