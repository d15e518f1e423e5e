"""An NPU reached through a LiteRT external delegate (NXP's VX delegate on the i.MX 8M Plus, ...).

Vendors ship their NPU support for TFLite as a shared library with the external-delegate entry
points; the interpreter hands the delegate every subgraph it can run and keeps the rest on the CPU.
``open_delegate`` is shared with the Edge TPU backend, which is the same mechanism with one library.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from accelerators import catalog
from accelerators.base import Backend, BackendConfig, BackendOptions, Capabilities, Probe
from accelerators.errors import BackendUnavailable, ModelLoadError
from accelerators.host import Host
from accelerators.litert import LiteRtSession, first_line, interpreter_api
from accelerators.modelfile import check_model_file
from accelerators.registry import register

_ENTRY_POINTS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


def open_delegate(load_delegate: Any, library: str | Path, options: dict[str, str], model: Path) -> Any:
    """``load_delegate(library, options)``, with every failure as one ModelLoadError line naming ``model``.

    The library is opened with ctypes first: LiteRT's Delegate half-builds itself before failing on
    a library that does not load or lacks the entry points, and its finalizer then raises again.
    """
    try:
        handle = ctypes.CDLL(str(library))
    except OSError as exc:
        raise ModelLoadError(f"{model}: cannot open delegate library {library}: {first_line(exc)}") from exc
    missing = [name for name in _ENTRY_POINTS if not hasattr(handle, name)]
    if missing:
        raise ModelLoadError(f"{model}: {library} is not a TFLite external delegate (no {', '.join(missing)})")
    try:
        return load_delegate(str(library), options)
    except (ValueError, RuntimeError, OSError) as exc:
        # LiteRT's message is "Failed to load delegate from <lib>\n<what the delegate said>"
        lines = [line for line in str(exc).splitlines() if line.strip()]
        said = lines[-1].strip() if len(lines) > 1 else "no reason given"
        raise ModelLoadError(f"{model}: the delegate in {library} refused to start: {said}") from exc


@dataclass(frozen=True)
class KnownDelegate:
    name: str  # accelerator name
    library: str
    device_node: str
    part: catalog.Part
    hint: str  # how to get the library


_KNOWN = (
    KnownDelegate(
        "npu-vx",
        "/usr/lib/libvx_delegate.so",
        "/dev/galcore",
        catalog.IMX8MP,
        "install NXP's tflite-vx-delegate (part of the i.MX BSP's machine-learning image)",
    ),
    KnownDelegate(
        "npu-ethosu",
        "/usr/lib/libethosu_delegate.so",
        "/dev/ethosu0",
        catalog.IMX93,
        "install NXP's ethos-u delegate (part of the i.MX BSP's machine-learning image)",
    ),
)


class NpuDelegateConfig(BackendConfig):
    type: Literal["npu-delegate"] = Field(
        "npu-delegate", description="An NPU reached through a LiteRT external delegate library."
    )
    library: str | None = Field(
        None, description="Path of the external delegate library; unset: the known NXP delegates are tried."
    )
    # A table in TOML; kept as sorted pairs because configs are hashed (the registry caches by them).
    options: tuple[tuple[str, str], ...] = Field((), description="Options handed to the delegate, e.g. {device = 'x'}.")
    device_node: str | None = Field(None, description="Device node the NPU needs (e.g. /dev/galcore); unset: none.")
    part: str = Field("", description="Catalog part for the estimates (e.g. 'NXP i.MX 8M Plus NPU'); '': from the SoC.")
    name: str = Field("npu-delegate", description="Accelerator name for a configured library.")

    @field_validator("options", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), str(v)) for k, v in value.items()))
        return value

    @field_validator("part")
    @classmethod
    def _known_part(cls, value: str) -> str:
        if value and catalog.by_name(value) is None:
            names = ", ".join(repr(p.name) for p in catalog.PARTS if p.kind == "npu")
            raise ValueError(f"unknown part {value!r}; known NPUs: {names}")
        return value


@register
class NpuDelegateType:
    type = "npu-delegate"
    formats = frozenset({".tflite"})  # files its accelerators load
    Config = NpuDelegateConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, NpuDelegateConfig)
        if config.library:
            known = KnownDelegate(config.name, config.library, config.device_node or "", _part(host, config), "")
            return [NpuDelegate(known, host, config)]
        # Offer the known delegates whose library or device node is here; else one entry that says where we looked.
        found = [k for k in _KNOWN if _library(host, k.library) or host.exists(k.device_node)]
        if found:
            return [NpuDelegate(k, host, config) for k in found]
        return [NpuDelegate(None, host, config)]


def _part(host: Host, config: NpuDelegateConfig) -> catalog.Part:
    part = catalog.by_name(config.part) if config.part else None  # the config validated the name
    if part is not None:
        return part
    found = catalog.match_compatible(host.compatible())
    if found is not None and found.kind == "npu":
        return found
    return catalog.Part(name="NPU (unknown part)", kind="npu", dtypes=frozenset({"int8", "uint8"}))


def _library(host: Host, library: str) -> Path | str | None:
    path = Path(library)
    return host.find_library(path.name, extra_dirs=(str(path.parent),))


class NpuDelegate:
    """LiteRT with one external delegate library."""

    def __init__(self, known: KnownDelegate | None, host: Host, config: NpuDelegateConfig) -> None:
        self.name = known.name if known else "npu-delegate"
        self._known = known
        self._host = host
        self._config = config

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        known = self._known
        if known is None:
            looked = "; ".join(f"{k.library} with {k.device_node}" for k in _KNOWN)
            return Probe(False, f"no NPU delegate found (looked for {looked}); set library in the npu-delegate config")
        if _library(self._host, known.library) is None:
            hint = f": {known.hint}" if known.hint else ""
            return Probe(False, f"delegate library {known.library} not found{hint}")
        node = known.device_node
        if node and not self._host.exists(node):
            return Probe(False, f"no {node}: the NPU's kernel driver is not loaded (or this SoC has no such NPU)")
        if node and not os.access(self._host.path(node), os.R_OK | os.W_OK):
            return Probe(False, f"no permission on {node}: give the agent's user read/write access (a udev rule)")
        try:
            _, _, package = interpreter_api()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        return Probe(True, device=f"{known.part.name} via {Path(known.library).name} ({package})")

    def capabilities(self) -> Capabilities:
        part = self._known.part if self._known else catalog.Part(name="", kind="npu", dtypes=frozenset({"int8"}))
        return part.capabilities(self.name, {".tflite"})

    def load(self, model: Path, options: BackendOptions | None = None) -> LiteRtSession:
        check_model_file(model)
        if model.name.endswith("_edgetpu.tflite"):
            raise ModelLoadError(f"{model}: compiled for the Edge TPU; {self.name} runs plain .tflite models")
        probe = self.probe()
        if not probe.available or self._known is None:
            raise BackendUnavailable(f"{self.name} is not available: {probe.reason}")
        interpreter_cls, load_delegate, _ = interpreter_api()
        library = _library(self._host, self._known.library) or self._known.library
        delegate = open_delegate(load_delegate, library, dict(self._config.options), model)
        opts = options or BackendOptions()
        try:
            # Ops the delegate does not take run on the CPU, with these threads.
            interpreter = interpreter_cls(
                model_path=str(model), experimental_delegates=[delegate], num_threads=opts.threads
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{model}: {self.name} cannot load it: {first_line(exc)}") from exc
        return LiteRtSession(interpreter, model, label=self.name, keep=(delegate,))
