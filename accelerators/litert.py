"""LiteRT (ai-edge-litert) on the CPU with XNNPACK; tflite_runtime where a device ships that instead."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from accelerators.base import BackendOptions, Capabilities, Probe, TensorSpec, check_inputs
from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.registry import register


def _interpreter_class() -> tuple[Any, str]:
    """LiteRT's Interpreter, else tflite_runtime's; the second item names which one."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError as litert_exc:
        try:
            from tflite_runtime.interpreter import Interpreter as TfliteInterpreter
        except ImportError:
            raise BackendUnavailable(
                f"neither ai-edge-litert nor tflite_runtime is installed ({litert_exc}); pip install ai-edge-litert"
            ) from litert_exc
        return TfliteInterpreter, "tflite_runtime"


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(int(d) if d >= 0 else None for d in signature)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quant = (float(scale), int(zero_point)) if scale else None
    return TensorSpec(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name, quantization=quant)


class LiteRtSession:
    def __init__(self, interpreter: Any, model: Path) -> None:
        self._interp = interpreter
        self._model = model
        in_details = interpreter.get_input_details()
        out_details = interpreter.get_output_details()
        self._inputs = tuple(_spec(d) for d in in_details)
        self._outputs = tuple(_spec(d) for d in out_details)
        self._in_index = {d["name"]: d["index"] for d in in_details}
        self._out_index = [(d["name"], d["index"]) for d in out_details]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            for name, index in self._in_index.items():
                self._interp.set_tensor(index, inputs[name])
            self._interp.invoke()
            return {name: self._interp.get_tensor(index) for name, index in self._out_index}
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"{self._model.name}: LiteRT failed: {exc}") from exc

    def close(self) -> None:
        self._interp = None


@register
class LiteRtCpu:
    """The LiteRT interpreter on the CPU; XNNPACK is its default CPU delegate."""

    name = "litert-cpu"

    def probe(self) -> Probe:
        try:
            _, package = _interpreter_class()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        return Probe(True, device=f"{package} CPU (XNNPACK)")

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            kind="cpu",
            formats=frozenset({".tflite"}),
            dtypes=frozenset({"float32", "float16", "int8", "uint8"}),
        )

    def load(self, model: Path, options: BackendOptions | None = None) -> LiteRtSession:
        interpreter_cls, _ = _interpreter_class()
        opts = options or BackendOptions()
        if model.name.endswith("_edgetpu.tflite"):
            raise ModelLoadError(f"{model}: compiled for the Edge TPU; the CPU interpreter cannot run it")
        try:
            interpreter = interpreter_cls(model_path=str(model), num_threads=opts.threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{model}: not a loadable TFLite model: {reason}") from exc
        return LiteRtSession(interpreter, model)
