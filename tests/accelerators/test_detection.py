"""Hardware detection on fabricated sysfs, /dev and /proc trees; the catalog; the CPU estimate.

Stand-in delegate libraries are real shared objects built with cc, loaded through LiteRT's own
load_delegate: the tests see our options reach the library and its refusal come back as one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from accelerators import catalog
from accelerators.errors import BackendUnavailable, InferenceError, ModelLoadError
from accelerators.host import Host
from accelerators.registry import discover
from accelerators.rknn import RknnConfig, npu_driver
from tests.conftest import DIGITS_MODEL, FACE_MODEL

# A TFLite external delegate that refuses to start and says which device it was asked for.
_REFUSING_DELEGATE = r"""
#include <stdio.h>
#include <string.h>
typedef void (*report_fn)(const char*);
void* tflite_plugin_create_delegate(char** keys, char** values, int n, report_fn report) {
    char message[256] = "no accelerator answered";
    for (int i = 0; i < n; i++) {
        if (strcmp(keys[i], "device") == 0) snprintf(message, sizeof message, "cannot open device %s", values[i]);
    }
    if (report) report(message);
    return 0;
}
void tflite_plugin_destroy_delegate(void* delegate) { (void)delegate; }
"""


def write(root: Path, absolute: str, text: str = "") -> Path:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def usb_device(root: Path, name: str, vendor: str, product: str, speed: str, bus: int = 2, dev: int = 3) -> None:
    base = f"/sys/bus/usb/devices/{name}"
    for field, value in {
        "idVendor": vendor,
        "idProduct": product,
        "speed": speed,
        "busnum": bus,
        "devnum": dev,
    }.items():
        write(root, f"{base}/{field}", f"{value}\n")
    write(root, f"/dev/bus/usb/{bus:03d}/{dev:03d}")


def device_tree(root: Path, *compatible: str) -> None:
    write(root, "/proc/device-tree/compatible", "".join(f"{c}\x00" for c in compatible))


def shared_library(tmp_path: Path, name: str, source: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in delegate library")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def fake_file(tmp_path: Path, name: str) -> Path:
    """A library stand-in for probes, which only check that it is there."""
    return write(tmp_path, f"/stand-ins/{name}", "not loaded by probes")


def compiled_model(tmp_path: Path) -> Path:
    model = tmp_path / "face_edgetpu.tflite"
    model.write_bytes(FACE_MODEL.read_bytes())
    return model


# --- Edge TPU ---------------------------------------------------------------------------------------


def edgetpu_host(tmp_path: Path, library: Path | None = None) -> Host:
    library = library or fake_file(tmp_path, "libedgetpu.so.1")
    return Host(root=tmp_path / "root", libraries=(("libedgetpu.so.1", library),))


def test_usb_edgetpu_before_firmware_load_is_found_on_usb3(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    usb_device(host.root, "2-1", "1a6e", "089a", "5000")
    backend = discover(host)["edgetpu-usb0"]
    probe = backend.probe()
    assert probe.available, probe.reason
    assert "firmware not loaded yet" in probe.device and "USB 2" not in probe.device
    caps = backend.capabilities()
    assert caps.part == "Coral Edge TPU (USB)" and caps.kind == "tpu"
    assert caps.dtypes == {"int8", "uint8"} and caps.formats == {".tflite"}
    assert caps.peak_ops_per_s["int8"] == 2e12  # 4 TOPS = 2e12 MAC/s
    assert caps.on_chip_memory_bytes == 8 * 1024 * 1024
    assert caps.supported_ops is not None and {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= caps.supported_ops
    assert "GATHER" not in caps.supported_ops
    assert "edgetpu" not in discover(host)  # the "none found" placeholder appears only when none is found


def test_usb_edgetpu_after_firmware_load_on_usb2_is_slower(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    usb_device(host.root, "1-1.2", "18d1", "9302", "480")
    usb_device(host.root, "3-1", "18d1", "9302", "5000", bus=3, dev=2)
    usb2, usb3 = discover(host)["edgetpu-usb0"], discover(host)["edgetpu-usb1"]
    probe = usb2.probe()
    assert probe.available and "firmware" not in probe.device
    assert "USB 2 (480 Mb/s)" in probe.device and "USB 3 port" in probe.device
    slow, fast = usb2.capabilities().transfer_bytes_per_s, usb3.capabilities().transfer_bytes_per_s
    assert slow is not None and fast is not None and slow * 5 < fast
    assert usb2.capabilities().part == "Coral Edge TPU (USB 2)"


def test_pcie_edgetpus_from_apex_nodes(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    for index in (0, 1):
        write(host.root, f"/dev/apex_{index}")
        write(host.root, f"/sys/class/apex/apex_{index}/status", "ALIVE\n")
    usb_device(host.root, "2-1", "18d1", "9302", "5000")
    backends = discover(host)
    assert [n for n in backends if n.startswith("edgetpu")] == ["edgetpu-pci0", "edgetpu-pci1", "edgetpu-usb0"]
    pci = backends["edgetpu-pci1"]
    assert pci.probe().available and "/dev/apex_1" in pci.probe().device
    assert pci.capabilities().part == "Coral Edge TPU (PCIe/M.2)"
    assert pci.capabilities().transfer_bytes_per_s == 500e6


def test_pcie_card_without_its_driver_says_install_gasket(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    write(host.root, "/sys/bus/pci/devices/0000:01:00.0/vendor", "0x1ac1\n")
    write(host.root, "/sys/bus/pci/devices/0000:01:00.0/device", "0x089a\n")
    write(host.root, "/sys/bus/pci/devices/0000:00:00.0/vendor", "0x8086\n")
    probe = discover(host)["edgetpu-pci0"].probe()
    assert not probe.available
    assert "0000:01:00.0" in probe.reason and "gasket-dkms" in probe.reason


def test_no_edgetpu_says_where_it_looked(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    usb_device(host.root, "1-1", "046d", "c52b", "12")  # a mouse
    backends = discover(host)
    assert not [n for n in backends if n.startswith("edgetpu-")]
    reason = backends["edgetpu"].probe().reason
    for where in ("/sys/bus/usb/devices", "/dev/apex_*", "18d1:9302", "1a6e:089a", "/sys/bus/pci/devices"):
        assert where in reason


def test_missing_libedgetpu_says_what_to_install(tmp_path: Path) -> None:
    host = Host(root=tmp_path)  # a fabricated host: only libraries in its own tree count
    usb_device(tmp_path, "2-1", "18d1", "9302", "5000")
    probe = discover(host)["edgetpu-usb0"].probe()
    assert not probe.available and "libedgetpu.so.1" in probe.reason and "libedgetpu1-std" in probe.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any device node")
def test_apex_node_without_permission_says_add_the_group(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path)
    write(host.root, "/dev/apex_0").chmod(0o000)
    probe = discover(host)["edgetpu-pci0"].probe()
    assert not probe.available and "apex group" in probe.reason and "udev" in probe.reason


def test_edgetpu_load_errors_are_one_line_naming_the_model(tmp_path: Path) -> None:
    host = edgetpu_host(tmp_path, shared_library(tmp_path, "libedgetpu", _REFUSING_DELEGATE))
    usb_device(host.root, "2-1", "18d1", "9302", "5000")
    backend = discover(host)["edgetpu-usb0"]
    with pytest.raises(ModelLoadError, match="edgetpu_compiler") as plain:
        backend.load(FACE_MODEL)
    model = compiled_model(tmp_path)
    with pytest.raises(ModelLoadError, match="cannot open device usb:0") as refused:
        backend.load(model)
    for info in (plain, refused):
        assert "\n" not in str(info.value)
    assert str(model) in str(refused.value) and str(FACE_MODEL) in str(plain.value)


def test_a_library_that_is_not_a_delegate_is_a_load_error(tmp_path: Path) -> None:
    library = shared_library(tmp_path, "libnothing", "int answer(void) { return 42; }\n")
    host = edgetpu_host(tmp_path, library)
    write(host.root, "/dev/apex_0")
    with pytest.raises(ModelLoadError, match="not a TFLite external delegate") as info:
        discover(host)["edgetpu-pci0"].load(compiled_model(tmp_path))
    assert "\n" not in str(info.value)


# --- Rockchip NPU -----------------------------------------------------------------------------------


def test_rk3588_without_the_sdk_says_install_rknn_toolkit_lite2(tmp_path: Path) -> None:
    device_tree(tmp_path, "radxa,rock-5b", "rockchip,rk3588")
    write(tmp_path, "/dev/rknpu")
    host = Host(root=tmp_path)
    backend = discover(host)["rknn-npu"]
    probe = backend.probe()
    assert not probe.available and "pip install rknn-toolkit-lite2" in probe.reason
    caps = backend.capabilities()
    assert caps.part == "Rockchip RK3588 NPU" and caps.kind == "npu" and caps.formats == {".rknn"}
    assert caps.peak_ops_per_s["int8"] == pytest.approx(1e12)  # "auto": one of the three 2-TOPS cores
    all_cores = discover(host, [RknnConfig(core_mask="0_1_2")])["rknn-npu"].capabilities()
    assert all_cores.peak_ops_per_s["int8"] == pytest.approx(3e12)  # 6 TOPS
    with pytest.raises(ModelLoadError, match="rknn-toolkit2"):
        backend.load(DIGITS_MODEL)
    rknn_file = write(tmp_path, "/models/digits.rknn", "RKNN")
    with pytest.raises(BackendUnavailable, match="rknn-toolkit-lite2"):
        backend.load(rknn_file)


def test_rknpu_found_through_its_drm_driver(tmp_path: Path) -> None:
    device_tree(tmp_path, "rockchip,rk3588s-orangepi-5", "rockchip,rk3588s")
    driver = tmp_path / "sys/bus/platform/drivers/RKNPU"
    driver.mkdir(parents=True)
    (tmp_path / "sys/class/drm/card1/device").mkdir(parents=True)
    (tmp_path / "sys/class/drm/card1/device/driver").symlink_to("../../../../bus/platform/drivers/RKNPU")
    (tmp_path / "sys/class/drm/card0/device").mkdir(parents=True)
    host = Host(root=tmp_path)
    assert npu_driver(host) == "/dev/dri/card1"
    assert "rknn-toolkit-lite2" in discover(host)["rknn-npu"].probe().reason


@pytest.mark.parametrize(
    ("compatible", "expected"),
    [
        (("pine64,quartz64-a", "rockchip,rk3566"), "no NPU device node"),  # a known NPU, but no driver
        (("rockchip,rk3399",), "rk3399 has no NPU"),
        (("fsl,imx8mp-evk", "fsl,imx8mp"), "not a Rockchip SoC (fsl,imx8mp-evk, fsl,imx8mp)"),
        ((), "not a Rockchip SoC (no device tree)"),
    ],
)
def test_rknn_reasons(tmp_path: Path, compatible: tuple[str, ...], expected: str) -> None:
    if compatible:
        device_tree(tmp_path, *compatible)
    probe = discover(Host(root=tmp_path))["rknn-npu"].probe()
    assert not probe.available and expected in probe.reason


class _FakeAttr:
    def __init__(self, name: str, dims: list[int], tensor_type: int, fmt: int) -> None:
        self.name, self.dims, self.n_dims, self.type, self.fmt = name.encode(), dims, len(dims), tensor_type, fmt


class _FakeRknnLite:
    """A stand-in for Rockchip's SDK, which exists only on aarch64 boards: return codes, not exceptions."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7
    core_masks: ClassVar[list[object]] = []

    def __init__(self, verbose: bool = False) -> None:
        self.rknn_runtime = self
        self.data = b""
        self.released = False

    def load_rknn(self, path: str) -> int:
        self.data = Path(path).read_bytes()
        return -1 if b"unreadable" in self.data else 0

    def init_runtime(self, core_mask: object = None) -> int:
        self.core_masks.append(core_mask)
        return -10 if b"other-soc" in self.data else 0

    def get_in_out_num(self) -> tuple[int, int]:
        return 1, 1

    def get_tensor_attr(self, index: int, is_output: bool = False) -> _FakeAttr:
        return _FakeAttr("scores", [1, 10], 0, 3) if is_output else _FakeAttr("image", [1, 8, 8, 3], 2, 1)

    def inference(self, inputs: list[np.ndarray], data_format: list[str]) -> list[np.ndarray] | None:
        assert data_format == ["nhwc"]
        return None if b"broken" in self.data else [np.full((1, 10), float(inputs[0].sum()), np.float32)]

    def release(self) -> None:
        self.released = True


def test_rknn_return_codes_become_our_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = _FakeRknnLite  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    root = tmp_path / "root"
    device_tree(root, "radxa,rock-5b", "rockchip,rk3588")
    write(root, "/dev/rknpu")
    host = Host(root=root, libraries=(("librknnrt.so", fake_file(tmp_path, "librknnrt.so")),))
    backend = discover(host, [RknnConfig(core_mask="0_1")])["rknn-npu"]
    assert backend.probe().available, backend.probe().reason
    model = write(tmp_path, "/m/ok.rknn", "RKNN ok")
    session = backend.load(model)
    assert _FakeRknnLite.core_masks[-1] == _FakeRknnLite.NPU_CORE_0_1
    assert [(s.name, s.shape, s.dtype) for s in session.inputs] == [("image", (1, 8, 8, 3), "uint8")]
    assert [(s.name, s.shape, s.dtype) for s in session.outputs] == [("scores", (1, 10), "float32")]
    outputs = session.run({"image": np.ones((1, 8, 8, 3), np.uint8)})
    assert outputs["scores"][0, 0] == 192
    for content, error, needle in [
        ("RKNN unreadable", ModelLoadError, "load_rknn returned -1"),
        ("RKNN other-soc", ModelLoadError, "init_runtime returned -10: model built for another device"),
    ]:
        bad = write(tmp_path, f"/m/{content.split()[1]}.rknn", content)
        with pytest.raises(error, match=needle) as info:
            backend.load(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    broken = backend.load(write(tmp_path, "/m/broken.rknn", "RKNN broken"))
    with pytest.raises(InferenceError, match=r"broken\.rknn: the Rockchip NPU returned no result"):
        broken.run({"image": np.ones((1, 8, 8, 3), np.uint8)})
    with pytest.raises(InferenceError, match="has dtype float32"):
        broken.run({"image": np.ones((1, 8, 8, 3), np.float32)})


# --- NPU through a LiteRT external delegate ---------------------------------------------------------


def test_imx8mp_vx_delegate_is_found_with_galcore_and_its_library(tmp_path: Path) -> None:
    device_tree(tmp_path, "fsl,imx8mp-evk", "fsl,imx8mp")
    write(tmp_path, "/usr/lib/libvx_delegate.so", "stand-in")
    write(tmp_path, "/dev/galcore")
    backend = discover(Host(root=tmp_path))["npu-vx"]
    probe = backend.probe()
    assert probe.available and "NXP i.MX 8M Plus NPU" in probe.device
    caps = backend.capabilities()
    assert caps.part == "NXP i.MX 8M Plus NPU" and caps.peak_ops_per_s["int8"] == pytest.approx(1.15e12)
    assert caps.formats == {".tflite"}


def test_vx_delegate_without_galcore_or_library(tmp_path: Path) -> None:
    write(tmp_path, "/usr/lib/libvx_delegate.so", "stand-in")
    probe = discover(Host(root=tmp_path))["npu-vx"].probe()
    assert not probe.available and "/dev/galcore" in probe.reason
    other = tmp_path / "other"
    write(other, "/dev/galcore")
    probe = discover(Host(root=other))["npu-vx"].probe()
    assert not probe.available and "/usr/lib/libvx_delegate.so not found" in probe.reason
    nothing = discover(Host(root=tmp_path / "nothing"))["npu-delegate"].probe()
    assert not nothing.available
    assert "/usr/lib/libvx_delegate.so" in nothing.reason and "/dev/galcore" in nothing.reason


def test_configured_delegate_passes_its_options_and_fails_in_one_line(tmp_path: Path) -> None:
    from accelerators.npu_delegate import NpuDelegateConfig

    root = tmp_path / "root"
    (root / "opt/mynpu").mkdir(parents=True)
    shutil.copy(shared_library(tmp_path, "libmy_npu", _REFUSING_DELEGATE), root / "opt/mynpu/libmy_npu.so")
    write(root, "/dev/mynpu0")
    config = NpuDelegateConfig(
        library="/opt/mynpu/libmy_npu.so",
        options={"device": "mynpu:7"},
        device_node="/dev/mynpu0",
        part="NXP i.MX 93 NPU (Ethos-U65)",
    )
    backend = discover(Host(root=root), [config])["npu-delegate"]
    assert backend.probe().available, backend.probe().reason
    assert backend.capabilities().part == "NXP i.MX 93 NPU (Ethos-U65)"
    with pytest.raises(ModelLoadError, match="cannot open device mynpu:7") as info:
        backend.load(FACE_MODEL)
    assert str(FACE_MODEL) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown part"):
        NpuDelegateConfig(library="/opt/mynpu/libmy_npu.so", part="Imaginary NPU 9000")


# --- catalog ----------------------------------------------------------------------------------------


def test_catalog_matches_parts_from_ids_and_compatible_strings() -> None:
    assert catalog.match_usb(0x1A6E, 0x089A) is catalog.EDGETPU_USB
    assert catalog.match_usb(0x18D1, 0x9302) is catalog.EDGETPU_USB
    assert catalog.match_usb(0x046D, 0xC52B) is None
    assert catalog.match_pci(0x1AC1, 0x089A) is catalog.EDGETPU_PCIE
    assert catalog.match_pci(0x1E60, 0x2864) is catalog.HAILO8
    assert catalog.match_compatible(["radxa,rock-5b", "rockchip,rk3588"]) is catalog.RK3588
    assert catalog.match_compatible(["pine64,quartz64-a", "rockchip,rk3566"]) is catalog.RK3568
    assert catalog.match_compatible(["fsl,imx8mp-evk", "fsl,imx8mp"]) is catalog.IMX8MP
    assert catalog.match_compatible(["raspberrypi,5-model-b", "brcm,bcm2712"]) is None
    assert catalog.by_name("hailo-8") is catalog.HAILO8


def test_catalog_stores_macs_not_ops() -> None:
    """Vendors quote TOPS (2 ops per MAC); the catalog holds MAC/s."""
    assert catalog.EDGETPU_USB.peak_macs_per_s["int8"] == 2e12  # 4 TOPS
    assert catalog.RK3588.peak_macs_per_s["int8"] == 3e12 and catalog.RK3588.cores == 3  # 6 TOPS
    assert catalog.RK3568.peak_macs_per_s["int8"] == 0.4e12  # 0.8 TOPS
    assert catalog.HAILO8.peak_macs_per_s["int8"] == 13e12  # 26 TOPS
    assert catalog.IMX8MP.peak_macs_per_s["int8"] == pytest.approx(1.15e12)  # 2.3 TOPS
    for part in catalog.PARTS:
        assert part.source and set(part.peak_macs_per_s) <= part.dtypes


_X86_BLOCK = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz
cpu MHz\t\t: 3400.000
siblings\t: 8
cpu cores\t: 4
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2

"""


def test_cpu_estimate_from_x86_cpuinfo_with_avx2(tmp_path: Path) -> None:
    write(tmp_path, "/proc/cpuinfo", "".join(_X86_BLOCK.format(n=n) for n in range(8)))
    write(tmp_path, "/sys/devices/system/cpu/online", "0-7\n")
    host = Host(root=tmp_path)
    est = catalog.cpu_estimate(host)
    # no cpufreq: the base clock from the model name; 4 physical cores of 8 threads; AVX2: 2 FMA x 8 lanes
    assert (est.cores, est.ghz, est.simd) == (8, 1.6, "avx2")
    assert est.fp32_macs_per_s == pytest.approx(4 * 1.6e9 * 16)
    assert est.int8_macs_per_s == pytest.approx(2 * est.fp32_macs_per_s)  # no VNNI
    for cpu in range(8):
        write(tmp_path, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq", "3400000\n")
    assert catalog.cpu_estimate(host).fp32_macs_per_s == pytest.approx(4 * 3.4e9 * 16)
    write(tmp_path, "/sys/devices/system/cpu/online", "0-3\n")  # a cgroup that allows half the threads
    assert catalog.cpu_estimate(host).fp32_macs_per_s == pytest.approx(2 * 3.4e9 * 16)
    part = catalog.cpu_part(host, host.cpu_model())
    assert part.kind == "cpu" and part.name.startswith("Intel(R) Core(TM) i5") and "estimate" in part.source


def test_cpu_estimate_from_big_little_aarch64_cpuinfo(tmp_path: Path) -> None:
    blocks = []
    for n in range(8):
        little = n < 4
        features = "fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
        blocks.append(
            f"processor\t: {n}\nBogoMIPS\t: 48.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU part\t: {'0xd05' if little else '0xd0b'}\nCPU revision\t: 0\n\n"
        )
        khz = 1800000 if little else 2400000
        write(tmp_path, f"/sys/devices/system/cpu/cpu{n}/cpufreq/cpuinfo_max_freq", f"{khz}\n")
    write(tmp_path, "/proc/cpuinfo", "".join(blocks))
    write(tmp_path, "/sys/devices/system/cpu/online", "0-7\n")
    est = catalog.cpu_estimate(Host(root=tmp_path))
    # four Cortex-A55 (one 128-bit FMA pipe) at 1.8 GHz + four Cortex-A76 (two pipes) at 2.4 GHz
    assert (est.cores, est.ghz, est.simd) == (8, 2.1, "neon")
    assert est.fp32_macs_per_s == pytest.approx(4 * 1.8e9 * 4 + 4 * 2.4e9 * 8)
    assert est.int8_macs_per_s == pytest.approx(4 * est.fp32_macs_per_s)  # asimddp: sdot
    assert est.notes == ()


def test_cpu_estimate_without_clock_information_says_it_guessed(tmp_path: Path) -> None:
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd\n\n")
    est = catalog.cpu_estimate(Host(root=tmp_path))
    assert est.fp32_macs_per_s == pytest.approx(1.5e9 * 4) and "assumed 1.5 GHz" in est.notes[0]


# --- real hardware ----------------------------------------------------------------------------------


@pytest.mark.hardware
def test_real_edgetpu_runs_a_compiled_model() -> None:
    backends = [b for n, b in discover().items() if n.startswith("edgetpu-") and b.probe().available]
    model = Path(os.environ.get("EDGE_AGENT_EDGETPU_MODEL", "/nonexistent"))
    if not backends or not model.is_file():
        pytest.skip("needs a Coral Edge TPU and EDGE_AGENT_EDGETPU_MODEL=<a *_edgetpu.tflite model>")
    session = backends[0].load(model)
    spec = session.inputs[0]
    outputs = session.run({spec.name: np.zeros(tuple(d or 1 for d in spec.shape), spec.dtype)})
    assert set(outputs) == {o.name for o in session.outputs}


@pytest.mark.hardware
def test_real_rockchip_npu_runs_a_model() -> None:
    backend = discover()["rknn-npu"]
    model = Path(os.environ.get("EDGE_AGENT_RKNN_MODEL", "/nonexistent"))
    if not backend.probe().available or not model.is_file():
        pytest.skip("needs a Rockchip NPU with rknn-toolkit-lite2 and EDGE_AGENT_RKNN_MODEL=<a .rknn model>")
    session = backend.load(model)
    spec = session.inputs[0]
    outputs = session.run({spec.name: np.zeros(tuple(d or 1 for d in spec.shape), spec.dtype)})
    assert set(outputs) == {o.name for o in session.outputs}
