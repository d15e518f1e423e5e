"""Broken and hostile .tflite files: each gets one ModelLoadError line naming the file, never a crash or hang."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accelerators.errors import ModelLoadError
from accelerators.registry import select
from accelerators.tflite_build import ModelBuilder, conv2d
from accelerators.tflite_file import MAX_FILE_BYTES, check_tflite_file, read_tflite
from tests.conftest import DIGITS_MODEL, FACE_MODEL

schema_fb = pytest.importorskip("ai_edge_litert.schema_py_generated")


def small_model() -> bytes:
    """A 3x3 convolution with fp16-stored weights (DEQUANTIZE -> CONV_2D), as converters write them."""
    b = ModelBuilder()
    x = b.tensor("x", (1, 8, 8, 3))
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = conv2d(b, x, weights, np.zeros(4, np.float32), "y", storage="float16")
    return b.build([x], [y])


def refused(path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        check_tflite_file(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message
    return message


def write(tmp_path: Path, data: bytes, name: str = "model.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def repack(model: Any) -> bytes:
    """Serialise an object-API ModelT the way the converter does (used to forge fields the builder checks)."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def unpacked(data: bytes) -> Any:
    return schema_fb.ModelT.InitFromPackedBuf(data, 0)


# --- flatbuffer navigation written out here, independent of the reader under test


def _u32(buf: bytes | bytearray, pos: int) -> int:
    return int(struct.unpack_from("<I", buf, pos)[0])


def _target(buf: bytes | bytearray, table: int, field_id: int) -> int:
    """Where a table's offset field (vector, string or table) points."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    slot = struct.unpack_from("<H", buf, vtable + 4 + 2 * field_id)[0]
    assert slot, f"field {field_id} absent"
    return table + slot + _u32(buf, table + slot)


def _subgraph0(buf: bytes | bytearray) -> int:
    subgraphs = _target(buf, _u32(buf, 0), 2)  # Model.subgraphs
    return subgraphs + 4 + _u32(buf, subgraphs + 4)


def _tensor0(buf: bytes | bytearray) -> int:
    tensors = _target(buf, _subgraph0(buf), 0)  # SubGraph.tensors
    return tensors + 4 + _u32(buf, tensors + 4)


VECTORS = {  # name -> position of a vector's length word in the file
    "operators": lambda buf: _target(buf, _subgraph0(buf), 3),
    "tensors": lambda buf: _target(buf, _subgraph0(buf), 0),
    "tensor shape": lambda buf: _target(buf, _tensor0(buf), 0),
    "tensor name": lambda buf: _target(buf, _tensor0(buf), 3),
    "buffers": lambda buf: _target(buf, _u32(buf, 0), 4),
}


# --- tests


def test_well_formed_models_read_like_the_generated_reader_sees_them(tmp_path: Path) -> None:
    for path in (FACE_MODEL, write(tmp_path, small_model())):
        model = read_tflite(path)
        reference = unpacked(path.read_bytes())
        graph, ref_graph = model.subgraphs[0], reference.subgraphs[0]
        assert len(model.subgraphs) == len(reference.subgraphs)
        assert len(graph.tensors) == len(ref_graph.tensors) and len(graph.operators) == len(ref_graph.operators)
        assert graph.inputs == tuple(ref_graph.inputs) and graph.outputs == tuple(ref_graph.outputs)
        for tensor, ref in zip(graph.tensors, ref_graph.tensors, strict=True):
            assert tensor.name == ref.name.decode() and tensor.shape == tuple(ref.shape) and tensor.buffer == ref.buffer
        for op, ref_op in zip(graph.operators, ref_graph.operators, strict=True):
            assert op.inputs == tuple(ref_op.inputs) and op.outputs == tuple(ref_op.outputs)
        sizes = [0 if b.data is None else len(b.data) for b in reference.buffers]
        assert list(model.buffer_sizes) == sizes
        check_tflite_file(path)


def test_dtypes_agree_with_the_interpreter() -> None:
    from accelerators.litert import interpreter_api

    interpreter = interpreter_api()[0](model_path=str(FACE_MODEL))
    details = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    tensors = read_tflite(FACE_MODEL).subgraphs[0].tensors
    assert details and all(tensors[i].dtype == dtype for i, dtype in details.items())


def test_missing_empty_and_other_formats(tmp_path: Path) -> None:
    refused(tmp_path / "absent.tflite", "no such model file")
    refused(write(tmp_path, b""), "empty")
    onnx_renamed = tmp_path / "digits.tflite"
    shutil.copy(DIGITS_MODEL, onnx_renamed)
    refused(onnx_renamed, "TFL3")
    refused(write(tmp_path, b"TFL3"), "TFL3")
    refused(tmp_path, "no such model file")  # a directory


def test_truncated_files(tmp_path: Path) -> None:
    data = small_model()
    for cut in range(1, len(data), 7):
        refused(write(tmp_path, data[:cut]))
    face = FACE_MODEL.read_bytes()
    # the demo model has a zip of metadata appended past its flatbuffer; cut inside the flatbuffer
    for fraction in (0.0001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.85):
        refused(write(tmp_path, face[: int(len(face) * fraction)]), "not a loadable TFLite model")


def test_garbage_behind_a_tfl3_identifier(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for size in (8, 9, 64, 4096, 100_000):
        for _ in range(10):
            data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            data[4:8] = b"TFL3"
            refused(write(tmp_path, bytes(data)), "not a loadable TFLite model")


@pytest.mark.parametrize("vector", sorted(VECTORS))
@pytest.mark.parametrize("length", [2**31 - 1, 2**32 - 1, 1 << 20])
def test_vector_lengths_that_cannot_fit(tmp_path: Path, vector: str, length: int) -> None:
    data = bytearray(small_model())
    struct.pack_into("<I", data, VECTORS[vector](data), length)
    refused(write(tmp_path, bytes(data)), "cannot fit")


def test_offsets_pointing_outside_the_file(tmp_path: Path) -> None:
    data = bytearray(small_model())
    struct.pack_into("<I", data, 0, len(data) + 100)  # the root table
    refused(write(tmp_path, bytes(data), "root.tflite"), "outside the file")
    data = bytearray(small_model())
    slot_holder = _subgraph0(data)
    vtable = slot_holder - struct.unpack_from("<i", data, slot_holder)[0]
    slot = struct.unpack_from("<H", data, vtable + 4 + 2 * 3)[0]  # SubGraph.operators
    struct.pack_into("<I", data, slot_holder + slot, 0xFFFF_FF00)
    refused(write(tmp_path, bytes(data), "operators.tflite"), "outside the file")


def test_operator_referring_to_a_missing_tensor_or_opcode(tmp_path: Path) -> None:
    b = ModelBuilder()
    x, y = b.tensor("x", (1, 4)), b.tensor("y", (1, 4))
    b.op("RELU", [x, 1_000_000], [y])
    refused(write(tmp_path, b.build([x], [y])), "tensor 1000000")
    model = unpacked(small_model())
    model.subgraphs[0].operators[0].opcodeIndex = 7
    refused(write(tmp_path, repack(model)), "opcode 7")
    model = unpacked(small_model())
    model.subgraphs[0].inputs = [99]
    refused(write(tmp_path, repack(model)), "tensor 99")


def test_absurd_and_impossible_shapes(tmp_path: Path) -> None:
    b = ModelBuilder()
    x, y = b.tensor("x", (10**6, 10**6, 10**6)), b.tensor("y", (10**6, 10**6, 10**6))
    b.op("RELU", [x], [y])
    refused(write(tmp_path, b.build([x], [y])), "GiB")
    model = unpacked(small_model())
    model.subgraphs[0].tensors[0].shapeSignature = [1, -5, 8, 3]
    refused(write(tmp_path, repack(model)), "impossible shape")
    model = unpacked(small_model())
    model.subgraphs[0].tensors[0].shape = [1, -7, 8, 3]
    refused(write(tmp_path, repack(model)), "impossible shape")


def test_absurd_shape_through_the_litert_backend(tmp_path: Path) -> None:
    b = ModelBuilder()
    x, y = b.tensor("x", (10**6, 10**6, 10**6)), b.tensor("y", (10**6, 10**6, 10**6))
    b.op("RELU", [x], [y])
    path = write(tmp_path, b.build([x], [y]))
    backend = select(path)
    with pytest.raises(ModelLoadError) as info:
        backend.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_constant_data_disagreeing_with_its_shape(tmp_path: Path) -> None:
    model = unpacked(small_model())
    weights = next(t for t in model.subgraphs[0].tensors if t.buffer and model.buffers[t.buffer].data is not None)
    model.buffers[weights.buffer].data = model.buffers[weights.buffer].data[:-2]
    refused(write(tmp_path, repack(model)), "its data has")


def test_external_buffer_past_the_end_of_the_file(tmp_path: Path) -> None:
    model = unpacked(small_model())
    model.buffers[1].data = None
    model.buffers[1].offset, model.buffers[1].size = 10**9, 216  # (4, 3, 3, 3) float16
    refused(write(tmp_path, repack(model)), "past the end of the file")


def test_unknown_tensor_type_and_schema_version(tmp_path: Path) -> None:
    model = unpacked(small_model())
    model.subgraphs[0].tensors[0].type = 120
    refused(write(tmp_path, repack(model)), "unknown type 120")
    model = unpacked(small_model())
    model.version = 2
    refused(write(tmp_path, repack(model)), "schema version 2")


def test_a_vector_of_many_references_to_one_table(tmp_path: Path) -> None:
    """300,000 tensors that are all the same 40-byte table: valid flatbuffer, absurd work to walk."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    name, shape = b.CreateString("t"), b.CreateNumpyVector(np.array([1, 2, 3, 4], np.int32))
    schema_fb.TensorStart(b)
    schema_fb.TensorAddShape(b, shape)
    schema_fb.TensorAddName(b, name)
    tensor = schema_fb.TensorEnd(b)
    count = 300_000
    schema_fb.SubGraphStartTensorsVector(b, count)
    for _ in range(count):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    schema_fb.SubGraphStart(b)
    schema_fb.SubGraphAddTensors(b, tensors)
    subgraph = schema_fb.SubGraphEnd(b)
    schema_fb.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    schema_fb.ModelStart(b)
    schema_fb.ModelAddVersion(b, 3)
    schema_fb.ModelAddSubgraphs(b, subgraphs)
    b.Finish(schema_fb.ModelEnd(b), file_identifier=b"TFL3")
    refused(write(tmp_path, bytes(b.Output())), "more tables and indices")


def test_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.tflite"
    with path.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written, and nothing may be read
    refused(path, "limit")
