"""The TFLite -> ONNX converter (scripts/tflite_to_onnx.py) and the model zoo (scripts/make_zoo.py).

The converter tests run always: on the committed BlazeFace model and on a small model built here that
uses every other op the converter translates, each run by LiteRT and onnxruntime on the same input.
The zoo test downloads ~70 MB of wheels, so it runs only with EDGE_AGENT_ZOO=1 (and -m slow is not
deselected); EDGE_AGENT_ZOO_CACHE names a folder to keep the wheels in between runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest

from accelerators.errors import ModelLoadError
from accelerators.tflite_build import ModelBuilder, conv2d, depthwise_conv2d, enum, fully_connected, transpose_conv
from tests.conftest import ASSETS, FACE_MODEL, ROOT


def _script(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # make_zoo imports the converter by this name
    spec.loader.exec_module(module)
    return module


tflite_to_onnx = _script("tflite_to_onnx")


def _run_litert(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], feeds[d["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def _run_onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _assert_close(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert set(got) == set(ref)
    for name, r in ref.items():
        scale = max(float(np.abs(r).max()), 1e-3)
        np.testing.assert_allclose(got[name], r, rtol=1e-3, atol=1e-4 * scale, err_msg=name)


def _photo(shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    from PIL import Image

    _, h, w, _ = shape
    pixels = np.asarray(Image.open(ASSETS / "images" / "astronaut.jpg").convert("RGB").resize((w, h)), np.float32)
    return (lo + (hi - lo) * pixels / 255.0)[None]  # (1, h, w, 3)


def test_converted_face_detector_matches_litert_and_openvino(tmp_path: Path) -> None:
    out = tmp_path / "face.onnx"
    tflite_to_onnx.convert(FACE_MODEL, out)
    model = onnx.load(str(out))
    # same names and NHWC layout at the boundary as the TFLite model, so one feed runs both
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input] == [
        ("input", [1, 128, 128, 3])
    ]
    assert [o.name for o in model.graph.output] == ["regressors", "classificators"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 37 and ops.count("Transpose") <= 5  # NCHW inside, no transpose per layer
    assert not model.graph.node[0].op_type.startswith("Dequantize")  # fp16 weights folded to float32

    feeds = {"input": _photo((1, 128, 128, 3), -1.0, 1.0)}
    ref = _run_litert(FACE_MODEL, feeds)
    got = _run_onnxruntime(out, feeds)
    _assert_close(ref, got)
    assert float(got["classificators"].max()) > 0  # the astronaut's face is found: a real, not a degenerate, input

    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    _assert_close(got, {o.get_any_name(): np.asarray(result[o]) for o in compiled.outputs})


def _every_op_model(path: Path) -> None:
    """A small float model with each op the converter handles beyond BlazeFace's, at awkward sizes."""
    rng = np.random.default_rng(1)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    b = ModelBuilder()
    x = b.tensor("image", (1, 16, 16, 3))
    c1 = conv2d(b, x, w(8, 3, 3, 3), w(8), "c1", stride=2, activation="RELU6", storage="float16")  # pads (0, 1)
    d1 = depthwise_conv2d(b, c1, w(1, 3, 3, 8), w(8), "d1")  # (1, 8, 8, 8)
    p1 = b.tensor("p1", (1, 8, 8, 8))
    b.op("PRELU", [d1, b.constant("alpha", np.abs(w(1, 1, 8)))], [p1])
    hs = b.tensor("hs", (1, 8, 8, 8))
    b.op("HARD_SWISH", [p1], [hs])
    ap = b.tensor("ap", (1, 4, 4, 8))
    b.op("AVERAGE_POOL_2D", [hs], [ap], "Pool2DOptions", padding=enum("Padding", "SAME"), strideW=2, strideH=2,
         filterWidth=3, filterHeight=3)  # fmt: skip
    up = b.tensor("up", (1, 8, 8, 8))
    size = b.constant("size", np.array([8, 8], np.int32))
    b.op("RESIZE_BILINEAR", [ap, size], [up], "ResizeBilinearOptions", halfPixelCenters=True)
    cat = b.tensor("cat", (1, 8, 8, 16))
    b.op("CONCATENATION", [up, hs], [cat], "ConcatenationOptions", axis=3)
    tc = transpose_conv(b, cat, w(4, 3, 3, 16), w(4), "tc")  # (1, 16, 16, 4)
    d2s = b.tensor("d2s", (1, 16, 16, 4))
    b.op("DEPTH_TO_SPACE", [cat], [d2s], "DepthToSpaceOptions", blockSize=2)
    mul = b.tensor("mul", (1, 16, 16, 4))
    b.op("MUL", [d2s, tc], [mul], "MulOptions")
    gate = b.tensor("gate", (1, 16, 16, 4))
    b.op("LOGISTIC", [mul], [gate])
    padded = b.tensor("padded", (1, 18, 18, 4))
    b.op("PAD", [gate, b.constant("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))], [padded])
    mp = b.tensor("mp", (1, 9, 9, 4))
    b.op("MAX_POOL_2D", [padded], [mp], "Pool2DOptions", padding=enum("Padding", "VALID"), strideW=2, strideH=2,
         filterWidth=2, filterHeight=2)  # fmt: skip
    mean = b.tensor("mean", (1, 4))
    b.op("MEAN", [mp, b.constant("axes", np.array([1, 2], np.int32))], [mean], "ReducerOptions", keepDims=False)
    fc = fully_connected(b, mp, w(10, 9 * 9 * 4), w(10), "fc")  # flattens NHWC order: layout must be right
    probs = b.tensor("probs", (1, 10))
    b.op("SOFTMAX", [fc], [probs], "SoftmaxOptions", beta=1.0)
    path.write_bytes(b.build([x], [probs, mean, gate]))


def test_every_supported_op_matches_litert(tmp_path: Path) -> None:
    tflite, out = tmp_path / "ops.tflite", tmp_path / "ops.onnx"
    _every_op_model(tflite)
    tflite_to_onnx.convert(tflite, out)
    feeds = {"image": np.random.default_rng(2).normal(0, 1, (1, 16, 16, 3)).astype(np.float32)}
    _assert_close(_run_litert(tflite, feeds), _run_onnxruntime(out, feeds))


def test_unsupported_op_and_hostile_file_fail_with_one_line(tmp_path: Path) -> None:
    b = ModelBuilder()
    x, y = b.tensor("x", (1, 4)), b.tensor("y", (1, 4))
    b.op("SQUARE", [x], [y])
    tflite = tmp_path / "square.tflite"
    tflite.write_bytes(b.build([x], [y]))
    with pytest.raises(tflite_to_onnx.UnsupportedOp, match="SQUARE"):
        tflite_to_onnx.convert(tflite, tmp_path / "square.onnx")
    hostile = tmp_path / "hostile.tflite"
    hostile.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(ModelLoadError) as info:
        tflite_to_onnx.convert(hostile, tmp_path / "hostile.onnx")
    assert str(hostile) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "hostile.onnx").exists()


def _level(fmt: int, size: int = 0, segments: list[int] | None = None, indices: list[int] | None = None) -> Any:
    return SimpleNamespace(
        format=fmt,
        denseSize=size,
        arraySegments=SimpleNamespace(values=segments),
        arrayIndices=SimpleNamespace(values=indices),
    )


def test_densify_csr_and_block_sparse() -> None:
    # rows dense, columns CSR: row 0 has column 2, row 1 nothing, row 2 columns 0 and 3
    csr = SimpleNamespace(
        traversalOrder=[0, 1], blockMap=None, dimMetadata=[_level(0, 3), _level(1, 0, [0, 1, 1, 3], [2, 0, 3])]
    )
    values = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(
        tflite_to_onnx.densify(csr, values, (3, 4)), [[0, 0, 1, 0], [0, 0, 0, 0], [2, 0, 0, 3]]
    )
    # 2x2 blocks: block row 0 keeps block column 0, block row 1 keeps block column 1
    blocks = SimpleNamespace(
        traversalOrder=[0, 1, 2, 3],
        blockMap=[0, 1],
        dimMetadata=[_level(0, 2), _level(1, 0, [0, 1, 2], [0, 1]), _level(0, 2), _level(0, 2)],
    )
    dense = tflite_to_onnx.densify(blocks, np.array([1, 2, 3, 4, 0, 0, 5, 6], np.float32), (4, 4))
    np.testing.assert_array_equal(dense, [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 0], [0, 0, 5, 6]])


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert tflite_to_onnx.same_pads(16, 3, 2) == (0, 1)
    assert tflite_to_onnx.same_pads(15, 3, 2) == (1, 1)
    assert tflite_to_onnx.same_pads(8, 1, 1) == (0, 0)


# --- the zoo itself: downloads, so opt-in --------------------------------------------------------


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, list[dict[str, Any]]]:
    if os.environ.get("EDGE_AGENT_ZOO") != "1":
        pytest.skip("set EDGE_AGENT_ZOO=1 to download the pinned wheels and build the model zoo")
    make_zoo = _script("make_zoo")
    out = tmp_path_factory.mktemp("zoo")
    cache = Path(os.environ.get("EDGE_AGENT_ZOO_CACHE") or tmp_path_factory.mktemp("wheels"))
    entries = make_zoo.build(out, cache, threads=2, runs=1)
    return make_zoo, out, entries


@pytest.mark.slow
def test_zoo_models_agree_across_runtimes(zoo: tuple[ModuleType, Path, list[dict[str, Any]]]) -> None:
    make_zoo, out, entries = zoo
    assert [e["name"] for e in entries] == [m.name for m in make_zoo.ZOO]
    assert {"classifier", "detector", "segmentation", "audio", "ocr"} <= {e["kind"] for e in entries}
    assert json.loads((out / "zoo.json").read_text()) == entries
    for entry in entries:
        assert make_zoo.failures(entry) == []
        assert ("onnxruntime_vs_litert" in entry["agreement"]) == (entry["tflite"] is not None)
        assert make_zoo.sha256((out / entry["onnx"]).read_bytes()) == entry["onnx_sha256"]
        if entry["tflite"]:
            assert make_zoo.sha256((out / entry["tflite"]).read_bytes()) == entry["sha256"]
        graph = onnx.load(str(out / entry["onnx"])).graph
        assert not any(n.op_type in ("If", "Loop", "Scan") for n in graph.node), entry["name"]  # splittable


@pytest.mark.slow
def test_zoo_rebuild_reuses_what_is_there(zoo: tuple[ModuleType, Path, list[dict[str, Any]]]) -> None:
    make_zoo, out, _ = zoo

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".onnx", ".tflite")}

    before = stamps()
    again = make_zoo.build(out, out / "no-wheels-needed", threads=1, runs=1, only=["silero_vad", "selfie_segmentation"])
    assert [e["name"] for e in again] == ["selfie_segmentation", "silero_vad"]
    assert not (out / "no-wheels-needed").exists()  # nothing was downloaded
    assert stamps() == before
