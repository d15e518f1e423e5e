"""Backend registry: modules register their backend class with ``@register``; ``discover`` imports them.

Backend modules import their vendor SDK lazily (inside probe/load), so importing a module never
fails because an SDK is missing: the backend is listed, and ``probe()`` says why it is unavailable.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from accelerators.base import Backend, Probe
from accelerators.errors import BackendUnavailable

log = logging.getLogger(__name__)

_MODULES = ("accelerators.onnxruntime", "accelerators.litert")
_REGISTRY: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}

B = TypeVar("B", bound=type)


def register(cls: B) -> B:
    """Class decorator: make a backend known under its ``name`` attribute."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"backend name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def discover() -> dict[str, Backend]:
    """Import every backend module and return one instance per registered backend, by name."""
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a backend module itself is broken: say so, keep the rest
            log.warning("backend module %s could not be imported: %s", module, exc)
    for name, factory in _REGISTRY.items():
        if name not in _INSTANCES:
            _INSTANCES[name] = factory()
    return dict(_INSTANCES)


def probe_all() -> dict[str, Probe]:
    return {name: backend.probe() for name, backend in discover().items()}


def select(model: Path, preferred: str = "auto") -> Backend:
    """The backend to run ``model`` on: the one named, or the first available that loads its format."""
    backends = discover()
    suffix = model.suffix.lower()
    if preferred != "auto":
        backend = backends.get(preferred)
        if backend is None:
            known = ", ".join(sorted(backends))
            raise BackendUnavailable(f"unknown backend {preferred!r}; known backends: {known}")
        probe = backend.probe()
        if not probe.available:
            raise BackendUnavailable(f"backend {preferred!r} is not available: {probe.reason}")
        if suffix not in backend.capabilities().formats:
            raise BackendUnavailable(f"backend {preferred!r} cannot load {suffix or 'extension-less'} files")
        return backend
    reasons = []
    for name, backend in backends.items():
        if suffix not in backend.capabilities().formats:
            continue
        probe = backend.probe()
        if probe.available:
            return backend
        reasons.append(f"{name}: {probe.reason}")
    if reasons:
        raise BackendUnavailable(f"no available backend runs {suffix} models ({'; '.join(reasons)})")
    formats = sorted({f for b in backends.values() for f in b.capabilities().formats})
    raise BackendUnavailable(f"no backend loads {suffix or 'extension-less'} files; supported: {', '.join(formats)}")
