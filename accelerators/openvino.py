"""OpenVINO: one accelerator per device it reports (Intel CPU, integrated/discrete GPU, NPU)."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Mapping
from functools import cached_property
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
from accelerators.layer_timing import WARMUP_RUNS, LayerTimes, median_per_node, timed_run
from accelerators.modelfile import check_model_file
from accelerators.registry import register

FORMATS = frozenset({".onnx", ".xml"})  # .xml: OpenVINO IR, with its .bin beside it
_ALWAYS = ("CPU", "GPU", "NPU")  # listed even when absent, so `doctor` says what is missing
_KINDS = {"CPU": "cpu", "GPU": "gpu", "NPU": "npu"}
# OPTIMIZATION_CAPABILITIES -> numpy dtype names (the others, e.g. BIN, EXPORT_IMPORT, are features)
_CAPABILITY_DTYPES = {"FP32": ("float32",), "FP16": ("float16",), "BF16": ("bfloat16",), "INT8": ("int8", "uint8")}

_shared: dict[str, Any] = {}  # "core": the one openvino.Core
_core_lock = threading.Lock()


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed ({exc}): pip install 'edge-agent[openvino]'") from exc
    return openvino


def core() -> Any:
    """The process's one ``openvino.Core``: creating one loads plugins (~0.3 s on a small device)."""
    with _core_lock:
        if "core" not in _shared:
            _shared["core"] = _openvino().Core()
        return _shared["core"]


def _last_line(exc: BaseException) -> str:
    """OpenVINO's messages start with "Exception from src/...cpp:84:" lines; the last line says what happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from ")]
    return (useful or lines or [type(exc).__name__])[-1]


class OpenVinoConfig(BackendConfig):
    type: Literal["openvino"] = Field("openvino", description="OpenVINO: Intel CPU, GPU and NPU devices.")
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        "LATENCY", description="LATENCY: one stream, fastest single inference; THROUGHPUT: parallel streams."
    )
    cache_dir: Path | None = Field(
        None, description="Folder for compiled-model blobs; GPU and NPU compile much faster on the second start."
    )


@register
class OpenVinoType:
    type = "openvino"
    formats = FORMATS
    Config = OpenVinoConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, OpenVinoConfig)
        try:
            reported = [str(d) for d in core().available_devices]
        except BackendUnavailable:
            reported = []
        except RuntimeError as exc:  # a broken installation: still list the devices, with the reason
            reason = f"OpenVINO cannot list its devices: {_last_line(exc)}"
            return [OpenVinoDevice(d, host, config, reported=False, reason=reason) for d in _ALWAYS]
        devices = list(_ALWAYS)
        for device in reported:
            # "GPU.0" is the device "GPU" already names; later indices are further cards.
            if device not in devices and device.partition(".")[2] != "0":
                devices.append(device)
        present = set(reported) | {d.partition(".")[0] for d in reported}
        return [OpenVinoDevice(d, host, config, reported=d in present) for d in devices]


class OpenVinoDevice:
    """One OpenVINO device ("CPU", "GPU", "GPU.1", "NPU")."""

    def __init__(self, device: str, host: Host, config: OpenVinoConfig, reported: bool, reason: str = "") -> None:
        self.device = device
        self.name = "openvino-" + device.lower().replace(".", "-")
        self._host = host
        self._config = config
        self._reported = reported
        self._reason = reason

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        try:
            ov = _openvino()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        if not self._reported:
            return Probe(False, self._reason or self._absent_reason())
        version = str(ov.__version__).split("-")[0]  # "2026.4.1-22982-e213a14..." -> "2026.4.1"
        return Probe(True, device=f"{self._property('FULL_DEVICE_NAME') or self.device} (OpenVINO {version})")

    def _absent_reason(self) -> str:
        family = self.device.partition(".")[0]
        if family == "GPU":
            nodes = self._host.glob("/dev/dri", "renderD*")
            hint = (
                "install the Intel compute runtime (intel-opencl-icd)"
                if nodes
                else "no /dev/dri/renderD* node: no Intel GPU, or its i915/xe driver is not loaded"
            )
            return f"OpenVINO reports no {self.device} device ({hint})"
        if family == "NPU":
            hint = (
                "install the Intel NPU driver (intel-level-zero-npu)"
                if self._host.exists("/dev/accel/accel0")
                else "no /dev/accel/accel0: no Intel NPU, or its intel_vpu driver is not loaded"
            )
            return f"OpenVINO reports no {self.device} device ({hint})"
        return f"OpenVINO reports no {self.device} device"

    def _property(self, name: str) -> Any:
        try:
            return core().get_property(self.device, name)
        except (BackendUnavailable, RuntimeError, TypeError):
            return None

    @cached_property
    def _capabilities(self) -> Capabilities:
        family = self.device.partition(".")[0]
        kind = _KINDS.get(family, "npu")
        dtypes: set[str] = set()
        if self._reported:
            for capability in self._property("OPTIMIZATION_CAPABILITIES") or ():
                dtypes.update(_CAPABILITY_DTYPES.get(str(capability), ()))
        dtypes = dtypes or {"float32"}
        if family == "CPU":
            cpu = catalog.cpu_part(self._host, str(self._property("FULL_DEVICE_NAME") or self._host.cpu_model()))
            peak = {d: rate for d, rate in cpu.peak_macs_per_s.items() if d in dtypes}
            return cpu.capabilities(self.name, FORMATS, dtypes=frozenset(dtypes), peak_ops_per_s=peak)
        # No catalog figure for Intel GPUs and NPUs yet: calibration measures them.
        return Capabilities(
            name=self.name,
            kind=kind,
            formats=FORMATS,
            dtypes=frozenset(dtypes),
            part=str(self._property("FULL_DEVICE_NAME") or "") if self._reported else "",
        )

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def load(self, model: Path, options: BackendOptions | None = None) -> OpenVinoSession:
        compiled, declared = self._compile(model, options)
        return OpenVinoSession(compiled, model, self.device, declared)

    def profile_layers(
        self, model: Path, inputs: Mapping[str, np.ndarray], runs: int = 15, options: BackendOptions | None = None
    ) -> LayerTimes:
        """Per-node times from OpenVINO's performance counters, on a model compiled like ``load``'s.

        The counters describe the last inference, so they are read after every run. Nodes the plugin
        fused into another report NOT_RUN and 0; the runtime model's ``originalLayersNames`` says which
        model nodes each executed node ran.
        """
        compiled, declared = self._compile(model, options, {_openvino().properties.enable_profiling(): True})
        session = OpenVinoSession(compiled, model, self.device, declared)
        try:
            for _ in range(WARMUP_RUNS):
                session.run(inputs)
            walls: list[float] = []
            per_run: list[dict[str, float]] = []
            ops: dict[str, str] = {}
            for _ in range(max(runs, 1)):
                walls.append(timed_run(session, inputs))
                per_run.append(session.node_times(ops))
            fused = _fused_groups(compiled)
        finally:
            session.close()
        return LayerTimes(
            node_ms=median_per_node(per_run),
            wall_ms=statistics.median(walls),
            runs=len(walls),
            node_ops=ops,
            fused=fused,
        )

    def _compile(
        self, model: Path, options: BackendOptions | None, extra: Mapping[str, Any] | None = None
    ) -> tuple[Any, frozenset[str]]:
        """The compiled model, and the tensor names the file itself gives its inputs and outputs (compiling
        may merge names onto one port: {'output', 'F0::If_0_then_branch…'}; the file's name must win)."""
        check_model_file(model)
        if model.suffix.lower() not in FORMATS:
            raise ModelLoadError(f"{model}: OpenVINO loads .onnx and .xml (IR) files here")
        probe = self.probe()
        if not probe.available:
            raise BackendUnavailable(f"{self.name} is not available: {probe.reason}")
        opts = options or BackendOptions()
        settings: dict[str, Any] = {"PERFORMANCE_HINT": self._config.performance_hint, **(extra or {})}
        if self.device == "CPU":
            settings["INFERENCE_NUM_THREADS"] = opts.threads
        if self._config.cache_dir is not None:
            settings["CACHE_DIR"] = str(self._config.cache_dir)
        try:
            graph = core().read_model(str(model))
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{model}: OpenVINO cannot read it: {_last_line(exc)}") from exc
        declared = frozenset(str(n) for port in (*graph.inputs, *graph.outputs) for n in port.get_names())
        try:
            return core().compile_model(graph, self.device, settings), declared
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{model}: OpenVINO cannot compile it for {self.device}: {_last_line(exc)}") from exc


def _fused_groups(compiled: Any) -> dict[str, tuple[str, ...]]:
    """Executed node -> the model's nodes it ran (several where the plugin fused them), where reported."""
    groups: dict[str, tuple[str, ...]] = {}
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except (RuntimeError, AttributeError):  # a plugin without an execution graph: names alone then
        return groups
    for op in ops:
        info = op.get_rt_info()
        if "originalLayersNames" not in info:
            continue
        names = tuple(n for n in str(info["originalLayersNames"].astype(str)).split(",") if n)
        if names:
            groups[str(op.get_friendly_name())] = names
    return groups


def _spec(port: Any, index: int, prefix: str, declared: frozenset[str] = frozenset()) -> TensorSpec:
    names = sorted(str(n) for n in port.get_names())
    preferred = [n for n in names if n in declared]
    name = (preferred or names)[0] if names else f"{prefix}{index}"  # a port may have no tensor name
    shape = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name=name, shape=shape, dtype=np.dtype(port.get_element_type().to_dtype()).name)


class OpenVinoSession(FixedSpecs):
    def __init__(self, compiled: Any, model: Path, device: str, declared: frozenset[str] = frozenset()) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._model = model
        self._device = device
        self._inputs = tuple(_spec(p, i, "input", declared) for i, p in enumerate(compiled.inputs))
        self._outputs = tuple(_spec(p, i, "output", declared) for i, p in enumerate(compiled.outputs))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            # Keyed by port index: a port need not have a name. infer() copies the outputs out of the
            # request's buffers (share_outputs=False), so they survive the next run.
            result = self._request.infer({i: inputs[spec.name] for i, spec in enumerate(self._inputs)})
            values = result.to_tuple()
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InferenceError(f"{self._model.name}: OpenVINO ({self._device}) failed: {_last_line(exc)}") from exc
        return {spec.name: np.asarray(value) for spec, value in zip(self._outputs, values, strict=True)}

    def node_times(self, ops: dict[str, str]) -> dict[str, float]:
        """The last run's ms per executed node (compiled with profiling on); records each node's op in ``ops``."""
        times: dict[str, float] = {}
        try:
            counters = self._request.profiling_info
        except RuntimeError as exc:
            raise InferenceError(f"{self._model.name}: OpenVINO ({self._device}) has no performance counters: "
                                 f"{_last_line(exc)}") from exc  # fmt: skip
        for info in counters:
            name = str(info.node_name)
            # A node appears once per port or stage on some plugins: its entries add up.
            times[name] = times.get(name, 0.0) + info.real_time.total_seconds() * 1e3
            ops.setdefault(name, str(info.node_type))
        return times

    def close(self) -> None:
        self._request = None
        self._compiled = None
