"""TFLite layer profiles: the demo BlazeFace model checked against figures computed here from the
generated reader and LiteRT's own tensor shapes, reference MobileNets against published figures,
dynamic dimensions, constant folding, and broken files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accelerators.base import Family
from accelerators.litert import interpreter_api
from accelerators.tflite_build import ModelBuilder, fully_connected
from agent.errors import ModelError
from agent.models.tflite_profile import profile_tflite
from tests.conftest import FACE_MODEL
from tests.models.nets_tflite import mobilenet_v1, mobilenet_v2

schema_fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if k.isupper()}


def repack(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nets")
    return {
        "v1": mobilenet_v1(folder / "mobilenet_v1.tflite"),
        "v1_fp16": mobilenet_v1(folder / "mobilenet_v1_fp16.tflite", storage="float16"),
        "v2": mobilenet_v2(folder / "mobilenet_v2.tflite"),
    }


def test_blazeface_against_an_independent_count() -> None:
    profile = profile_tflite(FACE_MODEL)
    model = schema_fb.ModelT.InitFromPackedBuf(FACE_MODEL.read_bytes(), 0)
    graph = model.subgraphs[0]
    interpreter = interpreter_api()[0](model_path=str(FACE_MODEL))
    shapes = {d["index"]: tuple(int(v) for v in d["shape"]) for d in interpreter.get_tensor_details()}

    def op_name(op: Any) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]

    def stored(i: int) -> int:
        data = model.buffers[graph.tensors[i].buffer].data
        return 0 if data is None else len(data)

    constant = {i for i in range(len(graph.tensors)) if stored(i)}
    dequantized = [op for op in graph.operators if op_name(op) == "DEQUANTIZE" and op.inputs[0] in constant]
    assert dequantized, "the demo model stores float16 weights behind DEQUANTIZE"
    macs = 0
    for op in graph.operators:
        out = int(np.prod(shapes[op.outputs[0]]))
        kernel = shapes[op.inputs[1]] if len(op.inputs) > 1 else ()
        if op_name(op) == "CONV_2D":  # (Cout, kh, kw, Cin)
            macs += out * kernel[1] * kernel[2] * kernel[3]
        elif op_name(op) == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C)
            macs += out * kernel[1] * kernel[2]
    assert profile.total_macs == macs
    assert profile.total_params == sum(int(np.prod(shapes[i])) for i in constant)
    assert profile.total_param_bytes == sum(stored(i) for i in constant)
    assert len(profile.layers) == len(graph.operators) - len(dequantized)
    families = profile.by_family()
    assert families["conv"][0] + families["pointwise_conv"][0] == 21 and families["depthwise_conv"][0] == 16
    assert all(layer.dtype == "float32" for layer in profile.layers)
    assert profile.digest == hashlib.sha256(FACE_MODEL.read_bytes()).hexdigest()
    assert [(t.name, t.shape) for t in profile.inputs] == [
        (d["name"], tuple(int(v) for v in d["shape"])) for d in interpreter.get_input_details()
    ]
    assert {t.name for t in profile.outputs} == {d["name"] for d in interpreter.get_output_details()}
    weights = {graph.tensors[i].name.decode() for i in constant}
    assert "input" in profile.tensors and not weights & set(profile.tensors)
    assert any("folded" in note for note in profile.notes)


def test_mobilenets_match_published_figures(nets: dict[str, Path]) -> None:
    v1, v2 = profile_tflite(nets["v1"]), profile_tflite(nets["v2"])
    assert v1.total_macs == pytest.approx(569e6, rel=0.01)
    assert v1.total_params == pytest.approx(4.2e6, rel=0.01)
    assert v2.total_macs == pytest.approx(300e6, rel=0.01)
    assert 3.4e6 <= v2.total_params <= 3.5e6
    assert v1.by_family()["depthwise_conv"][0] == 13 and v1.by_family()["pointwise_conv"][0] == 13
    assert v2.by_family()["depthwise_conv"][0] == 17 and v2.by_family()["elementwise"][0] == 10
    assert v1.total_param_bytes == 4 * v1.total_params


def test_fp16_weights_same_work_half_the_bytes(nets: dict[str, Path]) -> None:
    full, half = profile_tflite(nets["v1"]), profile_tflite(nets["v1_fp16"])
    assert [(layer.op, layer.macs, layer.params) for layer in half.layers] == [
        (layer.op, layer.macs, layer.params) for layer in full.layers
    ]
    assert half.total_param_bytes * 2 == full.total_param_bytes
    assert all(layer.dtype == "float32" for layer in half.layers)
    interpreter = interpreter_api()[0](model_path=str(nets["v1_fp16"]))
    interpreter.allocate_tensors()
    image = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert probabilities.shape == (1, 1000) and probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def _dynamic_model(tmp_path: Path) -> Path:
    b = ModelBuilder()
    x = b.tensor("x", (1, 8, 8, 3), signature=(-1, 8, 8, 3))  # stored batch 1, dynamic
    y = b.tensor("y", (1, 8, 8, 4), signature=(-1, 8, 8, 4))
    weights, bias = b.constant("w", np.ones((4, 3, 3, 3), np.float32)), b.constant("b", np.zeros(4, np.float32))
    b.op("CONV_2D", [x, weights, bias], [y], "Conv2DOptions", strideW=1, strideH=1)
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(b.build([x], [y]))
    return path


def test_dynamic_batch_pinned_by_default_or_config(tmp_path: Path) -> None:
    path = _dynamic_model(tmp_path)
    default = profile_tflite(path)
    assert default.pinned == {"x:0": "1 (default)"}
    assert default.total_macs == 8 * 8 * 4 * 27 and default.inputs[0].shape == (1, 8, 8, 3)
    configured = profile_tflite(path, {"x": [4, 8, 8, 3]})
    assert configured.pinned == {"x:0": "4 (from config)"}
    assert configured.inputs[0].shape == (4, 8, 8, 3) and configured.outputs[0].shape == (4, 8, 8, 4)
    assert configured.total_macs == 4 * default.total_macs
    assert configured.layers[0].input_bytes == 4 * 8 * 8 * 3 * 4
    assert profile_tflite(path, default_dim=2).pinned == {"x:0": "2 (default)"}
    interpreter = interpreter_api()[0](model_path=str(path))  # and LiteRT takes the dynamic batch
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [4, 8, 8, 3])
    interpreter.allocate_tensors()
    interpreter.invoke()
    assert tuple(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape) == (4, 8, 8, 4)
    for wrong in ({"nope": [1, 8, 8, 3]}, {"x": [1, 8, 8]}, {"x": [1, 9, 8, 3]}, {"x": [0, 8, 8, 3]}):
        with pytest.raises(ModelError) as info:
            profile_tflite(path, wrong)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_dequantized_weight_shared_by_two_layers_counts_once(tmp_path: Path) -> None:
    b = ModelBuilder()
    x = b.tensor("x", (1, 16))
    w = b.weight("w", np.ones((16, 16), np.float32), "float16")  # one fp16 constant -> DEQUANTIZE
    h, y = b.tensor("h", (1, 16)), b.tensor("y", (1, 16))
    b.op("FULLY_CONNECTED", [x, w, -1], [h], "FullyConnectedOptions")
    b.op("FULLY_CONNECTED", [h, w, -1], [y], "FullyConnectedOptions")
    path = tmp_path / "shared.tflite"
    path.write_bytes(b.build([x], [y]))
    profile = profile_tflite(path)
    assert [(layer.op, layer.macs, layer.params, layer.param_bytes) for layer in profile.layers] == [
        ("FULLY_CONNECTED", 256, 256, 512),
        ("FULLY_CONNECTED", 256, 0, 0),
    ]
    assert profile.layers[1].inputs == ("h",) and profile.layers[0].input_bytes == 64


def test_batch_matmul_families_and_adjoint(tmp_path: Path) -> None:
    b = ModelBuilder()
    a, k = b.tensor("a", (2, 64, 8)), b.tensor("k", (2, 64, 8))  # a^T k: (2, 8, 64) x (2, 64, 8)
    scores = b.tensor("scores", (2, 8, 8))
    b.op("BATCH_MATMUL", [a, k], [scores], "BatchMatMulOptions", adjX=True)
    proj = b.constant("proj", np.ones((8, 5), np.float32))
    out = b.tensor("out", (2, 8, 5))
    b.op("BATCH_MATMUL", [scores, proj], [out], "BatchMatMulOptions")
    path = tmp_path / "matmul.tflite"
    path.write_bytes(b.build([a, k], [out]))
    layers = profile_tflite(path).layers
    assert [(layer.family, layer.macs) for layer in layers] == [
        (Family.MATMUL, 2 * 8 * 8 * 64),
        (Family.FULLY_CONNECTED, 2 * 8 * 5 * 8),
    ]


def test_custom_ops_and_extra_subgraphs_are_noted(tmp_path: Path) -> None:
    b = ModelBuilder()
    x = b.tensor("x", (1, 32))
    y = fully_connected(b, x, np.ones((10, 32), np.float32), np.zeros(10, np.float32), "y")
    model = schema_fb.ModelT.InitFromPackedBuf(b.build([x], [y]), 0)
    custom = schema_fb.OperatorCodeT()
    custom.builtinCode, custom.deprecatedBuiltinCode, custom.customCode = 32, 32, "MyPostprocess"
    model.operatorCodes.append(custom)
    graph = model.subgraphs[0]
    z = schema_fb.TensorT()
    z.name, z.shape, z.type, z.buffer = "z", [1, 10], 0, 0
    graph.tensors.append(z)
    op = schema_fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [graph.outputs[0]], [len(graph.tensors) - 1]
    graph.operators.append(op)
    graph.outputs = [len(graph.tensors) - 1]
    model.subgraphs.append(graph)  # a second subgraph, as a model with two signatures has
    path = tmp_path / "custom.tflite"
    path.write_bytes(repack(model))
    profile = profile_tflite(path)
    assert [(layer.op, layer.family) for layer in profile.layers] == [
        ("FULLY_CONNECTED", Family.FULLY_CONNECTED),
        ("MyPostprocess", Family.OTHER),
    ]
    assert any("MyPostprocess" in note for note in profile.notes)
    assert any("2 subgraphs" in note for note in profile.notes)


def test_broken_files_raise_model_error(tmp_path: Path) -> None:
    data = FACE_MODEL.read_bytes()
    for name, content in (("cut.tflite", data[: len(data) // 3]), ("junk.tflite", b"\0\0\0\0TFL3" + b"\xff" * 64)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelError) as info:
            profile_tflite(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no such model file"):
        profile_tflite(tmp_path / "missing.tflite")


def test_names_from_the_file_cannot_break_the_one_line_error(tmp_path: Path) -> None:
    b = ModelBuilder()
    x, y = b.tensor("in\nput", (1, 4)), b.tensor("out\r\n", (1, 4))
    b.op("RELU", [x], [y])
    path = tmp_path / "names.tflite"
    path.write_bytes(b.build([x], [y]))
    assert [t.name for t in profile_tflite(path).inputs] == ["in?put"]
    with pytest.raises(ModelError) as info:
        profile_tflite(path, {"x": [1, 4]})
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    with pytest.raises(ModelError, match="positive"):
        profile_tflite(path, default_dim=0)
