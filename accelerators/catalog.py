"""Known parts: what the planner assumes about an accelerator before calibration has measured it.

Vendors quote TOPS, and one multiply-accumulate counts as two operations, so a part rated at
4 TOPS does 2e12 MAC/s; every ``peak_macs_per_s`` here is in MAC/s, as ``Capabilities`` expects.
Figures marked "datasheet" are the vendor's own; those marked "estimate" are ours, to be replaced
by calibration. A probe finds the part from what it can see: a USB or PCI id, or a device-tree
``compatible`` string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from accelerators.base import Capabilities
from accelerators.host import Host

MIB = 1024 * 1024
_INT8 = frozenset({"int8", "uint8"})


def _tops(tops: float) -> float:
    """MAC/s of a part rated at ``tops`` tera-operations per second (2 operations per MAC)."""
    return tops * 1e12 / 2


@dataclass(frozen=True)
class Part:
    """One accelerator model, as its datasheet (or our estimate) describes it."""

    name: str
    kind: str  # "cpu", "gpu", "npu", "tpu"
    dtypes: frozenset[str]
    peak_macs_per_s: Mapping[str, float] = field(default_factory=dict)  # dtype -> MAC/s
    memory_bandwidth_bytes_per_s: float | None = None  # the memory the part's weights and activations live in
    on_chip_memory_bytes: int | None = None
    link_bytes_per_s: float | None = None  # host <-> device; None when the part shares host memory
    dispatch_overhead_s: float = 0.0  # fixed cost of one invoke, beyond the work itself (estimate)
    supported_ops: frozenset[str] | None = None  # None: whatever its runtime accepts
    cores: int = 1
    usb_ids: tuple[tuple[int, int], ...] = ()  # (vendor, product)
    pci_ids: tuple[tuple[int, int], ...] = ()  # (vendor, device)
    compatible: tuple[str, ...] = ()  # device-tree compatible strings of the SoC that carries it
    source: str = ""  # where the figures come from

    def capabilities(self, name: str, formats: Iterable[str], **changes: object) -> Capabilities:
        """Capabilities of accelerator ``name`` built from this part; ``changes`` override fields."""
        caps = Capabilities(
            name=name,
            kind=self.kind,
            formats=frozenset(formats),
            dtypes=self.dtypes,
            peak_ops_per_s=dict(self.peak_macs_per_s),
            memory_bandwidth_bytes_per_s=self.memory_bandwidth_bytes_per_s,
            on_chip_memory_bytes=self.on_chip_memory_bytes,
            transfer_bytes_per_s=self.link_bytes_per_s,
            dispatch_overhead_s=self.dispatch_overhead_s,
            supported_ops=self.supported_ops,
            part=self.name,
        )
        return dataclasses.replace(caps, **changes) if changes else caps  # type: ignore[arg-type]


# The ops the Edge TPU compiler can map, from Coral's "TensorFlow models on the Edge TPU" page
# (supported operations table), written as TFLite builtin op names. Anything else runs on the CPU.
EDGETPU_OPS = frozenset(
    {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
        "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE",
        "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
        "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip

# Coral datasheets: 4 TOPS int8 at the maximum clock (libedgetpu1-max; the -std runtime clocks lower),
# about 8 MB of on-chip SRAM that caches parameters; what does not fit streams from the host over
# the link on every invoke, so the link is also its effective memory bandwidth.
EDGETPU_USB = Part(
    name="Coral Edge TPU (USB)",
    kind="tpu",
    dtypes=_INT8,
    peak_macs_per_s={"int8": _tops(4), "uint8": _tops(4)},
    memory_bandwidth_bytes_per_s=350e6,
    on_chip_memory_bytes=8 * MIB,
    link_bytes_per_s=350e6,  # estimate: USB 3.0 is 5 Gb/s on the wire, ~300-400 MB/s of payload in practice
    dispatch_overhead_s=0.5e-3,  # estimate: one USB round trip per invoke plus the delegate's bookkeeping
    supported_ops=EDGETPU_OPS,
    usb_ids=((0x1A6E, 0x089A), (0x18D1, 0x9302)),  # before / after libedgetpu loads its firmware
    source="Coral USB Accelerator datasheet (4 TOPS int8, USB 3.0); link rate and overhead are estimates",
)
EDGETPU_PCIE = dataclasses.replace(
    EDGETPU_USB,
    name="Coral Edge TPU (PCIe/M.2)",
    memory_bandwidth_bytes_per_s=500e6,
    link_bytes_per_s=500e6,  # datasheet: PCIe Gen2 x1, 5 GT/s with 8b/10b coding = 500 MB/s per direction
    dispatch_overhead_s=0.1e-3,  # estimate: a PCIe doorbell costs far less than a USB transfer
    usb_ids=(),
    pci_ids=((0x1AC1, 0x089A),),
    source="Coral M.2/Mini PCIe Accelerator datasheets (4 TOPS int8, PCIe Gen2 x1); overhead is an estimate",
)
# estimate: USB 2.0 is 480 Mb/s on the wire; bulk transfers deliver ~35 MB/s of it
USB2_BYTES_PER_S = 35e6


def edgetpu_usb(speed_mbps: float | None) -> Part:
    """The USB Edge TPU at the speed its port negotiated (sysfs ``speed``, Mb/s)."""
    if speed_mbps is None or speed_mbps >= 5000:
        return EDGETPU_USB
    return dataclasses.replace(
        EDGETPU_USB,
        name="Coral Edge TPU (USB 2)",
        memory_bandwidth_bytes_per_s=USB2_BYTES_PER_S,
        link_bytes_per_s=USB2_BYTES_PER_S,
        dispatch_overhead_s=1e-3,  # estimate
    )


_RK_DTYPES = frozenset({"int8", "uint8", "int16", "float16"})


def _rockchip(name: str, tops: float, cores: int, bandwidth: float, *compatible: str) -> Part:
    # Rockchip publishes only the int8 figure; int16/fp16 at a quarter of it is our estimate.
    return Part(
        name=name,
        kind="npu",
        dtypes=_RK_DTYPES,
        peak_macs_per_s={
            "int8": _tops(tops),
            "uint8": _tops(tops),
            "int16": _tops(tops) / 4,
            "float16": _tops(tops) / 4,
        },
        memory_bandwidth_bytes_per_s=bandwidth,
        dispatch_overhead_s=0.3e-3,  # estimate: an ioctl round trip into the rknpu driver per invoke
        cores=cores,
        compatible=compatible,
        source=f"Rockchip {name.split()[1]} datasheet ({tops:g} TOPS int8, {cores} core(s)); "
        "other dtypes, bandwidth and overhead are estimates",
    )


# Bandwidths are estimates: the theoretical peak of the DRAM a typical board pairs with the SoC.
RK3588 = _rockchip("Rockchip RK3588 NPU", 6, 3, 34e9, "rockchip,rk3588", "rockchip,rk3588s")  # LPDDR4x-4224, 64-bit
RK3576 = _rockchip("Rockchip RK3576 NPU", 6, 2, 34e9, "rockchip,rk3576")  # LPDDR4x-4266, 64-bit
RK3568 = _rockchip(
    "Rockchip RK3566/RK3568 NPU", 0.8, 1, 12.8e9, "rockchip,rk3568", "rockchip,rk3566"
)  # LPDDR4-3200, 32-bit
RK3562 = _rockchip("Rockchip RK3562 NPU", 1, 1, 8.5e9, "rockchip,rk3562")  # LPDDR4-2133, 32-bit

# Hailo-8 product brief: 26 TOPS int8, M.2 module on PCIe Gen3 x4 (8 GT/s, 128b/130b: ~3.9 GB/s).
# Its weights live on chip (no external DRAM); Hailo does not publish the size.
HAILO8 = Part(
    name="Hailo-8",
    kind="npu",
    dtypes=frozenset({"int8", "uint8", "int16"}),
    peak_macs_per_s={"int8": _tops(26), "uint8": _tops(26), "int16": _tops(26) / 4},  # int16: estimate
    link_bytes_per_s=3.9e9,
    dispatch_overhead_s=0.2e-3,  # estimate
    pci_ids=((0x1E60, 0x2864),),
    source="Hailo-8 product brief (26 TOPS int8, PCIe Gen3 x4); int16 rate and overhead are estimates",
)

# NXP i.MX 8M Plus fact sheet: 2.3 TOPS NPU (VeriSilicon VIP8000), reached through the VX delegate.
IMX8MP = Part(
    name="NXP i.MX 8M Plus NPU",
    kind="npu",
    dtypes=frozenset({"int8", "uint8", "int16"}),
    peak_macs_per_s={"int8": _tops(2.3), "uint8": _tops(2.3), "int16": _tops(2.3) / 4},  # int16: estimate
    memory_bandwidth_bytes_per_s=16e9,  # estimate: LPDDR4-4000, 32-bit
    dispatch_overhead_s=0.5e-3,  # estimate
    compatible=("fsl,imx8mp",),
    source="NXP i.MX 8M Plus fact sheet (2.3 TOPS); bandwidth, int16 rate and overhead are estimates",
)

# NXP i.MX 93 fact sheet: Arm Ethos-U65 microNPU, 0.5 TOPS, reached through the Ethos-U delegate.
IMX93 = Part(
    name="NXP i.MX 93 NPU (Ethos-U65)",
    kind="npu",
    dtypes=_INT8,
    peak_macs_per_s={"int8": _tops(0.5), "uint8": _tops(0.5)},
    memory_bandwidth_bytes_per_s=7.4e9,  # estimate: LPDDR4x-3733, 16-bit
    dispatch_overhead_s=0.5e-3,  # estimate
    compatible=("fsl,imx93",),
    source="NXP i.MX 93 fact sheet (0.5 TOPS Ethos-U65); bandwidth and overhead are estimates",
)

PARTS: tuple[Part, ...] = (EDGETPU_USB, EDGETPU_PCIE, RK3588, RK3576, RK3568, RK3562, HAILO8, IMX8MP, IMX93)


def by_name(name: str) -> Part | None:
    return next((p for p in PARTS if p.name.lower() == name.lower()), None)


def match_usb(vendor: int, product: int) -> Part | None:
    return next((p for p in PARTS if (vendor, product) in p.usb_ids), None)


def match_pci(vendor: int, device: int) -> Part | None:
    return next((p for p in PARTS if (vendor, device) in p.pci_ids), None)


def match_compatible(strings: Iterable[str]) -> Part | None:
    """The part of the first ``compatible`` string that names one (the device tree lists board, then SoC)."""
    for item in strings:
        for part in PARTS:
            if item.strip().lower() in part.compatible:
                return part
    return None


def parse_hex(text: str) -> int | None:
    """A sysfs id such as ``0x1ac1`` or ``18d1``; None when unreadable."""
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


# --- the CPU: no datasheet to look up, so an estimate from what /proc/cpuinfo and cpufreq say ----------

# Arm cores with two 128-bit FMA pipes ("CPU part" ids); others (A53/A55/A510/A520 class) have one.
# Estimate from Arm's software optimization guides; calibration replaces it.
_ARM_TWO_FMA_PIPES = frozenset(
    {
        0xD07, 0xD08, 0xD09, 0xD0A, 0xD0B, 0xD0C, 0xD0D, 0xD40, 0xD41,  # A57, A72, A73, A75, A76, N1, A77, V1, A78
        0xD44, 0xD47, 0xD48, 0xD49, 0xD4B, 0xD4D, 0xD4E, 0xD81, 0xD82, 0xD87,  # X1, A710, X2, N2, A78C, A715, X3, ...
    }
)  # fmt: skip
_FALLBACK_GHZ = 1.5  # estimate for a board that exposes no clock at all


@dataclass(frozen=True)
class CpuEstimate:
    """Peak fp32 MAC/s of the cores this process may use: cores x clock x SIMD lanes x FMA pipes."""

    cores: int
    ghz: float  # mean maximum clock over those cores
    simd: str  # "avx512", "avx2", "avx", "sse", "neon", "scalar"
    fp32_macs_per_s: float
    int8_macs_per_s: float  # with dot-product instructions (VNNI, asimddp) 4x fp32, else 2x (estimate)
    notes: tuple[str, ...] = ()  # what had to be guessed


def _blocks(cpuinfo: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor; keys lowercased."""
    blocks: list[dict[str, str]] = [{}]
    for line in cpuinfo.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip().lower()] = value.strip()
    return [b for b in blocks if "processor" in b and b["processor"].isdigit()]


def _simd(flags: set[str], cpu_part: int | None) -> tuple[str, float, float]:
    """(name, fp32 MACs per cycle per core, int8/fp32 ratio) for one core's feature flags."""
    int8 = 4.0 if flags & {"avx512_vnni", "avx_vnni", "asimddp"} else 2.0
    if "avx512f" in flags:
        return "avx512", 16 * 2, int8  # 16 lanes, two FMA ports on server parts (estimate)
    if "avx2" in flags and "fma" in flags:
        return "avx2", 8 * 2, int8  # 8 lanes, two 256-bit FMA ports since Haswell / Zen 2
    if "avx" in flags:
        return "avx", 8, int8  # separate multiply and add ports: one MAC per lane per cycle
    if "sse2" in flags:
        return "sse", 4, int8
    if flags & {"asimd", "neon"}:
        pipes = 2 if cpu_part in _ARM_TWO_FMA_PIPES else 1
        return "neon", 4 * pipes, int8
    return "scalar", 1, 1.0


def _max_ghz(host: Host, cpu: str, block: dict[str, str], notes: list[str]) -> float:
    khz = host.read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
    if khz.isdigit():
        return int(khz) / 1e6
    model = block.get("model name", "")
    if "GHz" in model:  # Intel names carry the base clock: "... @ 2.40GHz"
        try:
            return float(model.rsplit("@", 1)[-1].replace("GHz", "").strip())
        except ValueError:
            pass
    try:
        mhz = float(block.get("cpu mhz", ""))
    except ValueError:
        notes.append(f"no clock found; assumed {_FALLBACK_GHZ} GHz")
        return _FALLBACK_GHZ
    notes.append("clock from /proc/cpuinfo 'cpu MHz' (current, not maximum)")
    return mhz / 1000


def cpu_estimate(host: Host) -> CpuEstimate:
    """Estimate the CPU's peak from /proc/cpuinfo, cpufreq and the cores this process may use."""
    notes: list[str] = []
    blocks = _blocks(host.read("/proc/cpuinfo"))
    if not blocks:
        notes.append("no /proc/cpuinfo; assumed one scalar core")
        blocks = [{"processor": "0"}]
    fp32 = int8 = ghz_sum = 0.0
    names: list[str] = []
    for block in blocks:
        flags = set((block.get("flags") or block.get("features") or "").split())
        part = parse_hex(block.get("cpu part", "")) if "cpu part" in block else None
        name, per_cycle, int8_ratio = _simd(flags, part)
        ghz = _max_ghz(host, block["processor"], block, notes)
        # SMT siblings share one core's FMA ports: count physical cores only.
        smt = _ratio(block.get("cpu cores"), block.get("siblings"))
        fp32 += ghz * 1e9 * per_cycle * smt
        int8 += ghz * 1e9 * per_cycle * smt * int8_ratio
        ghz_sum += ghz
        names.append(name)
    # /proc/cpuinfo lists every core; a container or cgroup may let us use fewer.
    usable = min(host.cpu_count(), len(blocks))
    share = usable / len(blocks)
    return CpuEstimate(
        cores=usable,
        ghz=round(ghz_sum / len(blocks), 3),
        simd=max(set(names), key=names.count),
        fp32_macs_per_s=fp32 * share,
        int8_macs_per_s=int8 * share,
        notes=tuple(dict.fromkeys(notes)),
    )


def _ratio(cores: str | None, siblings: str | None) -> float:
    try:
        return min(1.0, int(cores or "") / int(siblings or ""))
    except (ValueError, ZeroDivisionError):
        return 1.0


def cpu_part(host: Host, model: str = "CPU") -> Part:
    """The host CPU as a catalog part, from :func:`cpu_estimate`."""
    est = cpu_estimate(host)
    return Part(
        name=model,
        kind="cpu",
        dtypes=frozenset({"float32", "int8", "uint8"}),
        peak_macs_per_s={"float32": est.fp32_macs_per_s, "int8": est.int8_macs_per_s, "uint8": est.int8_macs_per_s},
        cores=est.cores,
        source=f"estimate: {est.cores} cores x {est.ghz} GHz x {est.simd} FMA width"
        + "".join(f"; {n}" for n in est.notes),
    )
