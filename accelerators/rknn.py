"""Rockchip NPU (RK3588, RK3576, RK3566/8, RK3562) through rknn-toolkit-lite2's RKNNLite.

The SDK is Rockchip's own Python wheel for aarch64 boards; it answers with integer return codes
and ``None`` results rather than exceptions, so this module turns those into our error types.
"""

from __future__ import annotations

import importlib
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

_INSTALL = "pip install rknn-toolkit-lite2 (wheels exist only for aarch64 Rockchip boards)"
_RUNTIME = "librknnrt.so"
_ROCKCHIP_NPUS = "RK3562, RK3566/RK3568, RK3576, RK3588"

# rknn_api.h error codes; RKNNLite passes them through from the C runtime.
_ERRORS = {
    -1: "failed",
    -2: "timed out",
    -3: "NPU device unavailable (is /dev/rknpu or the rknpu DRM node accessible?)",
    -4: "out of memory",
    -5: "invalid parameter",
    -6: "invalid model",
    -7: "invalid context",
    -8: "invalid input",
    -9: "invalid output",
    -10: "model built for another device (rebuild it with rknn-toolkit2 for this SoC)",
    -11: "model precompiled for another runtime version",
    -12: "model optimization level needs another runtime version",
    -13: "model converted for another target platform (rebuild with rknn-toolkit2 target_platform set to this SoC)",
}
# rknn_tensor_type -> numpy dtype names
_TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 8: "int64"}
_NCHW = 0  # rknn_tensor_format
_CORE_MASKS = {  # config value -> (RKNNLite attribute, cores it uses)
    "auto": ("NPU_CORE_AUTO", 1),  # the runtime picks one idle core per model
    "0": ("NPU_CORE_0", 1),
    "1": ("NPU_CORE_1", 1),
    "2": ("NPU_CORE_2", 1),
    "0_1": ("NPU_CORE_0_1", 2),
    "0_1_2": ("NPU_CORE_0_1_2", 3),
}


def _import_rknnlite() -> Any:
    try:
        # importlib keeps mypy from needing the SDK's (absent) type information.
        return importlib.import_module("rknnlite.api").RKNNLite
    except (ImportError, OSError) as exc:  # OSError: its C extension cannot find its shared libraries
        raise BackendUnavailable(f"rknn-toolkit-lite2 is not installed ({exc}); {_INSTALL}") from exc


def _explain(code: object) -> str:
    return f"returned {code}: {_ERRORS.get(code, 'unknown error') if isinstance(code, int) else 'unexpected result'}"


class RknnConfig(BackendConfig):
    type: Literal["rknn"] = Field("rknn", description="The Rockchip NPU through rknn-toolkit-lite2.")
    core_mask: Literal["auto", "0", "1", "2", "0_1", "0_1_2"] = Field(
        "auto", description="NPU cores one model uses (RK3588: 3 cores, RK3576: 2); 'auto': one idle core."
    )


@register
class RknnType:
    type = "rknn"
    formats = frozenset({".rknn"})  # files its accelerators load
    Config = RknnConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, RknnConfig)
        return [RknnNpu(host, config)]


def npu_driver(host: Host) -> str:
    """Where the rknpu driver shows itself ("" when it does not): a misc node, debugfs, the module, or DRM."""
    for path in ("/dev/rknpu", "/sys/kernel/debug/rknpu/version", "/sys/module/rknpu"):
        if host.exists(path):
            return path
    # Rockchip's 5.10+ kernels register the NPU as a DRM device: /sys/class/drm/cardN/device/driver -> .../RKNPU
    for card in host.glob("/sys/class/drm", "*"):
        driver = card / "device" / "driver"
        try:
            if driver.is_symlink() and driver.readlink().name.lower() == "rknpu":
                return f"/dev/dri/{card.name}"
        except OSError:
            continue
    return ""


class RknnNpu:
    name = "rknn-npu"

    def __init__(self, host: Host, config: RknnConfig) -> None:
        self._host = host
        self._config = config
        self._compatible = host.compatible()
        self._part = catalog.match_compatible(self._compatible)
        if self._part is not None and not self._part.name.startswith("Rockchip"):
            self._part = None

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        soc = next((c for c in self._compatible if c.startswith("rockchip,rk")), "")
        if self._part is None:
            if soc:
                return Probe(
                    False, f"{soc.partition(',')[2]} has no NPU that rknn-toolkit-lite2 runs ({_ROCKCHIP_NPUS})"
                )
            seen = ", ".join(self._compatible[-2:]) or "no device tree"
            return Probe(False, f"not a Rockchip SoC ({seen}); the rknn backend needs one of {_ROCKCHIP_NPUS}")
        driver = npu_driver(self._host)
        if not driver:
            return Probe(
                False,
                f"no NPU device node (/dev/rknpu, or a DRM card driven by rknpu) on this {self._part.name}: "
                "boot a Rockchip vendor kernel with the rknpu driver enabled",
            )
        if self._config.core_mask != "auto" and _CORE_MASKS[self._config.core_mask][1] > self._part.cores:
            return Probe(False, f"core_mask {self._config.core_mask} needs more cores than {self._part.name} has")
        try:
            _import_rknnlite()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        if self._host.find_library(_RUNTIME) is None:
            return Probe(False, f"{_RUNTIME} not found: copy it from Rockchip's rknn-toolkit2 runtime into /usr/lib")
        return Probe(True, device=f"{self._part.name} ({driver}, cores {self._config.core_mask})")

    def capabilities(self) -> Capabilities:
        part = self._part or catalog.RK3588
        # The planner sees the share of the NPU one model may use.
        share = min(_CORE_MASKS[self._config.core_mask][1], part.cores) / part.cores
        peak = {dtype: rate * share for dtype, rate in part.peak_macs_per_s.items()}
        return part.capabilities(self.name, {".rknn"}, peak_ops_per_s=peak)

    def load(self, model: Path, options: BackendOptions | None = None) -> RknnSession:
        check_model_file(model)
        if model.suffix.lower() != ".rknn":
            raise ModelLoadError(f"{model}: the Rockchip NPU runs .rknn files; convert it with rknn-toolkit2")
        probe = self.probe()
        if not probe.available or self._part is None:
            raise BackendUnavailable(f"{self.name} is not available: {probe.reason}")
        rknnlite_cls = _import_rknnlite()
        runtime = rknnlite_cls(verbose=False)
        try:
            code = runtime.load_rknn(str(model))
            if code != 0:
                raise ModelLoadError(f"{model}: rknn-toolkit-lite2 cannot load it (load_rknn {_explain(code)})")
            kwargs = {}
            if self._part.cores > 1:  # core_mask means something only on multi-core NPUs (RK3588, RK3576)
                kwargs["core_mask"] = getattr(rknnlite_cls, _CORE_MASKS[self._config.core_mask][0])
            code = runtime.init_runtime(**kwargs)
            if code != 0:
                raise ModelLoadError(f"{model}: the NPU runtime refused it (init_runtime {_explain(code)})")
            return RknnSession(runtime, model)
        except ModelLoadError:
            runtime.release()
            raise
        except Exception as exc:  # the SDK raises plain Exceptions from its C extension
            runtime.release()
            raise ModelLoadError(f"{model}: rknn-toolkit-lite2 failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _specs(runtime: Any, outputs: bool) -> tuple[TensorSpec, ...]:
    """Tensor specs from the runtime's attributes (RKNNLite exposes them only on its rknn_runtime)."""
    count = runtime.rknn_runtime.get_in_out_num()[1 if outputs else 0]
    specs = []
    for index in range(count):
        attr = runtime.rknn_runtime.get_tensor_attr(index, is_output=outputs)
        name = attr.name.decode() if isinstance(attr.name, bytes) else str(attr.name)
        shape = tuple(int(attr.dims[i]) for i in range(attr.n_dims))
        if outputs:
            dtype = "float32"  # RKNNLite dequantizes outputs to float32 unless told otherwise
        else:
            # Quantized models take uint8 images and quantize them on the NPU; float models take float32.
            dtype = "uint8" if _TENSOR_TYPES.get(int(attr.type)) in {"int8", "uint8"} else "float32"
        specs.append(TensorSpec(name or f"{'output' if outputs else 'input'}{index}", shape, dtype))
    return tuple(specs)


class RknnSession(FixedSpecs):
    def __init__(self, runtime: Any, model: Path) -> None:
        self._runtime = runtime
        self._model = model
        try:
            self._inputs = _specs(runtime, outputs=False)
            self._outputs = _specs(runtime, outputs=True)
            formats = [runtime.rknn_runtime.get_tensor_attr(i).fmt for i in range(len(self._inputs))]
        except (AttributeError, TypeError, IndexError) as exc:
            raise ModelLoadError(
                f"{model}: this rknn-toolkit-lite2 does not expose tensor attributes; upgrade it ({_INSTALL})"
            ) from exc
        self._formats = ["nchw" if f == _NCHW else "nhwc" for f in formats]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._inputs, inputs)
        try:
            values = self._runtime.inference(inputs=[inputs[s.name] for s in self._inputs], data_format=self._formats)
        except Exception as exc:  # the SDK raises plain Exceptions from its C extension
            raise InferenceError(f"{self._model.name}: the Rockchip NPU failed: {_first_line(exc)}") from exc
        if values is None or len(values) != len(self._outputs):
            raise InferenceError(
                f"{self._model.name}: the Rockchip NPU returned no result (see the rknn log; a driver and "
                "librknnrt version mismatch is the usual cause)"
            )
        return {spec.name: np.asarray(value) for spec, value in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.release()
        self._runtime = None
