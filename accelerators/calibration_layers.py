"""The representative layer of each family that calibration times, independent of model format.

Each builder (ONNX: ``calibration_onnx.py``, TFLite: ``calibration_tflite.py``) turns a spec into a
one-layer model file. Shapes are given channels-last (N, H, W, C); the ONNX builder transposes to
NCHW. Sizes are those of a mid-network layer of a mobile CNN, big enough to time above the
dispatch overhead and small enough that a whole calibration takes seconds per backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerators.base import Family


@dataclass(frozen=True)
class LayerSpec:
    family: Family
    input_shape: tuple[
        int, ...
    ]  # NHWC for images, (batch, rows, cols) for matmul, (seq, batch, features) for recurrent
    out_channels: int = 0  # conv/fc/recurrent hidden size
    kernel: int = 1
    stride: int = 1
    macs: int = 0  # multiply-accumulates of the layer (0 for memory-bound families)
    moved_bytes: int = 0  # float32 bytes read and written: activations + parameters


def _conv(h: int, w: int, cin: int, cout: int, k: int, stride: int = 1) -> tuple[int, int]:
    oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
    macs = oh * ow * cout * cin * k * k
    moved = 4 * (h * w * cin + oh * ow * cout + cout * cin * k * k + cout)
    return macs, moved


def _specs() -> dict[Family, LayerSpec]:
    conv = _conv(56, 56, 64, 64, 3)
    pointwise = _conv(28, 28, 256, 256, 1)
    dw_macs, dw_out = 56 * 56 * 128 * 9, 56 * 56 * 128
    tconv_macs = (
        56 * 56 * 64 * 64 * 9
    )  # stride-2 transpose of a 28x28 map: each output pixel gets k*k/4 taps on average x4
    elems = 56 * 56 * 128
    return {
        Family.CONV: LayerSpec(Family.CONV, (1, 56, 56, 64), 64, 3, 1, *conv),
        Family.DEPTHWISE_CONV: LayerSpec(
            Family.DEPTHWISE_CONV, (1, 56, 56, 128), 128, 3, 1, dw_macs, 4 * (2 * dw_out + 128 * 9 + 128)
        ),
        Family.POINTWISE_CONV: LayerSpec(Family.POINTWISE_CONV, (1, 28, 28, 256), 256, 1, 1, *pointwise),
        Family.CONV_TRANSPOSE: LayerSpec(
            Family.CONV_TRANSPOSE,
            (1, 28, 28, 64),
            64,
            3,
            2,
            tconv_macs // 4,
            4 * (28 * 28 * 64 + elems // 2 + 64 * 64 * 9),
        ),
        Family.FULLY_CONNECTED: LayerSpec(
            Family.FULLY_CONNECTED, (1, 1024), 1000, 1, 1, 1024 * 1000, 4 * (1024 + 1000 + 1024 * 1000 + 1000)
        ),
        # attention scores: (heads, tokens, dim) x (heads, dim, tokens)
        Family.MATMUL: LayerSpec(
            Family.MATMUL, (4, 128, 64), 128, 1, 1, 4 * 128 * 64 * 128, 4 * (2 * 4 * 128 * 64 + 4 * 128 * 128)
        ),
        # LSTM over 16 steps, batch 1, 128 features, 128 hidden: 4 gates x (input + hidden) x hidden per step
        Family.RECURRENT: LayerSpec(
            Family.RECURRENT, (16, 1, 128), 128, 1, 1, 16 * 4 * (128 + 128) * 128, 4 * (16 * 128 * 2 + 4 * 256 * 128)
        ),
        Family.ELEMENTWISE: LayerSpec(Family.ELEMENTWISE, (1, 56, 56, 128), moved_bytes=4 * 3 * elems),  # add of two
        Family.NORMALIZATION: LayerSpec(
            Family.NORMALIZATION, (4, 128, 128), moved_bytes=4 * 2 * 4 * 128 * 128
        ),  # softmax
        Family.POOLING: LayerSpec(
            Family.POOLING, (1, 56, 56, 128), kernel=2, stride=2, moved_bytes=4 * (elems + elems // 4)
        ),
        Family.RESIZE: LayerSpec(Family.RESIZE, (1, 28, 28, 128), moved_bytes=4 * (elems // 4 + elems)),  # bilinear x2
        Family.RESHAPE: LayerSpec(
            Family.RESHAPE, (1, 56, 56, 128), moved_bytes=4 * 2 * elems
        ),  # NHWC -> NCHW transpose
    }


SPECS: dict[Family, LayerSpec] = _specs()
