"""ONNX layer profiles of real model files, checked against published figures and hand counts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelerators.base import Family
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.models.onnx_profile import profile_onnx
from tests.conftest import DIGITS_MODEL
from tests.models import nets_onnx


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nets")
    return {name: build(folder / name) for name, build in nets_onnx.BUILDERS.items()}


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1  # padding k//2, as the builders use


def mobilenet_v2_counts() -> tuple[int, int]:
    """(MACs, params) of MobileNetV2 1.0 224 with BatchNorm folded into conv biases, counted by hand."""
    macs = params = 0
    size = 224

    def conv(cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> None:
        nonlocal macs, params, size
        size = _conv_out(size, k, stride)
        macs += size * size * cout * (cin // group) * k * k
        params += cout * (cin // group) * k * k + cout

    conv(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in nets_onnx.MOBILENET_V2_BLOCKS:
        for i in range(n):
            if t != 1:
                conv(cin, cin * t, 1)
            conv(cin * t, cin * t, 3, s if i == 0 else 1, group=cin * t)
            conv(cin * t, c, 1)
            cin = c
    conv(cin, 1280, 1)
    return macs + 1280 * 1000, params + 1280 * 1000 + 1000 + 2  # + fc; + ReLU6's shared min and max


def resnet18_counts() -> tuple[int, int]:
    macs = params = 0

    def conv(size: int, cin: int, cout: int, k: int, stride: int = 1) -> int:
        nonlocal macs, params
        out = _conv_out(size, k, stride)
        macs += out * out * cout * cin * k * k
        params += cout * cin * k * k + cout
        return out

    size = conv(224, 3, 64, 7, 2) // 2  # then max pool 3x3 stride 2: 112 -> 56
    cin = 64
    for channels, stride in nets_onnx.RESNET18_STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            if s != 1 or cin != channels:
                conv(size, cin, channels, 1, s)
            size = conv(conv(size, cin, channels, 3, s), channels, channels, 3)
            cin = channels
    return macs + 512 * 1000, params + 512 * 1000 + 1000


def _families(profile: ModelProfile) -> set[Family]:
    return {layer.family for layer in profile.layers}


def test_digits_mlp_matches_a_hand_count() -> None:
    profile = profile_onnx(DIGITS_MODEL)
    assert profile.total_macs == 64 * 32 + 32 * 10
    assert profile.total_params == 64 * 32 + 32 + 32 * 10 + 10
    assert profile.total_param_bytes == 4 * profile.total_params
    assert [layer.op for layer in profile.layers] == ["Flatten", "Gemm", "Relu", "Gemm", "Softmax"]
    assert [layer.family for layer in profile.layers][1] == Family.FULLY_CONNECTED
    assert profile.inputs[0].shape == (1, 1, 8, 8) and profile.outputs[0].shape == (1, 10)
    assert profile.pinned == {"pixels:0": "1 (default)"}
    assert profile.layers[1].inputs == ("flat",) and profile.layers[1].input_bytes == 64 * 4
    assert profile.tensors["hidden"].shape == (1, 32)
    assert profile.digest == hashlib.sha256(DIGITS_MODEL.read_bytes()).hexdigest()


def test_mobilenet_v2_matches_published_and_hand_counts(nets: dict[str, Path]) -> None:
    profile = profile_onnx(nets["mobilenet_v2.onnx"])
    macs, params = mobilenet_v2_counts()
    assert profile.total_macs == macs
    assert profile.total_params == params
    assert profile.total_macs == pytest.approx(300e6, rel=0.01)  # published: 300M multiply-adds
    # published 3.50M counts BatchNorm's scale and shift per channel (17,056 channels); here one bias
    assert profile.total_params == pytest.approx(3.504872e6 - 17_056 + 2, abs=0)
    assert profile.total_params == pytest.approx(3.50e6, rel=0.01)
    by_family = profile.by_family()
    assert by_family["depthwise_conv"][0] == 17 and by_family["pointwise_conv"][0] == 34
    assert by_family["pointwise_conv"][1] > by_family["depthwise_conv"][1] > 0
    assert profile.notes == ()


def test_resnet18_matches_published_and_hand_counts(nets: dict[str, Path]) -> None:
    profile = profile_onnx(nets["resnet18.onnx"])
    macs, params = resnet18_counts()
    assert (profile.total_macs, profile.total_params) == (macs, params)
    assert profile.total_macs == pytest.approx(1.82e9, rel=0.01)
    assert profile.total_params == pytest.approx(11.69e6, rel=0.01)
    assert {Family.CONV, Family.POINTWISE_CONV, Family.FULLY_CONNECTED, Family.POOLING} <= _families(profile)
    assert Family.DEPTHWISE_CONV not in _families(profile)


def test_fp16_weights_count_in_their_stored_size(nets: dict[str, Path]) -> None:
    fp32, fp16 = profile_onnx(nets["mobilenet_v2.onnx"]), profile_onnx(nets["mobilenet_v2_fp16.onnx"])
    assert fp16.total_macs == fp32.total_macs
    assert fp16.total_params == fp32.total_params
    assert fp16.total_param_bytes * 2 == fp32.total_param_bytes
    assert [layer.op for layer in fp16.layers] == [layer.op for layer in fp32.layers]  # the Casts are folded
    first = fp16.layers[0]
    assert first.op == "Conv" and first.params == 32 * 3 * 9 + 32 and first.param_bytes == 2 * first.params


@pytest.mark.parametrize("weights", ["constant", "graph_input", "int8"])
def test_weights_stored_other_ways_count_the_same(tmp_path: Path, weights: nets_onnx.Weights) -> None:
    plain = profile_onnx(nets_onnx.build_small_convnet(tmp_path / "plain.onnx"))
    other = profile_onnx(nets_onnx.build_small_convnet(tmp_path / f"{weights}.onnx", weights))
    assert plain.total_macs == other.total_macs == (32 * 32 * 8 * 3 * 9 + 32 * 32 * 16 * 8 + 32 * 32 * 16 * 9 + 16 * 10)
    assert [(layer.op, layer.family) for layer in other.layers] == [(layer.op, layer.family) for layer in plain.layers]
    assert [i.name for i in other.inputs] == ["input"] and other.pinned == {"input:0": "1 (default)"}
    weight_elements = 8 * 3 * 9 + 16 * 8 + 16 * 9 + 10 * 16
    assert plain.total_params == weight_elements + 8 + 16 + 16 + 10
    if weights == "int8":  # int8 kernels, each with a float scale and an int8 zero point
        assert other.total_params == plain.total_params + 4 * 2
        assert other.total_param_bytes == weight_elements + 4 * (8 + 16 + 16 + 10) + 4 * (4 + 1)
    else:
        assert (other.total_params, other.total_param_bytes) == (plain.total_params, plain.total_param_bytes)


def test_dynamic_dims_pinned_from_input_shapes_or_default(nets: dict[str, Path]) -> None:
    single = profile_onnx(nets["mobilenet_v2.onnx"])
    batch4 = profile_onnx(nets["mobilenet_v2.onnx"], {"input": [4, 3, 224, 224]})
    assert single.pinned == {"input:0": "1 (default)"}
    assert batch4.pinned == {"input:0": "4 (from config)"}
    assert batch4.total_macs == 4 * single.total_macs
    assert batch4.inputs[0].shape == (4, 3, 224, 224) and batch4.outputs[0].shape == (4, 1000)
    assert profile_onnx(nets["mobilenet_v2.onnx"], default_dim=2).pinned == {"input:0": "2 (default)"}
    with pytest.raises(ModelError, match="dimension 2 is fixed at 224"):
        profile_onnx(nets["mobilenet_v2.onnx"], {"input": [1, 3, 256, 256]})
    with pytest.raises(ModelError, match="'images', which is not an input of the model; its inputs are 'input'"):
        profile_onnx(nets["mobilenet_v2.onnx"], {"images": [1, 3, 224, 224]})


def test_transformer_block_has_attention_matmuls(nets: dict[str, Path]) -> None:
    dim, heads, ff, tokens = 64, 4, 256, 10
    profile = profile_onnx(nets["transformer_block.onnx"], {"tokens": [1, tokens, dim]})
    assert profile.pinned == {"tokens:0": "1 (from config)", "tokens:1": "10 (from config)"}
    matmuls = [layer for layer in profile.layers if layer.family == Family.MATMUL]
    assert len(matmuls) == 2 and all(layer.params == 0 and len(layer.inputs) == 2 for layer in matmuls)
    assert [layer.macs for layer in matmuls] == [heads * tokens * tokens * (dim // heads)] * 2
    norms = [layer.op for layer in profile.layers if layer.family == Family.NORMALIZATION]
    assert sorted(norms) == ["LayerNormalization", "LayerNormalization", "Softmax"]
    assert (
        profile.total_macs
        == 4 * tokens * dim * dim + 2 * heads * tokens * tokens * (dim // heads) + 2 * tokens * dim * ff
    )
    linear = 4 * (dim * dim + dim) + dim * ff + ff + ff * dim + dim
    assert profile.total_params == linear + 2 * 2 * dim + 4 + 3 + 1  # + layer norms, reshape shapes, scale
    assert profile.tensors[matmuls[0].outputs[0]].shape == (1, heads, tokens, tokens)


@pytest.mark.parametrize(("cell", "gates", "bidirectional"), [("LSTM", 4, False), ("GRU", 3, True), ("RNN", 1, False)])
def test_recurrent_cells(tmp_path: Path, cell: str, gates: int, bidirectional: bool) -> None:
    path = nets_onnx.build_recurrent(
        tmp_path / "rnn.onnx", cell, seq=16, features=32, hidden=64, bidirectional=bidirectional
    )
    profile = profile_onnx(path, {"x": [16, 3, 32]})
    dirs = 2 if bidirectional else 1
    (recurrent,) = [layer for layer in profile.layers if layer.family == Family.RECURRENT]
    assert recurrent.op == cell
    assert recurrent.macs == 16 * 3 * dirs * gates * (32 + 64) * 64
    assert recurrent.params == dirs * gates * 64 * (32 + 64 + 2)
    assert profile.total_macs == recurrent.macs + 3 * dirs * 64 * 10


def test_reference_nets_run_on_onnxruntime(nets: dict[str, Path]) -> None:
    feeds = {
        "mobilenet_v2_fp16.onnx": {"input": np.ones((1, 3, 224, 224), np.float32)},
        "small_convnet_constants.onnx": {"input": np.ones((2, 3, 32, 32), np.float32)},
        "transformer_block.onnx": {"tokens": np.ones((1, 10, 64), np.float32)},
        "lstm.onnx": {"x": np.ones((16, 2, 32), np.float32)},
    }
    for name, inputs in feeds.items():
        session = ort.InferenceSession(str(nets[name]), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, inputs)
        assert np.isfinite(out).all(), name


def _save(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    output: str,
    initializers: Sequence[TensorProto] = (),
    output_type: int = TensorProto.FLOAT,
) -> Path:
    outputs = [helper.make_tensor_value_info(output, output_type, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_quantized_ops_map_to_conv_and_fc_with_int8_dtype(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.int8), "w")
    scalars = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
               [("s", 0.1, np.float32), ("zu", 0, np.uint8), ("zi", 0, np.int8)]]  # fmt: skip
    fc_w = numpy_helper.from_array(np.ones((8 * 6 * 6, 4), np.int8), "fc_w")
    nodes = [
        helper.make_node("QLinearConv", ["x", "s", "zu", "w", "s", "zi", "s", "zu"], ["y"], kernel_shape=[3, 3]),
        helper.make_node("Reshape", ["y", "flat"], ["y2"]),
        helper.make_node("MatMulInteger", ["y2", "fc_w", "zu", "zi"], ["z"]),
    ]
    flat = numpy_helper.from_array(np.array([1, -1], np.int64), "flat")
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])
    profile = profile_onnx(_save(tmp_path, nodes, [x], "z", [w, *scalars, fc_w, flat], TensorProto.INT32))
    conv, _, fc = profile.layers
    assert (conv.family, conv.dtype, conv.macs) == (Family.CONV, "uint8", 6 * 6 * 8 * 3 * 9)
    assert (fc.family, fc.dtype, fc.macs) == (Family.FULLY_CONNECTED, "uint8", 288 * 4)
    assert conv.params == 8 * 27 + 3 and conv.param_bytes == 8 * 27 + 4 + 1 + 1


def test_conv_transpose_einsum_and_unknown_ops(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")  # (Cin, Cout, kh, kw)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2]),
        helper.make_node("Einsum", ["y", "y"], ["e"], equation="bchw,bcvw->bhv"),
        helper.make_node("MyCustomOp", ["e"], ["z"], domain="example.custom"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    path = _save(tmp_path, nodes, [x], "z", [w])
    model = onnx.load(path)
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    onnx.save(model, path)
    profile = profile_onnx(path)
    tconv, einsum, custom = profile.layers
    assert (tconv.family, tconv.macs) == (Family.CONV_TRANSPOSE, 1 * 4 * 5 * 5 * 2 * 3 * 3)
    assert profile.tensors["y"].shape == (1, 2, 11, 11)
    assert (einsum.family, einsum.macs) == (Family.MATMUL, 11 * 11 * 2 * 11)  # out (1,11,11) x sum over c, w
    assert custom.family == Family.OTHER and custom.macs == 0
    assert any("example.custom.MyCustomOp" in note for note in profile.notes)
    assert any("could not be inferred" in note and "'z'" in note for note in profile.notes)
    assert profile.tensors["z"].bytes == 0  # unknown: counted as 0, never guessed


def test_subgraphs_are_one_layer_with_a_note(tmp_path: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "branch",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch, name="choose")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    profile = profile_onnx(_save(tmp_path, nodes, [x], "y", [cond]))
    (layer,) = profile.layers
    assert layer.op == "If" and layer.family == Family.OTHER
    assert any("'choose' has subgraphs" in note for note in profile.notes)


def test_absurd_shapes_fail_with_one_line(tmp_path: Path, nets: dict[str, Path]) -> None:
    with pytest.raises(ModelError) as info:
        profile_onnx(nets["small_convnet.onnx"], {"input": [1_000_000, 3, 32, 32]})
    assert "'input'" in str(info.value) and "[1000000, 3, 32, 32]" in str(info.value)
    assert str(nets["small_convnet.onnx"]) in str(info.value) and "\n" not in str(info.value)

    huge = numpy_helper.from_array(np.array([1_000_000, 1_000_000], np.int64), "huge")
    for op in ("ConstantOfShape", "Expand"):
        node = helper.make_node(op, ["huge"] if op == "ConstantOfShape" else ["x", "huge"], ["big"])
        nodes = [node, helper.make_node("Add", ["x", "big"], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        path = _save(tmp_path, nodes, [x], "y", [huge])
        with pytest.raises(ModelError, match=r"tensor 'big' would have shape \[1000000, 1000000\]") as info:
            profile_onnx(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_hostile_files_give_model_error(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(DIGITS_MODEL.read_bytes()[:5000])
    for path in (truncated, tmp_path / "missing.onnx"):
        with pytest.raises(ModelError) as info:
            profile_onnx(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_external_weights_are_profiled_without_loading_them(tmp_path: Path, nets: dict[str, Path]) -> None:
    model = onnx.load(nets["transformer_block.onnx"])
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=1024)
    assert (tmp_path / "weights.bin").stat().st_size > 100_000
    inline = profile_onnx(nets["transformer_block.onnx"], {"tokens": [1, 10, 64]})
    external = profile_onnx(path, {"tokens": [1, 10, 64]})
    assert (external.total_macs, external.total_params) == (inline.total_macs, inline.total_params)
    assert external.total_param_bytes == inline.total_param_bytes and external.notes == ()
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="does not exist"):
        profile_onnx(path)
