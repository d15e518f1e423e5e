"""MobileNetV1 and V2 (1.0, 224) written out as TFLite with seeded random weights (no downloads).

Built the way the TFLite converter writes them: batch normalisation folded into each convolution's
bias, ReLU6 fused into the convolution, SAME padding, global average pooling as a 7x7 AVERAGE_POOL_2D,
a FULLY_CONNECTED classifier over 1000 classes and a SOFTMAX. ``storage="float16"`` stores every
weight and bias as float16 with a DEQUANTIZE before its consumer, as post-training fp16 quantization does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accelerators.tflite_build import (
    ModelBuilder,
    add,
    average_pool,
    conv2d,
    depthwise_conv2d,
    fully_connected,
    softmax,
)

# (output channels, stride) of the 13 depthwise-separable blocks of MobileNetV1 (Howard et al. 2017, table 1)
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1),
)  # fmt: skip
# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al. 2018, table 2)
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


class _Net:
    """A ModelBuilder with seeded He-initialised weights and generated layer names."""

    def __init__(self, storage: str, seed: int) -> None:
        self.b = ModelBuilder("edge-agent test net")
        self.rng = np.random.default_rng(seed)
        self.storage = storage
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def weights(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(self, x: int, cout: int, k: int, stride: int = 1, relu6: bool = True) -> int:
        cin = self.b.shape(x)[-1]
        w = self.weights((cout, k, k, cin), cin * k * k)  # (Cout, kh, kw, Cin)
        bias = np.zeros(cout, np.float32)
        act = "RELU6" if relu6 else "NONE"
        return conv2d(self.b, x, w, bias, self.name("conv"), stride, activation=act, storage=self.storage)

    def depthwise(self, x: int, stride: int) -> int:
        c = self.b.shape(x)[-1]
        w = self.weights((1, 3, 3, c), 9)  # (1, kh, kw, C)
        bias = np.zeros(c, np.float32)
        return depthwise_conv2d(self.b, x, w, bias, self.name("dw"), stride, activation="RELU6", storage=self.storage)

    def classifier(self, x: int, classes: int = 1000) -> int:
        pooled = average_pool(self.b, x, 7, 1, self.name("pool"))  # (1, 1, 1, C)
        features = self.b.shape(pooled)[-1]
        w = self.weights((classes, features), features)  # (classes, features)
        logits = fully_connected(self.b, pooled, w, np.zeros(classes, np.float32), "logits", storage=self.storage)
        return softmax(self.b, logits, "probabilities")


def mobilenet_v1(path: Path, storage: str = "float32", seed: int = 0) -> Path:
    """MobileNetV1 1.0 224 (published: 569M MACs, 4.2M parameters)."""
    net = _Net(storage, seed)
    image = net.b.tensor("input", (1, 224, 224, 3))
    x = net.conv(image, 32, 3, 2)
    for cout, stride in MOBILENET_V1_BLOCKS:
        x = net.conv(net.depthwise(x, stride), cout, 1)
    path.write_bytes(net.b.build([image], [net.classifier(x)]))
    return path


def mobilenet_v2(path: Path, storage: str = "float32", seed: int = 0) -> Path:
    """MobileNetV2 1.0 224 (published: 300M MACs, 3.4M parameters)."""
    net = _Net(storage, seed)
    image = net.b.tensor("input", (1, 224, 224, 3))
    x = net.conv(image, 32, 3, 2)
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for i in range(n):
            stride, cin = s if i == 0 else 1, net.b.shape(x)[-1]
            y = net.conv(x, cin * t, 1) if t != 1 else x  # expand
            y = net.conv(net.depthwise(y, stride), c, 1, relu6=False)  # project, linear bottleneck
            x = add(net.b, x, y, net.name("add")) if stride == 1 and cin == c else y
    x = net.conv(x, 1280, 1)
    path.write_bytes(net.b.build([image], [net.classifier(x)]))
    return path
