"""Backend registry: each backend module registers its type with ``@register``; ``discover`` imports them.

A backend type lists its accelerators on a host (onnxruntime: one per execution provider; OpenVINO:
one per device; Edge TPU: one per stick or card). Backend modules import their vendor SDK lazily,
inside probe/load, so importing a module never fails because an SDK is missing: the accelerator is
listed, and ``probe()`` says why it is unavailable.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar, cast

from accelerators.base import Backend, BackendConfig, BackendType, Probe
from accelerators.errors import BackendUnavailable
from accelerators.host import Host

log = logging.getLogger(__name__)

_MODULES = (
    "accelerators.onnxruntime",
    "accelerators.litert",
    "accelerators.openvino",
    "accelerators.edgetpu",
    "accelerators.rknn",
    "accelerators.npu_delegate",
    "accelerators.null",
)
_TYPES: dict[str, BackendType] = {}
_CACHE: dict[tuple[Host, tuple[BackendConfig, ...]], dict[str, list[Backend]]] = {}  # type -> accelerators

T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    """Class decorator: make a backend type known under its ``type`` attribute."""
    kind = getattr(cls, "type", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'type'")
    if not all(hasattr(cls, attr) for attr in ("Config", "formats", "accelerators")):
        raise TypeError(f"{cls.__qualname__} needs 'Config', 'formats' and an 'accelerators' classmethod")
    backend_type = cast(BackendType, cls)  # checked above: a class with type, Config and accelerators
    if _TYPES.get(kind, backend_type) is not backend_type:
        raise ValueError(f"backend type {kind!r} registered twice")
    _TYPES[kind] = backend_type
    return cls


def backend_types() -> dict[str, BackendType]:
    """Every registered backend type, by ``type``; imports the backend modules on first use."""
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a backend module itself is broken: say so, keep the rest
            log.warning("backend module %s could not be imported: %s", module, exc)
    return dict(_TYPES)


def config_models() -> list[type[BackendConfig]]:
    return [t.Config for t in backend_types().values()]


def discover(
    host: Host | None = None, configs: Iterable[BackendConfig] = (), suffix: str | None = None
) -> dict[str, Backend]:
    """One instance per accelerator, by name; ``configs`` set up backend types (defaults otherwise).

    With ``suffix`` (e.g. ".tflite") only backend types that load such files are asked: listing
    accelerators can mean loading an SDK (onnxruntime, OpenVINO's Core: tens of MB resident), which a
    daemon running one .tflite model should not pay for. Each type is asked once per host and configs.
    """
    host = host or Host()
    configs = tuple(configs)
    listed = _CACHE.setdefault((host, configs), {})
    by_type: Mapping[str, BackendConfig] = {c.type: c for c in configs}
    found: dict[str, Backend] = {}
    for kind, backend_type in backend_types().items():
        if suffix is not None and suffix not in backend_type.formats:
            continue
        if kind not in listed:
            config = by_type.get(kind) or backend_type.Config(type=kind)
            try:
                listed[kind] = list(backend_type.accelerators(host, config))
            except Exception as exc:  # one broken backend type must not hide the others
                log.warning("backend type %s failed to list its accelerators: %s", kind, exc)
                listed[kind] = []
        found.update((backend.name, backend) for backend in listed[kind])
    return found


def probe_all(host: Host | None = None, configs: Iterable[BackendConfig] = ()) -> dict[str, Probe]:
    return {name: backend.probe() for name, backend in discover(host, configs).items()}


def select(
    model: Path, preferred: str = "auto", host: Host | None = None, configs: Iterable[BackendConfig] = ()
) -> Backend:
    """The backend to run ``model`` on: the one named, or the first available that loads its format."""
    suffix = model.suffix.lower()
    backends = discover(host, configs, suffix)
    if preferred != "auto":
        backend = backends.get(preferred)
        if backend is None and preferred in (everything := discover(host, configs)):
            raise BackendUnavailable(f"backend {preferred!r} cannot load {suffix or 'extension-less'} files")
        if backend is None:
            known = ", ".join(sorted(everything))
            raise BackendUnavailable(f"unknown backend {preferred!r}; known backends: {known}")
        probe = backend.probe()
        if not probe.available:
            raise BackendUnavailable(f"backend {preferred!r} is not available: {probe.reason}")
        if suffix not in backend.capabilities().formats:
            raise BackendUnavailable(f"backend {preferred!r} cannot load {suffix or 'extension-less'} files")
        return backend
    reasons = []
    for name, backend in backends.items():
        caps = backend.capabilities()
        if suffix not in caps.formats or caps.kind == "none":
            continue
        if not _accepts(name, model):
            continue
        probe = backend.probe()
        if probe.available:
            return backend
        reasons.append(f"{name}: {probe.reason}")
    if reasons:
        raise BackendUnavailable(f"no available backend runs {suffix} models ({'; '.join(reasons)})")
    formats = sorted({f for t in backend_types().values() for f in t.formats})
    raise BackendUnavailable(f"no backend loads {suffix or 'extension-less'} files; supported: {', '.join(formats)}")


def _accepts(name: str, model: Path) -> bool:
    """Edge TPU-compiled models run only on an Edge TPU; plain models never on one."""
    compiled = model.name.endswith("_edgetpu.tflite")
    return compiled == name.startswith("edgetpu")
