"""One-layer TFLite calibration models: each loads and runs in LiteRT, profiles as its family, and the
MAC layers compute what a numpy reference computes (weights read back from the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accelerators.base import Family
from accelerators.calibration_layers import SPECS, LayerSpec
from accelerators.calibration_tflite import DTYPES, build_layer, build_overhead_probe
from accelerators.litert import interpreter_api
from agent.models.tflite_profile import profile_tflite

schema_fb = pytest.importorskip("ai_edge_litert.schema_py_generated")

INT8_FAMILIES = [f for f in SPECS if f is not Family.RECURRENT]


def run(model: bytes, feeds: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Run ``model`` in LiteRT: (the inputs it was given, its first output)."""
    interpreter = interpreter_api()[0](model_content=model)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(1)
    given = []
    for n, detail in enumerate(interpreter.get_input_details()):
        dtype = np.dtype(detail["dtype"])
        if feeds is not None:
            value = feeds[n]
        elif dtype == np.int8:
            value = rng.integers(-128, 128, detail["shape"], dtype=np.int8)
        else:
            value = rng.standard_normal(detail["shape"]).astype(dtype)
        interpreter.set_tensor(detail["index"], value)
        given.append(value)
    interpreter.invoke()
    return given, interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def constants(model: bytes) -> list[tuple[np.ndarray, Any]]:
    """Every constant tensor's values and quantization, in tensor order, read with the generated reader."""
    unpacked = schema_fb.ModelT.InitFromPackedBuf(model, 0)
    types = {schema_fb.TensorType.FLOAT32: np.float32, schema_fb.TensorType.INT8: np.int8}
    types[schema_fb.TensorType.INT32] = np.int32
    out = []
    for tensor in unpacked.subgraphs[0].tensors:
        data = unpacked.buffers[tensor.buffer].data
        if data is not None and len(data):
            values = np.frombuffer(bytes(data), types[tensor.type]).reshape(tensor.shape)
            out.append((values, tensor.quantization))
    return out


def conv_reference(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 convolution, NHWC input, OHWI filter -> NHWC output (float64)."""
    k = w.shape[1]
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))  # (N, H, W, Cin, kh, kw)
    return np.einsum("nhwcij,oijc->nhwo", windows, w.astype(np.float64), optimize=True)


@pytest.mark.parametrize("family", list(SPECS), ids=lambda f: f.value)
def test_float32_layers_run_and_profile_as_their_family(tmp_path: Path, family: Family) -> None:
    spec = SPECS[family]
    model = build_layer(spec)
    _, out = run(model)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    path = tmp_path / f"{family.value}.tflite"
    path.write_bytes(model)
    profile = profile_tflite(path)
    assert [layer.family for layer in profile.layers] == [family]
    assert profile.total_macs == spec.macs
    assert profile.layers[0].dtype == "float32"


@pytest.mark.parametrize("family", INT8_FAMILIES, ids=lambda f: f.value)
def test_int8_layers_run_and_profile_as_their_family(tmp_path: Path, family: Family) -> None:
    spec = SPECS[family]
    model = build_layer(spec, "int8")
    _, out = run(model)
    assert out.dtype == np.int8
    path = tmp_path / f"{family.value}.tflite"
    path.write_bytes(model)
    profile = profile_tflite(path)
    assert [layer.family for layer in profile.layers] == [family]
    assert profile.total_macs == spec.macs and profile.layers[0].dtype == "int8"


def test_int8_weights_count_one_byte_and_int32_biases_four(tmp_path: Path) -> None:
    spec = SPECS[Family.CONV]  # 3x3, 64 -> 64
    path = tmp_path / "conv.tflite"
    path.write_bytes(build_layer(spec, "int8"))
    layer = profile_tflite(path).layers[0]
    assert layer.params == 64 * 3 * 3 * 64 + 64
    assert layer.param_bytes == 64 * 3 * 3 * 64 * 1 + 64 * 4


def test_without_a_layer_raises_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="LSTM"):
        build_layer(SPECS[Family.RECURRENT], "int8")
    with pytest.raises(NotImplementedError):
        build_layer(SPECS[Family.CONV], "float16")
    with pytest.raises(NotImplementedError, match="other"):
        build_layer(LayerSpec(Family.OTHER, (1, 8)))
    assert DTYPES == ("float32", "int8")


def test_overhead_probe_runs() -> None:
    (x,), out = run(build_overhead_probe())
    np.testing.assert_allclose(out, x + x)


@pytest.mark.parametrize("family", [Family.CONV, Family.POINTWISE_CONV, Family.DEPTHWISE_CONV])
def test_float32_convolutions_compute_the_reference(family: Family) -> None:
    spec = SPECS[family]
    model = build_layer(spec)
    (x,), out = run(model)
    (w, _), (bias, _) = constants(model)
    if family is Family.DEPTHWISE_CONV:  # (1, kh, kw, C): every channel its own filter
        ref = np.concatenate(
            [conv_reference(x[..., c : c + 1], w[..., c : c + 1].transpose(3, 1, 2, 0), 1) for c in range(w.shape[3])],
            axis=-1,
        )
    else:
        ref = conv_reference(x, w, spec.kernel // 2)
    np.testing.assert_allclose(out, ref + bias, rtol=1e-4, atol=1e-4)


def test_float32_fully_connected_computes_the_reference() -> None:
    model = build_layer(SPECS[Family.FULLY_CONNECTED])
    (x,), out = run(model)
    (w, _), (bias, _) = constants(model)  # (out, in), (out,)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64) + bias, rtol=1e-4, atol=1e-4)


def test_float32_matmul_and_lstm_shapes() -> None:
    spec = SPECS[Family.MATMUL]
    (x, k), out = run(build_layer(spec))
    np.testing.assert_allclose(out, x @ k, rtol=1e-4, atol=1e-4)
    spec = SPECS[Family.RECURRENT]
    _, out = run(build_layer(spec))
    assert out.shape == (*spec.input_shape[:2], spec.out_channels) and np.all(np.abs(out) < 1)  # tanh-bounded


def _requantize(acc: np.ndarray, scale: np.ndarray, out_quant: Any) -> np.ndarray:
    real = acc * scale  # (..., channels)
    q = np.round(real / out_quant.scale[0]) + out_quant.zeroPoint[0]
    return np.clip(q, -128, 127)


def test_int8_conv_and_fully_connected_compute_the_reference() -> None:
    for family in (Family.CONV, Family.FULLY_CONNECTED):
        model = build_layer(SPECS[family], "int8")
        (x,), out = run(model)
        (w, w_quant), (bias, _) = constants(model)
        unpacked = schema_fb.ModelT.InitFromPackedBuf(model, 0)
        graph = unpacked.subgraphs[0]
        in_quant, out_quant = graph.tensors[graph.inputs[0]].quantization, graph.tensors[graph.outputs[0]].quantization
        assert in_quant.zeroPoint[0] == 0 and not any(w_quant.zeroPoint)
        if family is Family.CONV:
            acc = conv_reference(x, w, 1) + bias  # (1, 56, 56, 64) int32 accumulators
        else:
            acc = x.astype(np.float64) @ w.T.astype(np.float64) + bias
        expected = _requantize(acc, in_quant.scale[0] * np.asarray(w_quant.scale), out_quant)
        assert np.abs(out.astype(np.int32) - expected).max() <= 1
        assert np.mean(out == expected) > 0.95


def test_calibrating_litert_with_these_layers(tmp_path: Path) -> None:
    from accelerators.calibration import calibrate
    from accelerators.host import Host
    from accelerators.registry import discover

    backend = discover()["litert-cpu"]
    if not backend.probe().available:
        pytest.skip(backend.probe().reason)
    result = calibrate(backend, Host(), [Family.POINTWISE_CONV, Family.RECURRENT], budget_s=0.01)
    assert set(result.rates) == {"pointwise_conv", "recurrent"} and not result.skipped
    assert all(rate.macs_per_s > 0 for rate in result.rates.values())


def test_constant_data_is_16_byte_aligned() -> None:
    """As the converter writes it: NEON loads on 32-bit ARM devices fault on misaligned weights."""
    data = build_layer(SPECS[Family.CONV], "int8")
    model = schema_fb.Model.GetRootAs(data, 0)
    starts = []
    for i in range(1, model.BuffersLength()):
        table = model.Buffers(i)._tab
        if field := table.Offset(4):  # Buffer.data
            starts.append(table.Vector(field))
    assert len(starts) == 2 and all(start % 16 == 0 for start in starts)
