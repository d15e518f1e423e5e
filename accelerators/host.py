"""The machine as probes see it: sysfs, /dev and /proc under a root that tests can fabricate."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_MAX_READ = 64 * 1024  # sysfs and procfs files are small; never read more than this


@dataclass(frozen=True)
class Host:
    """Where probes look. ``root`` is ``/`` on a device and a fabricated tree in tests.

    ``libraries`` maps a shared-library name to a path that stands in for it (tests); otherwise
    libraries are found by the dynamic loader.
    """

    root: Path = Path("/")
    libraries: tuple[tuple[str, Path], ...] = ()  # (name, stand-in path) pairs; a tuple keeps Host hashable

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists()

    def read(self, absolute: str, default: str = "") -> str:
        """A small text file's stripped contents, or ``default`` when it cannot be read."""
        try:
            with self.path(absolute).open("rb") as fh:
                return fh.read(_MAX_READ).decode("utf-8", "replace").strip().strip("\x00")
        except OSError:
            return default

    def glob(self, absolute_dir: str, pattern: str) -> list[Path]:
        base = self.path(absolute_dir)
        try:
            return sorted(base.glob(pattern))
        except OSError:
            return []

    def find_library(self, name: str, extra_dirs: Iterable[str] = ()) -> Path | str | None:
        """A loadable path for shared library ``name`` or None. Only checks that the loader finds it."""
        stand_ins = dict(self.libraries)
        if name in stand_ins:
            found = stand_ins[name]
            return found if found.exists() else None
        if self.root != Path("/"):  # a fabricated host: only its own tree counts
            for directory in (*extra_dirs, "/usr/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
                candidate = self.path(directory) / name
                if candidate.exists():
                    return candidate
            return None
        for directory in extra_dirs:
            candidate = Path(directory) / name
            if candidate.exists():
                return candidate
        try:
            ctypes.CDLL(name)
        except OSError:
            return None
        return name

    def cpu_model(self) -> str:
        for line in self.read("/proc/cpuinfo").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Model", "Hardware", "cpu model"} and value.strip():
                return value.strip()
        model = self.read("/sys/firmware/devicetree/base/model") or self.read("/proc/device-tree/model")
        return model or platform.processor() or platform.machine()

    def cpu_count(self) -> int:
        if self.root == Path("/"):
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        online = self.read("/sys/devices/system/cpu/online")
        return _count_cpu_list(online) if online else 1

    def compatible(self) -> list[str]:
        """The device tree's ``compatible`` strings (e.g. ``rockchip,rk3588``); empty on x86."""
        raw = self.read("/proc/device-tree/compatible") or self.read("/sys/firmware/devicetree/base/compatible")
        return [item for item in raw.replace("\x00", "\n").splitlines() if item]

    def fingerprint(self, *extra: str) -> str:
        """A short stable id for this hardware (+ ``extra``, e.g. a runtime version), for caching measurements."""
        facts = [platform.machine(), self.cpu_model(), str(self.cpu_count()), *self.compatible(), *extra]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _count_cpu_list(text: str) -> int:
    """Count CPUs in a sysfs list like ``0-3,6``."""
    count = 0
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            count += int(hi) - int(lo) + 1 if hi else 1
        except ValueError:
            continue
    return max(count, 1)
