"""Hand-built layer profiles and capabilities for the planner tests (pure logic, no model files)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from accelerators.base import Capabilities, Family
from accelerators.catalog import EDGETPU_OPS, EDGETPU_USB
from agent.models.ir import Layer, ModelProfile, TensorInfo

MIB = 1024 * 1024
OPS = {
    Family.CONV: "CONV_2D",
    Family.POINTWISE_CONV: "CONV_2D",
    Family.DEPTHWISE_CONV: "DEPTHWISE_CONV_2D",
    Family.FULLY_CONNECTED: "FULLY_CONNECTED",
    Family.ELEMENTWISE: "ADD",
    Family.NORMALIZATION: "SOFTMAX",
    Family.RESIZE: "RESIZE_BILINEAR",
    Family.POOLING: "AVERAGE_POOL_2D",
}


@dataclass
class Spec:
    """One layer to build: what it reads (tensor names) and what it costs."""

    family: Family = Family.CONV
    macs: int = 0
    param_bytes: int = 0
    out_bytes: int = 1000
    reads: tuple[str, ...] = ()  # empty: the previous layer's output (or the model input)
    op: str = ""
    dtype: str = "float32"


def build(
    specs: Sequence[Spec], input_bytes: int = 1000, fmt: str = "tflite", outputs: Sequence[str] = ()
) -> ModelProfile:
    """Layer i writes tensor ``t{i}``; the model input is ``x``; the output is the last layer's tensor."""
    sizes = {"x": input_bytes}
    layers = []
    for i, spec in enumerate(specs):
        reads = spec.reads or (f"t{i - 1}" if i else "x",)
        name = f"t{i}"
        sizes[name] = spec.out_bytes
        layers.append(
            Layer(
                index=i,
                name=f"layer{i}",
                op=spec.op or OPS.get(spec.family, "ADD"),
                family=spec.family,
                inputs=reads,
                outputs=(name,),
                macs=spec.macs,
                params=spec.param_bytes,
                param_bytes=spec.param_bytes,
                input_bytes=sum(sizes[r] for r in reads),
                output_bytes=spec.out_bytes,
                dtype=spec.dtype,
            )
        )
    tensors = {name: TensorInfo(name, (size,), "uint8") for name, size in sizes.items()}
    outs = tuple(outputs) or (f"t{len(specs) - 1}",)
    return ModelProfile(
        path="test.model",
        format=fmt,
        digest="0" * 64,
        inputs=(tensors["x"],),
        outputs=tuple(tensors[o] for o in outs),
        layers=tuple(layers),
        tensors=tensors,
    )


def cpu(name: str = "cpu", macs_per_s: float = 50e9, bandwidth: float = 10e9, **changes: object) -> Capabilities:
    caps = Capabilities(
        name=name,
        kind="cpu",
        formats=frozenset({".tflite", ".onnx"}),
        dtypes=frozenset({"float32", "int8", "uint8"}),
        peak_ops_per_s={"float32": macs_per_s, "int8": 2 * macs_per_s, "uint8": 2 * macs_per_s},
        memory_bandwidth_bytes_per_s=bandwidth,
    )
    return _replace(caps, changes)


def device(
    name: str = "gpu", macs_per_s: float = 500e9, link: float = 2e9, dispatch_s: float = 0.2e-3, **changes: object
) -> Capabilities:
    """A discrete accelerator with its own memory, reached over a link."""
    caps = Capabilities(
        name=name,
        kind="gpu",
        formats=frozenset({".tflite", ".onnx"}),
        dtypes=frozenset({"float32", "float16", "int8", "uint8"}),
        peak_ops_per_s={"float32": macs_per_s, "float16": 2 * macs_per_s, "int8": 2 * macs_per_s},
        memory_bandwidth_bytes_per_s=100e9,
        transfer_bytes_per_s=link,
        dispatch_overhead_s=dispatch_s,
    )
    return _replace(caps, changes)


TPU_OPS = EDGETPU_OPS - {"SOFTMAX", "RESIZE_BILINEAR"}


def edgetpu(name: str = "edgetpu-usb0", **changes: object) -> Capabilities:
    """The catalog's USB Edge TPU, with an op list missing SOFTMAX and RESIZE_BILINEAR."""
    return EDGETPU_USB.capabilities(name, {".tflite"}, supported_ops=TPU_OPS, **changes)


def _replace(caps: Capabilities, changes: dict[str, object]) -> Capabilities:
    return dataclasses.replace(caps, **changes) if changes else caps  # type: ignore[arg-type]


def random_profile(rng: np.random.Generator, n: int, dtype: str = "int8") -> ModelProfile:
    """A chain of ``n`` layers with random costs, families and a skip connection or two."""
    families = [Family.CONV, Family.DEPTHWISE_CONV, Family.FULLY_CONNECTED, Family.ELEMENTWISE, Family.NORMALIZATION]
    specs = []
    for i in range(n):
        family = families[int(rng.integers(len(families)))]
        mac = family in (Family.CONV, Family.DEPTHWISE_CONV, Family.FULLY_CONNECTED)
        reads: tuple[str, ...] = ()
        if i >= 3 and rng.random() < 0.3:  # a skip connection from a few layers back
            reads = (f"t{i - 1}", f"t{i - int(rng.integers(2, i + 1))}")
        specs.append(
            Spec(
                family=family,
                macs=int(rng.integers(1e6, 3e8)) if mac else 0,
                param_bytes=int(rng.integers(1e3, 4e6)) if mac else 0,
                out_bytes=int(rng.integers(1e3, 2e6)),
                reads=reads,
                dtype=dtype,
            )
        )
    return build(specs, input_bytes=int(rng.integers(1e3, 1e6)))
