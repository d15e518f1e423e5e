"""Hostile ONNX files: each gets one ModelLoadError line naming the file, before any runtime sees it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelerators.errors import ModelLoadError
from accelerators.modelfile import check_model_file
from accelerators.onnx_file import MAX_FILE_BYTES, check_onnx_file, load_onnx_checked
from accelerators.registry import select
from tests.conftest import ASSETS, DIGITS_MODEL, FACE_MODEL


def _refused(path: Path, match: str) -> str:
    """Assert the file is refused with one line naming it and matching ``match``; return the line."""
    with pytest.raises(ModelLoadError, match=match) as info:
        check_onnx_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message
    return message


def _add_model(folder: Path, weight: TensorProto, name: str = "model.onnx") -> Path:
    """y = x + w for a (2, 2) float input: the smallest model that carries one tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", weight.name], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [weight],
    )
    path = folder / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def _external(location: str, offset: int = 0, length: int | None = 16, dims: tuple[int, ...] = (2, 2)) -> TensorProto:
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    entries = {"location": location, "offset": str(offset)} | ({} if length is None else {"length": str(length)})
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


WEIGHTS = np.arange(4, dtype=np.float32).reshape(2, 2)


def test_a_good_model_passes(tmp_path: Path) -> None:
    check_onnx_file(DIGITS_MODEL)
    check_model_file(DIGITS_MODEL)
    model = load_onnx_checked(DIGITS_MODEL)
    assert [t.name for t in model.graph.initializer] == ["w1", "b1", "w2", "b2"]


def test_missing_empty_and_unreadable_files(tmp_path: Path) -> None:
    _refused(tmp_path / "missing.onnx", "no such model file")
    (tmp_path / "empty.onnx").touch()
    _refused(tmp_path / "empty.onnx", r"empty \(0 bytes\)")
    (tmp_path / "folder.onnx").mkdir()
    _refused(tmp_path / "folder.onnx", "not a regular file")
    os.mkfifo(tmp_path / "fifo.onnx")  # reading it would block forever
    _refused(tmp_path / "fifo.onnx", "not a regular file")


def test_other_formats_are_named(tmp_path: Path) -> None:
    cases = {
        "tflite.onnx": (FACE_MODEL.read_bytes(), "it is a TFLite flatbuffer"),
        "png.onnx": ((ASSETS / "digits" / "images" / "digit_0.png").read_bytes(), "it is a PNG image"),
        "jpeg.onnx": ((ASSETS / "images" / "coffee.jpg").read_bytes(), "it is a JPEG image"),
        "garbage.onnx": (np.random.default_rng(0).bytes(4096), "not an ONNX model: the protobuf cannot be parsed"),
        "text.onnx": (b"hello, this is not a model\n" * 10, "not an ONNX model"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        _refused(tmp_path / name, match)


def test_truncated_and_graphless_models(tmp_path: Path) -> None:
    data = DIGITS_MODEL.read_bytes()
    for cut in (7, len(data) // 3, len(data) // 2, len(data) - 1):
        (tmp_path / f"cut{cut}.onnx").write_bytes(data[:cut])
        _refused(tmp_path / f"cut{cut}.onnx", "truncated or corrupt|has no graph")
    headless = helper.make_model(helper.make_graph([], "g", [], []))
    headless.ClearField("graph")
    onnx.save(headless, tmp_path / "nograph.onnx")
    _refused(tmp_path / "nograph.onnx", "has no graph")


def test_files_over_the_protobuf_limit_are_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    with big.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used, and never read
    _refused(big, "over the 2 GiB protobuf limit")


def test_tensors_declaring_sizes_they_do_not_carry(tmp_path: Path) -> None:
    absurd = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100_000, 100_000, 100_000], raw_data=b"\0" * 4)
    message = _refused(_add_model(tmp_path / "absurd", absurd), "over the 4 GiB limit")
    assert "initializer 'w'" in message and "[100000, 100000, 100000]" in message
    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2], raw_data=b"\0" * 12)
    _refused(_add_model(tmp_path / "short", short), r"\(16 bytes\) but carries 12 bytes")
    typed = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2], float_data=[1.0, 2.0, 3.0])
    _refused(_add_model(tmp_path / "typed", typed), r"\(4 values\) but carries 3 values")
    negative = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=b"")
    _refused(_add_model(tmp_path / "negative", negative), "negative dimensions")
    values = numpy_helper.from_array(np.ones(1, np.float32), "w")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(values, indices, [100_000, 100_000, 100_000])  # densified at load time
    path = _add_model(tmp_path / "sparse", numpy_helper.from_array(WEIGHTS, "unused"))
    model = onnx.load(path)
    model.graph.sparse_initializer.append(sparse)
    onnx.save(model, path)
    _refused(path, r"sparse initializer 'w' \(dense\) declares shape \[100000, 100000, 100000\]")
    # the same lie inside a Constant node of a subgraph is found too
    lie = helper.make_node("Constant", [], ["c"], value=short)
    branch = helper.make_graph([lie], "b", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [cond],
    )
    onnx.save(helper.make_model(graph), tmp_path / "nested.onnx")
    _refused(tmp_path / "nested.onnx", "Constant node 'c' declares shape")


def test_valid_external_data_is_loaded_only_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 64 + WEIGHTS.tobytes())
    path = _add_model(folder, _external("weights.bin", offset=64))
    check_model_file(path)
    unloaded = load_onnx_checked(path, external="none").graph.initializer[0]
    assert unloaded.data_location == TensorProto.EXTERNAL and not unloaded.raw_data
    loaded = load_onnx_checked(path).graph.initializer[0]
    assert loaded.data_location == TensorProto.DEFAULT and not loaded.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(loaded), WEIGHTS)
    session = select(path).load(path)
    out = session.run({"x": np.ones((2, 2), np.float32)})
    np.testing.assert_array_equal(out["y"], WEIGHTS + 1)


def test_external_data_escaping_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(WEIGHTS.tobytes())
    cases = {
        "absolute": (str(outside / "w.bin"), "an absolute path"),
        "dotdot": ("../outside/w.bin", "climbs out with '..'"),
        "symlink": ("link.bin", "which is a symlink"),
        "symlinked_dir": ("dir/w.bin", "resolves outside the model's folder"),
        "missing": ("nope.bin", "does not exist"),
    }
    folder.mkdir()
    (folder / "link.bin").symlink_to(outside / "w.bin")
    (folder / "dir").symlink_to(outside)
    for name, (location, match) in cases.items():
        path = _add_model(folder, _external(location), f"{name}.onnx")
        message = _refused(path, match)
        assert repr(location) in message


def test_external_data_that_does_not_fit(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(WEIGHTS.tobytes())  # 16 bytes
    _refused(_add_model(tmp_path, _external("w.bin", offset=4096), "far.onnx"), "beyond the end of the 16-byte file")
    _refused(_add_model(tmp_path, _external("w.bin", offset=8), "tail.onnx"), "beyond the end")
    _refused(_add_model(tmp_path, _external("w.bin", length=8), "short.onnx"), "of 8 bytes, but its shape")
    _refused(_add_model(tmp_path, _external("w.bin", length=None, dims=(2, 4)), "implicit.onnx"), "needs 32 bytes")
    bad = _external("w.bin")
    bad.external_data[1].value = "4k"
    _refused(_add_model(tmp_path, bad, "nonnumeric.onnx"), "non-numeric offset")
    ok = _add_model(tmp_path, _external("w.bin", length=None), "whole.onnx")  # no length: to the end of the file
    check_onnx_file(ok)


def test_onnxruntime_backend_checks_before_loading(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(WEIGHTS.tobytes())
    path = _add_model(tmp_path / "model", _external("../secret.bin"))
    backend = select(path)
    assert backend.name.startswith("onnxruntime")
    with pytest.raises(ModelLoadError, match=r"climbs out with '\.\.'") as info:
        backend.load(path)
    assert str(path) in str(info.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08" + np.random.default_rng(1).bytes(100))
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        select(garbage).load(garbage)


def test_untrusted_names_cannot_break_the_line(tmp_path: Path) -> None:
    path = _add_model(tmp_path, _external("evil\nname.bin"))
    message = _refused(path, "does not exist")
    assert "evil\\nname.bin" in message
