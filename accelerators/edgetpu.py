"""Coral Edge TPU (USB Accelerator, M.2/Mini PCIe cards) through libedgetpu's LiteRT delegate.

Devices are found in sysfs and /dev, not by asking libedgetpu: the probe then works (and says what
is missing) on a machine without the library, and tests can fabricate the trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from accelerators import catalog
from accelerators.base import Backend, BackendConfig, BackendOptions, Capabilities, Probe
from accelerators.errors import BackendUnavailable, ModelLoadError
from accelerators.host import Host
from accelerators.litert import LiteRtSession, first_line, interpreter_api
from accelerators.modelfile import check_model_file
from accelerators.npu_delegate import open_delegate
from accelerators.registry import register

LIBRARY = "libedgetpu.so.1"
_UNPROGRAMMED = (0x1A6E, 0x089A)  # "Global Unichip": enumerates like this until libedgetpu uploads firmware
_PROGRAMMED = (0x18D1, 0x9302)  # "Google": after the firmware is running
_INSTALL = "install libedgetpu1-std (Coral apt repo: https://coral.ai/software/#debian-packages)"
_DRIVER = "install gasket-dkms (Coral apt repo) and reboot"
_PERMISSION_APEX = "add the agent's user to the apex group and install the udev rule gasket-dkms ships (65-apex.rules)"
_PERMISSION_USB = "install the Coral udev rules (shipped with libedgetpu1-std) and re-plug the accelerator"


@dataclass(frozen=True)
class EdgeTpuDevice:
    """One Edge TPU as sysfs and /dev show it."""

    bus: Literal["usb", "pci"]
    index: int  # the N of libedgetpu's "usb:N" / "pci:N"
    where: str  # sysfs directory or device node, for messages
    node: str = ""  # the device node the agent must be able to open ("" when sysfs shows none)
    programmed: bool = True  # USB: firmware already uploaded
    speed_mbps: float | None = None  # USB: negotiated speed
    pci_address: str = ""  # PCIe: bus address, when the card is seen but its driver is not

    @property
    def part(self) -> catalog.Part:
        return catalog.edgetpu_usb(self.speed_mbps) if self.bus == "usb" else catalog.EDGETPU_PCIE


def find_devices(host: Host) -> list[EdgeTpuDevice]:
    """Every Edge TPU on ``host``: PCIe first (faster link), then USB, each in sysfs order."""
    found: list[EdgeTpuDevice] = []
    apex_nodes = [p for p in host.glob("/dev", "apex_*") if p.name.removeprefix("apex_").isdigit()]
    for node in sorted(apex_nodes, key=lambda p: int(p.name.removeprefix("apex_"))):
        found.append(EdgeTpuDevice("pci", len(found), f"/dev/{node.name}", node=f"/dev/{node.name}"))
    if not found:  # a card on the bus whose gasket/apex driver is missing shows up only in sysfs
        for device in host.glob("/sys/bus/pci/devices", "*"):
            ids = (catalog.parse_hex(_read(device / "vendor")), catalog.parse_hex(_read(device / "device")))
            if ids in catalog.EDGETPU_PCIE.pci_ids:
                where = f"/sys/bus/pci/devices/{device.name}"
                found.append(EdgeTpuDevice("pci", len(found), where, pci_address=device.name))
    usb = 0
    for device in host.glob("/sys/bus/usb/devices", "*"):
        ids = (catalog.parse_hex(_read(device / "idVendor")), catalog.parse_hex(_read(device / "idProduct")))
        if ids not in (_UNPROGRAMMED, _PROGRAMMED):
            continue
        bus, dev = _read(device / "busnum"), _read(device / "devnum")
        usb_node = f"/dev/bus/usb/{int(bus):03d}/{int(dev):03d}" if bus.isdigit() and dev.isdigit() else ""
        try:
            speed: float | None = float(_read(device / "speed"))
        except ValueError:
            speed = None
        where = f"/sys/bus/usb/devices/{device.name}"
        found.append(EdgeTpuDevice("usb", usb, where, usb_node, ids == _PROGRAMMED, speed))
        usb += 1
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


class EdgeTpuConfig(BackendConfig):
    type: Literal["edgetpu"] = Field("edgetpu", description="Coral Edge TPUs (USB, PCIe/M.2) through libedgetpu.")


@register
class EdgeTpuType:
    type = "edgetpu"
    formats = frozenset({".tflite"})  # files its accelerators load
    Config = EdgeTpuConfig

    @classmethod
    def accelerators(cls, host: Host, config: BackendConfig) -> list[Backend]:
        assert isinstance(config, EdgeTpuConfig)
        return [EdgeTpu(device, host, config) for device in find_devices(host)] or [EdgeTpu(None, host, config)]


class EdgeTpu:
    """One Edge TPU; with ``device=None``, the placeholder that says none was found and where we looked."""

    def __init__(self, device: EdgeTpuDevice | None, host: Host, config: EdgeTpuConfig) -> None:
        self.name = f"edgetpu-{device.bus}{device.index}" if device else "edgetpu"
        self.device = device
        self._host = host
        self._config = config

    def probe(self) -> Probe:
        if (off := self._config.disabled()) is not None:
            return off
        device = self.device
        if device is None:
            return Probe(
                False,
                "no Edge TPU found (looked for USB ids 1a6e:089a and 18d1:9302 in /sys/bus/usb/devices, "
                "/dev/apex_* nodes, and PCI id 1ac1:089a in /sys/bus/pci/devices): plug in a Coral USB "
                f"Accelerator, or for an M.2/PCIe card {_DRIVER}",
            )
        if device.bus == "pci" and not device.node:
            return Probe(False, f"Coral PCIe Edge TPU at {device.pci_address} has no /dev/apex_* node: {_DRIVER}")
        node = self._host.path(device.node) if device.node else None
        if node is not None and node.exists() and not os.access(node, os.R_OK | os.W_OK):
            fix = _PERMISSION_APEX if device.bus == "pci" else _PERMISSION_USB
            return Probe(False, f"no permission on {device.node}: {fix}")
        if self._host.find_library(LIBRARY) is None:
            return Probe(False, f"{LIBRARY} not found: {_INSTALL}")
        try:
            _, _, package = interpreter_api()
        except BackendUnavailable as exc:
            return Probe(False, str(exc))
        return Probe(True, device=f"{device.part.name} at {device.where}{_usb_note(device)} ({package})")

    def capabilities(self) -> Capabilities:
        part = self.device.part if self.device else catalog.EDGETPU_USB
        return part.capabilities(self.name, {".tflite"})

    def load(self, model: Path, options: BackendOptions | None = None) -> LiteRtSession:
        check_model_file(model)
        if not model.name.endswith("_edgetpu.tflite"):
            raise ModelLoadError(
                f"{model}: not compiled for the Edge TPU; compile it with edgetpu_compiler "
                "(it writes <name>_edgetpu.tflite)"
            )
        probe = self.probe()
        if not probe.available or self.device is None:
            raise BackendUnavailable(f"{self.name} is not available: {probe.reason}")
        interpreter_cls, load_delegate, _ = interpreter_api()
        library = self._host.find_library(LIBRARY) or LIBRARY
        device = f"{self.device.bus}:{self.device.index}"
        delegate = open_delegate(load_delegate, library, {"device": device}, model)
        opts = options or BackendOptions()
        try:
            # Ops the compiler left off the TPU run on the CPU, with these threads.
            interpreter = interpreter_cls(
                model_path=str(model), experimental_delegates=[delegate], num_threads=opts.threads
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{model}: the Edge TPU ({device}) cannot load it: {first_line(exc)}") from exc
        return LiteRtSession(interpreter, model, label=f"Edge TPU {device}", keep=(delegate,))


def _usb_note(device: EdgeTpuDevice) -> str:
    if device.bus != "usb":
        return ""
    note = "" if device.programmed else ", firmware not loaded yet (libedgetpu uploads it on first use)"
    if device.speed_mbps is not None and device.speed_mbps < 5000:
        note += f", USB 2 ({device.speed_mbps:g} Mb/s): plug it into a USB 3 port for ~10x the transfer rate"
    return note
