"""onnxruntime: the CPU execution provider and every other provider the installed build offers."""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
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


class OnnxRuntimeSession(FixedSpecs):
    def __init__(self, session: Any, model: Path) -> None:
        self._session = session
        self._model = model
        self._inputs = tuple(_spec(a) for a in session.get_inputs())
        self._outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            values = self._session.run(self._output_names, {s.name: inputs[s.name] for s in self._inputs})
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
            raise InferenceError(f"{self._model.name}: onnxruntime failed: {_first_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._session = None


# Execution providers worth offering as accelerators: provider -> (suffix, kind, device nodes one
# of which must exist, install hint). Providers a build offers that are not listed here still appear.
_PROVIDERS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "CPUExecutionProvider": ("cpu", "cpu", (), "pip install onnxruntime"),
    "CUDAExecutionProvider": ("cuda", "gpu", ("/dev/nvidiactl", "/dev/nvidia0"), "pip install onnxruntime-gpu"),
    "TensorrtExecutionProvider": ("tensorrt", "gpu", ("/dev/nvidiactl", "/dev/nvidia0"), "pip install onnxruntime-gpu"),
    "OpenVINOExecutionProvider": ("openvino", "cpu", (), "pip install onnxruntime-openvino"),
    "QNNExecutionProvider": ("qnn", "npu", ("/dev/fastrpc-cdsp", "/dev/adsprpc-smd"), "pip install onnxruntime-qnn"),
    "ROCMExecutionProvider": ("rocm", "gpu", ("/dev/kfd",), "an onnxruntime build with ROCm"),
    "MIGraphXExecutionProvider": ("migraphx", "gpu", ("/dev/kfd",), "an onnxruntime build with MIGraphX"),
    "ACLExecutionProvider": ("acl", "cpu", (), "an onnxruntime build with the Arm Compute Library"),
}
_IGNORED = {"AzureExecutionProvider"}  # remote inference, not a local accelerator


class OnnxRuntimeConfig(BackendConfig):
    type: Literal["onnxruntime"] = Field("onnxruntime", description="onnxruntime and its execution providers.")
    providers: tuple[str, ...] = Field(
        (),
        description="Execution providers to offer besides the CPU (e.g. ['CUDAExecutionProvider']); "
        "empty: every provider this onnxruntime build has.",
    )


@register
class OnnxRuntimeType:
    """onnxruntime: one accelerator per execution provider the installed build offers."""

    type = "onnxruntime"
    formats = frozenset({".onnx"})  # files its accelerators load
    Config = OnnxRuntimeConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, OnnxRuntimeConfig)
        try:
            built = [p for p in _import_ort().get_available_providers() if p not in _IGNORED]
        except BackendUnavailable:
            built = []
        names = ["CPUExecutionProvider", *(p for p in _PROVIDERS if p != "CPUExecutionProvider")]
        names += [p for p in built if p not in _PROVIDERS]
        if config.providers:
            names = ["CPUExecutionProvider", *(p for p in names if p in config.providers)]
        return [OnnxRuntimeBackend(p, host, config, p in built) for p in names]


class OnnxRuntimeBackend:
    """onnxruntime with one execution provider, configured for a small shared-core device."""

    def __init__(self, provider: str, host: Host, config: OnnxRuntimeConfig, built: bool) -> None:
        suffix, self._kind, self._nodes, self._hint = _PROVIDERS.get(
            provider, (provider.removesuffix("ExecutionProvider").lower(), "cpu", (), "")
        )
        self.name = f"onnxruntime-{suffix}"
        self.provider = provider
        self._host = host
        self._config = config
        self._built = built

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        try:
            ort = _import_ort()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        if not self._built:
            hint = f" ({self._hint})" if self._hint else ""
            return Probe(False, f"this onnxruntime build has no {self.provider}{hint}")
        if self._nodes and not any(self._host.exists(node) for node in self._nodes):
            return Probe(False, f"{self.provider} is built in but no device node found ({', '.join(self._nodes)})")
        return Probe(True, device=f"onnxruntime {ort.__version__} {self.provider.removesuffix('ExecutionProvider')}")

    def capabilities(self) -> Capabilities:
        formats, dtypes = frozenset({".onnx"}), frozenset({"float32", "float16", "int8", "uint8"})
        if self._kind == "cpu":  # runs on the host CPU: the catalog's estimate for it
            part = catalog.cpu_part(self._host, self._host.cpu_model())
            return part.capabilities(self.name, formats, dtypes=dtypes)
        return Capabilities(name=self.name, kind=self._kind, formats=formats, dtypes=dtypes)

    def load(self, model: Path, options: BackendOptions | None = None) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(self._session(model, options), model)

    def profile_layers(
        self, model: Path, inputs: Mapping[str, np.ndarray], runs: int = 15, options: BackendOptions | None = None
    ) -> LayerTimes:
        """Per-node times from onnxruntime's profiler, on a session set up like ``load``'s."""
        with tempfile.TemporaryDirectory(prefix="edge-agent-ort-profile-") as tmp:
            session = self._session(model, options, profile_prefix=str(Path(tmp) / "ort"))
            wrapped = OnnxRuntimeSession(session, model)
            try:
                for _ in range(WARMUP_RUNS):
                    wrapped.run(inputs)
                walls = [timed_run(wrapped, inputs) for _ in range(max(runs, 1))]
            finally:  # the trace is written here, inside the temporary folder, failure or not
                trace_file = Path(session.end_profiling())
            try:
                trace = json.loads(trace_file.read_text())
            except (OSError, ValueError) as exc:
                raise InferenceError(f"{model.name}: onnxruntime wrote no readable profile: {exc}") from exc
        node_ms, node_ops = _node_times(trace, skip=WARMUP_RUNS)
        return LayerTimes(node_ms=node_ms, wall_ms=statistics.median(walls), runs=len(walls), node_ops=node_ops)

    def _session(self, model: Path, options: BackendOptions | None, profile_prefix: str = "") -> Any:
        ort = _import_ort()
        check_model_file(model)
        opts = options or BackendOptions()
        so = ort.SessionOptions()
        # A session alone on the device asking for every core gets onnxruntime's own pool (0): one thread per
        # physical core, each pinned to its core. Pinning keeps the tail short (measured on 2 cores, median
        # and p90: face detector 1.76/2.13 ms pinned vs 1.88/5.99 ms with the same two threads unpinned).
        all_cores = opts.exclusive and opts.threads >= (psutil.cpu_count(logical=False) or 1)
        so.intra_op_num_threads = 0 if all_cores else opts.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads burn the cores other sessions and the agent itself need (measured: up to
        # +190% latency for chained sessions on a 2-core device), so they sleep instead -- unless this
        # session has the cores to itself, where spinning is what makes it fast (measured: 5.1 -> 2.8 ms
        # for a face detector on 2 cores).
        spin = "1" if opts.exclusive else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        providers = (
            [self.provider] if self.provider == "CPUExecutionProvider" else [self.provider, "CPUExecutionProvider"]
        )
        try:
            return ort.InferenceSession(str(model), sess_options=so, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{model}: onnxruntime cannot load it: {_first_line(exc)}") from exc


# The NCHWc layout transformer renames the nodes it rewrites "<name>_nchwc"; the model's name is the rest.
_RENAMES = ("_nchwc",)
_KERNEL = "_kernel_time"


def _node_times(trace: list[dict[str, Any]], skip: int) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms per node over the runs after the first ``skip``, from a Chrome-trace profile.

    Node events carry no run number, so each is placed in the ``model_run`` window containing it.
    """
    windows = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [start for start, _ in windows]
    per_run: list[dict[str, float]] = [{} for _ in windows]
    ops: dict[str, str] = {}
    for event in trace:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(_KERNEL):
            continue
        args = event.get("args") or {}
        node = str(args.get("node_name") or name.removesuffix(_KERNEL))
        for suffix in _RENAMES:
            node = node.removesuffix(suffix)
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if run < 0 or event["ts"] > windows[run][1]:
            continue  # outside every run (cannot happen in a well-formed trace)
        per_run[run][node] = per_run[run].get(node, 0.0) + float(event["dur"]) / 1e3  # µs -> ms
        if "op_name" in args:
            ops[node] = str(args["op_name"])
    return median_per_node(per_run[skip:]), ops
