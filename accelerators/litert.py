"""LiteRT (ai-edge-litert) on the CPU with XNNPACK; tflite_runtime where a device ships that instead."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from accelerators import catalog
from accelerators.base import (
    Backend,
    BackendConfig,
    BackendOptions,
    Capabilities,
    FixedSpecs,
    Probe,
    TensorSpec,
    check_inputs,
)
from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.host import Host
from accelerators.modelfile import check_model_file
from accelerators.registry import register


def interpreter_api() -> tuple[Any, Any, str]:
    """LiteRT's (Interpreter, load_delegate), else tflite_runtime's; the third item names the package."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai-edge-litert"
    except ImportError as litert_exc:
        try:
            from tflite_runtime.interpreter import Interpreter as TfliteInterpreter
            from tflite_runtime.interpreter import load_delegate as tflite_load_delegate
        except ImportError:
            raise BackendUnavailable(
                f"neither ai-edge-litert nor tflite_runtime is installed ({litert_exc}); pip install ai-edge-litert"
            ) from litert_exc
        return TfliteInterpreter, tflite_load_delegate, "tflite_runtime"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(int(d) if d >= 0 else None for d in signature)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quant = (float(scale), int(zero_point)) if scale else None
    return TensorSpec(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name, quantization=quant)


class LiteRtSession(FixedSpecs):
    def __init__(self, interpreter: Any, model: Path, label: str = "LiteRT", keep: tuple[Any, ...] = ()) -> None:
        self._interp = interpreter
        self._model = model
        self._label = label
        self._keep = keep  # delegates must outlive the interpreter that uses them
        in_details = interpreter.get_input_details()
        out_details = interpreter.get_output_details()
        self._inputs = tuple(_spec(d) for d in in_details)
        self._outputs = tuple(_spec(d) for d in out_details)
        self._in_index = {d["name"]: d["index"] for d in in_details}
        self._out_index = [(d["name"], d["index"]) for d in out_details]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            for name, index in self._in_index.items():
                self._interp.set_tensor(index, inputs[name])
            self._interp.invoke()
            return {name: self._interp.get_tensor(index) for name, index in self._out_index}
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"{self._model.name}: {self._label} failed: {first_line(exc)}") from exc

    def close(self) -> None:
        self._interp = None
        self._keep = ()


class LiteRtConfig(BackendConfig):
    type: Literal["litert"] = Field("litert", description="The LiteRT (or tflite_runtime) interpreter on the CPU.")
    xnnpack: bool = Field(True, description="Use the XNNPACK CPU delegate (about 2x faster; costs ~2.5 MB).")


@register
class LiteRtType:
    type = "litert"
    formats = frozenset({".tflite"})  # files its accelerators load
    Config = LiteRtConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, LiteRtConfig)
        return [LiteRtCpu(config, host)]


class LiteRtCpu:
    """The LiteRT interpreter on the CPU; XNNPACK is its default CPU delegate."""

    name = "litert-cpu"

    def __init__(self, config: LiteRtConfig, host: Host | None = None) -> None:
        self._config = config
        self._host = host or Host()

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        try:
            _, _, package = interpreter_api()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        return Probe(True, device=f"{package} CPU" + (" (XNNPACK)" if self._config.xnnpack else ""))

    def capabilities(self) -> Capabilities:
        part = catalog.cpu_part(self._host, self._host.cpu_model())
        return part.capabilities(
            self.name, frozenset({".tflite"}), dtypes=frozenset({"float32", "float16", "int8", "uint8"})
        )

    def load(self, model: Path, options: BackendOptions | None = None) -> LiteRtSession:
        interpreter_cls, _, _ = interpreter_api()
        opts = options or BackendOptions()
        if model.name.endswith("_edgetpu.tflite"):
            raise ModelLoadError(f"{model}: compiled for the Edge TPU; the CPU interpreter cannot run it")
        check_model_file(model)
        kwargs: dict[str, Any] = {"model_path": str(model), "num_threads": opts.threads}
        if not self._config.xnnpack:
            kwargs["experimental_op_resolver_type"] = _builtin_without_delegates(interpreter_cls)
        try:
            interpreter = interpreter_cls(**kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{model}: not a loadable TFLite model: {first_line(exc)}") from exc
        return LiteRtSession(interpreter, model)


def _builtin_without_delegates(interpreter_cls: Any) -> Any:
    module = __import__(interpreter_cls.__module__, fromlist=["OpResolverType"])
    return module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
