#!/usr/bin/env python3
"""Build the demo assets under agent/demo/assets from pinned PyPI wheels.

Nothing here talks to a model hub. Two kinds of asset are produced:

* ``face_detection_short_range.tflite``: the BlazeFace short-range face detector that the
  ``mediapipe==0.10.21`` wheel carries, plus sample photos that the ``scikit-image==0.26.0`` wheel
  carries (the astronaut and cameraman portraits have one face each; coffee and the cat have none).
  Both wheels are downloaded with ``pip download --no-deps`` and read as zip files: neither package
  is installed.
* ``digits/digits_mlp.onnx``: a small classifier trained here with numpy on the 8x8 handwritten
  digits data set that the ``scikit-learn==1.5.2`` wheel ships (``digits.csv.gz``), exported to ONNX
  with the ``onnx`` package, plus one held-out sample image per digit.

Every extracted file is checked against the SHA-256 recorded below, so a different wheel build
cannot slip in silently. The digits model is retrained each run; its held-out accuracy is printed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "agent" / "demo" / "assets"

MEDIAPIPE = "mediapipe==0.10.21"
SKIMAGE = "scikit-image==0.26.0"
SKLEARN = "scikit-learn==1.5.2"

# member of the wheel -> (file name under assets/, sha256 of the member)
FACE_MODEL = (
    "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_short_range.tflite",
)
PHOTOS = {
    "skimage/data/astronaut.png": "astronaut.jpg",
    "skimage/data/camera.png": "camera.jpg",
    "skimage/data/coffee.png": "coffee.jpg",
    "skimage/data/chelsea.png": "chelsea.jpg",
}
DIGITS_CSV = "sklearn/datasets/data/digits.csv.gz"
EXPECTED_SHA256 = {
    FACE_MODEL[0]: "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
}


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) and return its path."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(dest),
            requirement,
        ],
        check=True,
    )
    name = requirement.split("==", maxsplit=1)[0].replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name)]
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {requirement} in {dest}, found {wheels}")
    return wheels[0]


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    want = EXPECTED_SHA256.get(member)
    got = hashlib.sha256(data).hexdigest()
    if want is not None and got != want:
        raise SystemExit(f"{member} in {wheel.name}: sha256 {got}, expected {want}")
    return data


def write_photos(wheel: Path, out: Path) -> None:
    from PIL import Image

    for member, name in PHOTOS.items():
        img = Image.open(io.BytesIO(read_member(wheel, member)))
        img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
        img.save(out / "images" / name, quality=90)


def train_digits(csv_gz: bytes) -> tuple[list[np.ndarray], float, np.ndarray, np.ndarray]:
    """Train a 64-32-10 MLP with full-batch Adam; deterministic for a given numpy version."""
    table = np.loadtxt(io.StringIO(gzip.decompress(csv_gz).decode()), delimiter=",")
    x = (table[:, :64] / 16.0).astype(np.float32)  # (1797, 64) ink in [0, 1]
    y = table[:, 64].astype(np.int64)  # (1797,)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    split = int(0.8 * len(x))
    tr, te = order[:split], order[split:]

    sizes = [64, 32, 10]
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params.append(rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(10, dtype=np.float32)[y[tr]]
    lr, b1, b2 = 0.01, 0.9, 0.999
    for step in range(1, 601):
        w1, c1, w2, c2 = params
        h = np.maximum(x[tr] @ w1 + c1, 0)  # (n, 32)
        z = h @ w2 + c2  # (n, 10)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) / len(tr)
        dh = (dz @ w2.T) * (h > 0)
        grads = [x[tr].T @ dh + 1e-4 * w1, dh.sum(0), h.T @ dz + 1e-4 * w2, dz.sum(0)]
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] -= lr * (m[i] / (1 - b1**step)) / (np.sqrt(v[i] / (1 - b2**step)) + 1e-8)
    w1, c1, w2, c2 = params
    pred = (np.maximum(x[te] @ w1 + c1, 0) @ w2 + c2).argmax(1)
    accuracy = float((pred == y[te]).mean())
    return params, accuracy, x[te], y[te]


def export_digits_onnx(params: list[np.ndarray], path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, c1, w2, c2 = params
    nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),  # (N, 64)
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["hidden_pre"]),  # (N, 32)
        helper.make_node("Relu", ["hidden_pre"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),  # (N, 10)
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(c1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(c2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-agent")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_digit_images(x_test: np.ndarray, y_test: np.ndarray, out: Path) -> None:
    """One held-out sample per digit, as dark ink on white paper, upscaled 4x (nearest)."""
    from PIL import Image

    for digit in range(10):
        idx = int(np.flatnonzero(y_test == digit)[0])
        ink = x_test[idx].reshape(8, 8)
        paper = (255 - np.round(ink * 255)).astype(np.uint8)
        img = Image.fromarray(paper, mode="L").resize((32, 32), Image.Resampling.NEAREST)
        img.save(out / "images" / f"digit_{digit}.png")


def build(out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "digits" / "images").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        mp = fetch_wheel(MEDIAPIPE, cache)
        (out / FACE_MODEL[1]).write_bytes(read_member(mp, FACE_MODEL[0]))
        write_photos(fetch_wheel(SKIMAGE, cache), out)
        params, accuracy, x_test, y_test = train_digits(read_member(fetch_wheel(SKLEARN, cache), DIGITS_CSV))
    print(f"digits MLP held-out accuracy: {accuracy:.3f}")
    if accuracy < 0.9:
        raise SystemExit("digits model trained badly; refusing to write it")
    export_digits_onnx(params, out / "digits" / "digits_mlp.onnx")
    write_digit_images(x_test, y_test, out / "digits")
    (out / "digits" / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    (out / "face_labels.txt").write_text("face\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="where to write (default: %(default)s)")
    args = parser.parse_args()
    build(args.out)
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(args.out)}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
