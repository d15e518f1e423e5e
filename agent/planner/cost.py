"""The cost model: how long a layer, a segment of layers and a hand-over between accelerators take.

Times are milliseconds. A layer's time is a roofline, ``max(MACs / MAC rate, bytes / byte rate)``,
plus a small per-layer launch cost. The rates come from calibration where it measured the layer's
family on this accelerator, from measured families scaled onto the others where it measured some,
and from catalog peaks times a per-family efficiency otherwise. Every figure named ``*_ESTIMATE``
or listed in ``EFFICIENCY`` is our estimate, not a measurement. Where the model's own layers were
timed on this device (``agent.planner.measured``), ``CostTable`` uses those times instead.

A segment (contiguous layers on one accelerator, run as one call) adds its dispatch overhead, and on
parts with on-chip memory, the parameters that do not fit there, streamed over the link on every call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from accelerators.base import MAC_FAMILIES, Capabilities, Family, FamilyRate
from accelerators.calibration_layers import SPECS
from agent.models.ir import Layer, ModelProfile
from agent.planner.blend import blend_measured

# (fraction of peak MAC/s, fraction of memory bandwidth) a family reaches at batch 1: estimates from
# published runtime benchmarks of mobile CNNs. Depthwise convolutions reuse each weight only across
# one channel and elementwise work has no reuse at all, so both sit far below the peaks.
EFFICIENCY: dict[Family, tuple[float, float]] = {
    Family.CONV: (0.6, 0.7),
    Family.POINTWISE_CONV: (0.6, 0.7),
    Family.DEPTHWISE_CONV: (0.15, 0.5),
    Family.CONV_TRANSPOSE: (0.35, 0.6),
    Family.FULLY_CONNECTED: (0.5, 0.7),
    Family.MATMUL: (0.5, 0.6),
    Family.RECURRENT: (0.2, 0.5),  # time steps run one after another
    Family.ELEMENTWISE: (0.3, 0.5),
    Family.NORMALIZATION: (0.3, 0.4),  # softmax and norms make two passes over their input
    Family.POOLING: (0.3, 0.5),
    Family.RESIZE: (0.3, 0.3),  # gathers from scattered source pixels
    Family.RESHAPE: (0.3, 0.4),  # transposes walk memory with large strides
    Family.QUANTIZE: (0.3, 0.5),
    Family.OTHER: (0.3, 0.3),
}
MACS_PER_S_ESTIMATE = 10e9  # a part that states no peak at all: a few mobile cores in fp32
BANDWIDTH_ESTIMATE = 8e9  # bytes/s of host memory when a part states none: LPDDR4 of a typical board
ON_CHIP_BYTES_PER_S_ESTIMATE = 20e9  # activations kept in an accelerator's SRAM between its layers
HOST_COPY_BYTES_PER_S_ESTIMATE = 8e9  # handing a tensor from one host runtime to another: one memcpy
# Launching one layer inside a running session (kernel selection, thread wake-up): estimates.
LAUNCH_S_ESTIMATE = {"cpu": 2e-6, "gpu": 8e-6}
_LAUNCH_S_OTHER = 1e-6  # NPUs and TPUs run a compiled graph: almost nothing per layer
# Processors that run any dtype their runtime's ops accept: an int64 shape computation or a float64
# layer is bookkeeping to them, so only these compute dtypes are checked against ``caps.dtypes``.
_GENERAL_PURPOSE = frozenset({"cpu", "gpu", "none"})
_COMPUTE_DTYPES = frozenset({"float32", "float16", "bfloat16", "int8", "uint8", "int16"})
_FLOAT16_ALIASES = ("float16", "bfloat16")


def unsupported(layer: Layer, caps: Capabilities) -> str | None:
    """Why ``caps`` cannot run ``layer`` (a phrase without the accelerator's name), or None if it can."""
    if caps.supported_ops is not None and layer.op not in caps.supported_ops:
        return f"op {layer.op} is not among the ops it runs"
    # A dtype conversion sits between the two dtypes by nature: its input dtype says nothing.
    if layer.family is Family.QUANTIZE or layer.dtype in caps.dtypes:
        return None
    if caps.kind in _GENERAL_PURPOSE and layer.dtype not in _COMPUTE_DTYPES:
        return None
    runs = "/".join(sorted(caps.dtypes)) or "nothing"
    if caps.dtypes & {"int8", "uint8"}:
        return f"it runs only {runs} and the layer is {layer.dtype}: needs an int8 variant of the model"
    return f"it runs only {runs} and the layer is {layer.dtype}: needs a {min(caps.dtypes)} variant of the model"


class RateModel:
    """Per-layer time estimates for one accelerator: calibrated where it measured, catalog otherwise."""

    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps
        self.launch_s = LAUNCH_S_ESTIMATE.get(caps.kind, _LAUNCH_S_OTHER)
        self.on_chip = caps.on_chip_memory_bytes is not None
        values = {f.value for f in Family}
        self.measured = {Family(f): r for f, r in caps.measured.items() if f in values and r.layer_ms > 0}
        # The best byte rate any calibration layer reached: the memory roof of compute-bound families,
        # whose own byte rate says only how many bytes their compute-bound layer moved meanwhile.
        self.memory_roof = max((r.bytes_per_s for r in self.measured.values()), default=0.0)
        self._scale = {mac: self._catalog_error(mac) for mac in (True, False)}

    def layer_s(self, layer: Layer) -> float:
        """Seconds for one layer (math.inf when the accelerator cannot run it)."""
        if unsupported(layer, self.caps) is not None:
            return math.inf
        moved = self.moved_bytes(layer)
        rate = self.measured.get(layer.family)
        if rate is not None:
            return self._measured_s(layer, moved, rate)
        scale = self._scale[layer.family in MAC_FAMILIES]
        return self._catalog_s(layer.family, layer.macs, moved, layer.dtype) * scale

    def moved_bytes(self, layer: Layer) -> int:
        # On a part with on-chip memory the parameters sit there (those that do not fit are charged per
        # segment, see streaming_ms) and only activations count against its memory.
        return layer.activation_bytes + (0 if self.on_chip else layer.param_bytes)

    def peak(self, dtype: str) -> float:
        peaks = self.caps.peak_ops_per_s
        for candidate in (dtype, {"int8": "uint8", "uint8": "int8"}.get(dtype, "")):
            if peaks.get(candidate):
                return peaks[candidate]
        if dtype in _FLOAT16_ALIASES and peaks.get("float32"):
            return peaks["float32"]  # a part that states no half-precision figure runs it at least as fast
        return min((p for p in peaks.values() if p > 0), default=MACS_PER_S_ESTIMATE)  # the cautious guess

    def bandwidth(self) -> float:
        if self.on_chip:
            return ON_CHIP_BYTES_PER_S_ESTIMATE
        return self.caps.memory_bandwidth_bytes_per_s or BANDWIDTH_ESTIMATE

    def _catalog_s(self, family: Family, macs: int, moved: int, dtype: str) -> float:
        compute_eff, memory_eff = EFFICIENCY.get(family, EFFICIENCY[Family.OTHER])
        compute = macs / (self.peak(dtype) * compute_eff) if macs else 0.0
        memory = moved / (self.bandwidth() * memory_eff)
        return self.launch_s + max(compute, memory)

    def _measured_s(self, layer: Layer, moved: int, rate: FamilyRate) -> float:
        measured_s = rate.layer_ms / 1e3
        macs_rate = rate.macs_per_s
        if layer.dtype != rate.dtype and layer.dtype in self.caps.peak_ops_per_s:
            # measured in one dtype, run in another: scale by the catalog's ratio of the two peaks
            macs_rate *= self.peak(layer.dtype) / self.peak(rate.dtype)
        bytes_rate = max(rate.bytes_per_s, self.memory_roof) if layer.family in MAC_FAMILIES else rate.bytes_per_s
        compute = layer.macs / macs_rate if layer.macs and macs_rate > 0 else 0.0
        memory = moved / bytes_rate if bytes_rate > 0 else 0.0
        roof = max(compute, memory)
        # The calibration layer's time includes one launch; a layer k times its size takes
        # launch + k x (measured - launch), so tiny layers cost at least their launch.
        launch = min(self.launch_s, measured_s / 2)
        return launch + roof * (1 - launch / measured_s)

    def _catalog_error(self, mac_families: bool) -> float:
        """How far calibration found this part from its catalog figures (geometric mean of measured /
        estimated over the measured families of the same kind, or of any kind); 1 when none measured.
        Unmeasured families are scaled by it, so they stay comparable with the measured ones."""
        same = [f for f in self.measured if (f in MAC_FAMILIES) == mac_families] or list(self.measured)
        logs = []
        for family in same:
            spec, rate = SPECS.get(family), self.measured[family]
            if spec is None:
                continue
            moved = spec.moved_bytes  # calibration divides by the spec's bytes, so estimate from the same
            estimate = self._catalog_s(family, spec.macs, moved, rate.dtype)
            logs.append(math.log(rate.layer_ms / 1e3 / estimate))
        return math.exp(sum(logs) / len(logs)) if logs else 1.0


def layer_ms(layer: Layer, caps: Capabilities) -> float:
    """Milliseconds ``caps`` takes for ``layer``; math.inf when it cannot run it (see :func:`unsupported`)."""
    return RateModel(caps).layer_s(layer) * 1e3


def dispatch_ms(caps: Capabilities) -> float:
    """The fixed cost of one call into the accelerator: measured where calibration measured it."""
    seconds = caps.measured_dispatch_overhead_s
    return (caps.dispatch_overhead_s if seconds is None else seconds) * 1e3


def streaming_ms(param_bytes: float, caps: Capabilities) -> float:
    """Parameters beyond the on-chip memory, streamed from the host on every call of one segment."""
    if caps.on_chip_memory_bytes is None or param_bytes <= caps.on_chip_memory_bytes:
        return 0.0
    rate = caps.transfer_bytes_per_s or caps.memory_bandwidth_bytes_per_s or BANDWIDTH_ESTIMATE
    return (param_bytes - caps.on_chip_memory_bytes) / rate * 1e3


def segment_ms(layers: Sequence[Layer], caps: Capabilities) -> float:
    """One call running ``layers`` on ``caps``: the layers, one dispatch, and the streamed parameters."""
    model = RateModel(caps)
    compute = sum(model.layer_s(layer) for layer in layers) * 1e3
    return compute + dispatch_ms(caps) + streaming_ms(sum(layer.param_bytes for layer in layers), caps)


def transfer_ms(nbytes: float, src: Capabilities | None, dst: Capabilities | None) -> float:
    """Moving ``nbytes`` of activations from ``src`` to ``dst`` (None: the host, i.e. the caller).

    A device (``transfer_bytes_per_s`` set) sends over its link, and two devices talk through the
    host, so both links count. Two different runtimes in host memory hand over with one copy. The
    fixed cost of the extra call a cut causes is the next segment's dispatch overhead, not counted here.
    """
    if nbytes <= 0 or (src is not None and dst is not None and src.name == dst.name):
        return 0.0
    ms = 0.0
    for side in (src, dst):
        if side is not None and side.transfer_bytes_per_s:
            ms += nbytes / side.transfer_bytes_per_s * 1e3
    host_memory = [side is not None and not side.transfer_bytes_per_s for side in (src, dst)]
    if all(host_memory):
        ms += nbytes / HOST_COPY_BYTES_PER_S_ESTIMATE * 1e3
    return ms


class CostTable:
    """Every layer's time on every accelerator, and the bytes crossing every cut, for one model.

    Boundary ``k`` (0..n) lies before layer ``k``; ``cut_bytes[i]`` is the boundary after layer ``i``.
    The bytes at a boundary are the activations produced before it and read after it: model inputs
    count as produced on the host before layer 0, model outputs as read by the host after the last.
    Segment costs come from prefix sums, so any segment costs O(1) and all segments ending at one
    boundary cost one vector operation.
    """

    def __init__(
        self,
        profile: ModelProfile,
        capabilities: Mapping[str, Capabilities],
        measured: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        """``measured``: accelerator -> ms per layer timed on it (None: not timed), used over the estimates."""
        self.profile = profile
        self.names = tuple(capabilities)
        self.caps = tuple(capabilities.values())
        layers = profile.layers
        self.n, self.size = len(layers), len(self.caps)
        self.ms = np.zeros((self.n, self.size))  # (layers, accelerators), inf where it cannot run
        self._why: dict[tuple[int, int], str] = {}
        for a, caps in enumerate(self.caps):
            model = RateModel(caps)
            for i, layer in enumerate(layers):
                why = unsupported(layer, caps)
                if why is not None:
                    self._why[i, a] = why
                self.ms[i, a] = math.inf if why is not None else model.layer_s(layer) * 1e3
        # accelerators whose costs come (at least partly) from per-layer measurements on this device
        self.measured = tuple(n for n in self.names if any(ms is not None for ms in (measured or {}).get(n, ())))
        for name in self.measured:
            a = self.names.index(name)
            self.ms[:, a] = blend_measured(self.ms[:, a], (measured or {})[name])
        self.prefix = np.vstack([np.zeros(self.size), np.cumsum(np.where(np.isinf(self.ms), 0.0, self.ms), axis=0)])
        self.param_prefix = np.concatenate([[0.0], np.cumsum([float(layer.param_bytes) for layer in layers])])
        # lo[k, a]: the first start from which every layer up to boundary k runs on a (k when none does)
        self.lo = np.zeros((self.n + 1, self.size), dtype=np.int64)
        for a in range(self.size):
            last_bad = -1
            for k in range(1, self.n + 1):
                last_bad = k - 1 if math.isinf(self.ms[k - 1, a]) else last_bad
                self.lo[k, a] = last_bad + 1
        self.dispatch = np.array([dispatch_ms(caps) for caps in self.caps])
        self._producer, self._last_read, sizes = _lifetimes(profile)
        self.boundary_bytes = np.zeros(self.n + 1)  # (n + 1,) bytes crossing boundary k
        for name, size in sizes.items():
            if name in self._last_read:
                self.boundary_bytes[self._producer[name] + 1 : self._last_read[name] + 1] += size
        self.cut_bytes = self.boundary_bytes[1:]  # cut between layers i and i + 1
        self.input_bytes = float(self.boundary_bytes[0])
        # A boundary crossed by a tensor whose shape the profile could not infer cannot be cut: the
        # segment model would need a declared shape for it (some runtimes refuse dynamic rank).
        self.uncuttable = np.zeros(self.n + 1, dtype=bool)
        for name in sizes:
            info = profile.tensors.get(name)
            if name in self._last_read and info is not None and 0 in info.shape:
                self.uncuttable[self._producer[name] + 1 : self._last_read[name] + 1] = True

    def index(self, accelerator: str) -> int:
        return self.names.index(accelerator)

    def reason(self, layer: int, accelerator: str) -> str | None:
        """Why ``accelerator`` cannot run layer ``layer`` (None when it can)."""
        return self._why.get((layer, self.index(accelerator)))

    def segment_ms(self, start: int, stop: int, a: int) -> float:
        """Layers [start, stop) as one call on accelerator index ``a`` (inf when it cannot run them)."""
        if start < self.lo[stop, a]:
            return math.inf
        compute = float(self.prefix[stop, a] - self.prefix[start, a])
        params = float(self.param_prefix[stop] - self.param_prefix[start])
        return compute + float(self.dispatch[a]) + streaming_ms(params, self.caps[a])

    def segments_ending(self, stop: int, a: int) -> np.ndarray:
        """segment_ms(start, stop, a) for every start in [lo[stop, a], stop): shape (stop - lo,)."""
        lo = int(self.lo[stop, a])
        compute = self.prefix[stop, a] - self.prefix[lo:stop, a]
        params = self.param_prefix[stop] - self.param_prefix[lo:stop]
        caps = self.caps[a]
        stream = np.zeros_like(params)
        if caps.on_chip_memory_bytes is not None:
            stream = np.array([streaming_ms(float(p), caps) for p in params])
        result: np.ndarray = compute + self.dispatch[a] + stream
        return result

    def transfer_ms(self, boundary: int, src: int | None, dst: int | None) -> float:
        """Moving what crosses ``boundary`` from accelerator index ``src`` to ``dst`` (None: the host)."""
        if src is not None and dst is not None and self.uncuttable[boundary]:
            return math.inf
        return transfer_ms(
            float(self.boundary_bytes[boundary]),
            None if src is None else self.caps[src],
            None if dst is None else self.caps[dst],
        )

    def tensors_in(self, start: int, stop: int) -> tuple[str, ...]:
        """Activations layers [start, stop) read that were produced before ``start`` (or are model inputs)."""
        names = (t for layer in self.profile.layers[start:stop] for t in layer.inputs)
        return tuple(dict.fromkeys(t for t in names if self._producer.get(t, -1) < start))

    def tensors_out(self, start: int, stop: int) -> tuple[str, ...]:
        """Activations layers [start, stop) produce that later layers or the caller read."""
        names = (t for layer in self.profile.layers[start:stop] for t in layer.outputs)
        return tuple(dict.fromkeys(t for t in names if self._last_read.get(t, -1) >= stop))


def _lifetimes(profile: ModelProfile) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """(producer index, last reader index, bytes) per activation tensor; the host is -1 and n."""
    n = len(profile.layers)
    producer = {t.name: -1 for t in profile.inputs}
    sizes = {t.name: float(t.bytes) for t in (*profile.inputs, *profile.outputs)}
    last_read: dict[str, int] = {}
    for i, layer in enumerate(profile.layers):
        for name in layer.outputs:
            producer[name] = i
            sizes.setdefault(name, layer.output_bytes / max(len(layer.outputs), 1))
        for name in layer.inputs:
            producer.setdefault(name, -1)  # read but produced by no layer: it comes from the host
            sizes.setdefault(name, layer.input_bytes / max(len(layer.inputs), 1))
            last_read[name] = i
    for t in profile.outputs:
        last_read[t.name] = n
        producer.setdefault(t.name, -1)
    sizes.update({name: float(t.bytes) for name, t in profile.tensors.items()})
    return producer, last_read, sizes
