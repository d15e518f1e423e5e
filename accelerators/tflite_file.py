"""Reads a TFLite flatbuffer defensively, so a hostile file gets one clear error instead of a crash.

The schema's generated reader (``ai_edge_litert.schema_py_generated``) follows every offset and
vector length in the file as given: a forged length makes it loop for hours, a forged offset makes it
read garbage. So the few tables the checks and the profiler need are read here through an accessor
that bounds-checks every offset and length *before* using it, and caps the total work, then
cross-checked (indices, shapes, constant sizes, external buffers). The generated module still gives
op names for the profiler and the object API for ``tflite_build``; checking a file needs none of it
(tflite_runtime devices lack it). Field numbers are those of tensorflow/lite/schema/schema.fbs
(vtable slot = 4 + 2 x field id).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from accelerators.errors import ModelLoadError

MAX_FILE_BYTES = 8 << 30  # larger than any model an edge device runs; refused before reading
MAX_FLATBUFFER_BYTES = 2 << 30  # flatbuffers' own limit; bigger models keep weights past it (Buffer.offset)
MAX_TENSOR_BYTES = 4 << 30  # one tensor bigger than this is a forged shape, not a model
MAX_RANK = 64
_WORK_BUDGET = 2_000_000  # tables cost 8, indices 1; a forged file hits this within seconds, real models never
_TABLE_COST = 8
SCHEMA_VERSION = 3

_U8, _U16, _I32, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<i", "<I", "<Q"))

# TensorType code -> (numpy dtype name, bits per element; 0 for variable-size types); schema.fbs only
# ever appends to its enums, so these codes are stable
_TYPES = {
    0: ("float32", 32), 1: ("float16", 16), 2: ("int32", 32), 3: ("uint8", 8), 4: ("int64", 64),
    5: ("string", 0), 6: ("bool", 8), 7: ("int16", 16), 8: ("complex64", 64), 9: ("int8", 8),
    10: ("float64", 64), 11: ("complex128", 128), 12: ("uint64", 64), 13: ("resource", 0),
    14: ("variant", 0), 15: ("uint32", 32), 16: ("uint16", 16), 17: ("int4", 4), 18: ("bfloat16", 16),
    19: ("int2", 2), 20: ("uint4", 4), 21: ("float8", 8), 22: ("float8", 8),
}  # fmt: skip
_CUSTOM = 32  # BuiltinOperator.CUSTOM
_BATCH_MATMUL_OPTIONS = 101  # BuiltinOptions.BatchMatMulOptions


@dataclass(frozen=True, slots=True)
class TfliteTensor:
    name: str
    shape: tuple[int, ...]  # as stored: dynamic dimensions usually hold 1 here
    signature: tuple[int, ...] | None  # shape_signature: -1 marks a dynamic dimension
    dtype: str  # numpy dtype name ("float32", "int8", ...), or "int4", "string", "resource"
    bits: int  # bits per element, 0 for variable-size types
    buffer: int  # index into TfliteModel.buffers; 0 is the empty sentinel
    quantized: bool
    sparse: bool
    variable: bool


@dataclass(frozen=True, slots=True)
class TfliteOperator:
    opcode: int  # index into TfliteModel.opcodes
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, int] = field(default_factory=dict)  # the few builtin options the profiler needs


@dataclass(frozen=True, slots=True)
class TfliteOpcode:
    code: int  # BuiltinOperator value (names: the profiler asks the schema)
    custom: str | None  # the custom code of a custom op ("" if it has none), None for builtins
    version: int


@dataclass(frozen=True, slots=True)
class TfliteSubgraph:
    name: str
    tensors: tuple[TfliteTensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[TfliteOperator, ...]


@dataclass(frozen=True, slots=True)
class TfliteModel:
    """A validated, read-only view of a .tflite file: structure and sizes, no weight bytes."""

    path: Path
    file_size: int
    description: str
    opcodes: tuple[TfliteOpcode, ...]
    buffer_sizes: tuple[int, ...]  # bytes of constant data per buffer (0: no data, i.e. an activation)
    subgraphs: tuple[TfliteSubgraph, ...]

    def is_constant(self, tensor: TfliteTensor) -> bool:
        return tensor.buffer > 0 and self.buffer_sizes[tensor.buffer] > 0 and not tensor.variable


def schema() -> ModuleType:
    """The flatbuffer schema's generated code, shipped inside the ai-edge-litert wheel."""
    try:
        from ai_edge_litert import schema_py_generated as module
    except ImportError as exc:
        raise ModelLoadError(
            f"TFLite profiling and model building need ai-edge-litert's flatbuffer schema ({exc}); "
            "pip install ai-edge-litert"
        ) from exc
    typed: ModuleType = module
    return typed


def check_tflite_file(path: Path) -> None:
    """Raise ModelLoadError (one line, naming ``path``) unless it is a structurally sound TFLite model."""
    read_tflite(path)


def read_tflite(path: Path) -> TfliteModel:
    """Parse and validate ``path``; raises ModelLoadError naming the file and what to do."""
    try:
        size = path.stat().st_size if path.is_file() else -1
    except OSError as exc:
        raise ModelLoadError(_line(path, f"cannot read the model file: {exc.strerror}")) from exc
    if size < 0:
        raise ModelLoadError(_line(path, "no such model file"))
    if size == 0:
        raise ModelLoadError(_line(path, "the model file is empty; copy or download it again"))
    if size > MAX_FILE_BYTES:
        raise ModelLoadError(_line(path, f"{size} bytes is larger than the {MAX_FILE_BYTES >> 30} GiB limit"))
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Parser(data, path, len(data)).model()  # the size now, should it have changed
    except OSError as exc:
        raise ModelLoadError(_line(path, f"cannot read the model file: {exc}")) from exc


def _line(path: Path, what: str) -> str:
    return f"{path}: {what}".replace("\n", " ").replace("\r", " ")


def _show(text: str) -> str:
    """A name read from the file, made safe to put in a one-line message."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:60])
    return repr(clean + ("..." if len(text) > 60 else ""))


class _Table:
    """One flatbuffer table whose header, vtable and inline fields are known to lie inside the data."""

    __slots__ = ("obj_len", "p", "pos", "vt", "vt_len")

    def __init__(self, parser: _Parser, pos: int, what: str) -> None:
        self.p, self.pos = parser, pos  # whoever creates a table has paid _TABLE_COST for it
        self.vt = pos - parser.get(_I32, pos, what)
        self.vt_len, self.obj_len = parser.get(_U16, self.vt, what), parser.get(_U16, self.vt + 2, what)
        if self.vt_len < 4 or self.vt_len % 2 or self.vt + self.vt_len > parser.end or pos + self.obj_len > parser.end:
            parser.fail(f"{what} has a malformed table header")

    def _slot(self, field_id: int, size: int) -> int | None:
        slot = 4 + 2 * field_id
        if slot >= self.vt_len:
            return None
        offset = self.p.get(_U16, self.vt + slot, "vtable")
        if offset == 0:
            return None
        if offset + size > self.obj_len:
            self.p.fail(f"field {field_id} of a table runs past the table")
        return self.pos + offset

    def scalar(self, field_id: int, kind: struct.Struct, default: int = 0) -> int:
        at = self._slot(field_id, kind.size)
        return default if at is None else int(self.p.get(kind, at, "scalar field"))

    def ref(self, field_id: int) -> int | None:
        at = self._slot(field_id, 4)
        return None if at is None else at + self.p.get(_U32, at, "offset field")

    def vector(self, field_id: int, elem_size: int, what: str) -> tuple[int, int]:
        """(first element position, length); the whole vector is checked to lie inside the data."""
        at = self.ref(field_id)
        if at is None:
            return 0, 0
        count = self.p.get(_U32, at, what)
        if at + 4 + count * elem_size > self.p.end:
            self.p.fail(f"{what} claims {count} entries, which cannot fit in the file (truncated or forged)")
        return at + 4, count

    def ints(self, field_id: int, what: str, limit: int = 1 << 24) -> tuple[int, ...]:
        start, count = self.vector(field_id, 4, what)
        if count > limit:
            self.p.fail(f"{what} has {count} entries (more than {limit})")
        self.p.spend(count)
        return struct.unpack_from(f"<{count}i", self.p.data, start) if count else ()

    def string(self, field_id: int, what: str) -> str:
        start, count = self.vector(field_id, 1, what)
        return bytes(self.p.data[start : start + min(count, 4096)]).decode("utf-8", "replace")

    def table(self, field_id: int, what: str) -> _Table | None:
        at = self.ref(field_id)
        if at is None:
            return None
        self.p.spend(_TABLE_COST)
        return _Table(self.p, at, what)

    def tables(self, field_id: int, what: str) -> list[_Table]:
        start, count = self.vector(field_id, 4, what)
        self.p.spend(count * _TABLE_COST)  # before the loop: a forged count fails here, not after hours
        get = self.p.get
        return [_Table(self.p, start + 4 * i + get(_U32, start + 4 * i, what), what) for i in range(count)]


class _Parser:
    def __init__(self, data: mmap.mmap, path: Path, size: int) -> None:
        self.data, self.path, self.size = data, path, size
        self.end = min(size, MAX_FLATBUFFER_BYTES)
        self.budget = _WORK_BUDGET

    def fail(self, what: str) -> NoReturn:
        raise ModelLoadError(_line(self.path, f"not a loadable TFLite model: {what}; re-export it or replace the file"))

    def spend(self, cost: int) -> None:
        self.budget -= cost
        if self.budget < 0:
            self.fail("more tables and indices than any real model has")

    def get(self, kind: struct.Struct, pos: int, what: str) -> int:
        if pos < 0 or pos + kind.size > self.end:
            self.fail(f"{what} points outside the file (truncated or corrupt)")
        return int(kind.unpack_from(self.data, pos)[0])

    def model(self) -> TfliteModel:
        if self.size < 8 or self.data[4:8] != b"TFL3":
            self.fail("no TFL3 file identifier, so this is not a TFLite flatbuffer (an ONNX or other file renamed?)")
        self.spend(_TABLE_COST)
        root = _Table(self, self.get(_U32, 0, "root"), "model")
        version = root.scalar(0, _U32)
        if version != SCHEMA_VERSION:
            self.fail(f"schema version {version}, the runtime reads version {SCHEMA_VERSION}")
        opcodes = tuple(self._opcode(t) for t in root.tables(1, "operator codes"))
        buffers = tuple(self._buffer(t) for t in root.tables(4, "buffers"))
        subgraphs = tuple(self._subgraph(t, len(opcodes), buffers) for t in root.tables(2, "subgraphs"))
        if not subgraphs:
            self.fail("no subgraphs")
        description = root.string(3, "description")
        return TfliteModel(self.path, self.size, description, opcodes, buffers, subgraphs)

    def _opcode(self, table: _Table) -> TfliteOpcode:
        # builtin_code (field 3) replaced the int8 deprecated_builtin_code (field 0) once ops passed 127
        code = max(table.scalar(0, struct.Struct("<b")), table.scalar(3, _I32))
        version = table.scalar(2, _I32, 1)
        return TfliteOpcode(code, table.string(1, "custom code") if code == _CUSTOM else None, version)

    def _buffer(self, table: _Table) -> int:
        _, inline = table.vector(0, 1, "buffer data")
        offset, size = table.scalar(1, _U64), table.scalar(2, _U64)
        if offset <= 1:  # 0 and 1 both mean "data inline" (1 is the converter's placeholder)
            return inline
        if offset + size > self.size:
            self.fail(f"a buffer stored at bytes {offset}..{offset + size} lies past the end of the file ({self.size})")
        return size

    def _subgraph(self, table: _Table, n_opcodes: int, buffers: tuple[int, ...]) -> TfliteSubgraph:
        name = table.string(4, "subgraph name")
        tensors = tuple(self._tensor(t, buffers) for t in table.tables(0, "tensors"))
        inputs, outputs = table.ints(1, "subgraph inputs"), table.ints(2, "subgraph outputs")
        for index in (*inputs, *outputs):
            if not 0 <= index < len(tensors):
                self.fail(f"subgraph {_show(name)} names tensor {index} as an input or output; it has {len(tensors)}")
        operators = tuple(self._operator(t, n_opcodes, len(tensors)) for t in table.tables(3, "operators"))
        return TfliteSubgraph(name, tensors, inputs, outputs, operators)

    def _tensor(self, table: _Table, buffers: tuple[int, ...]) -> TfliteTensor:
        name = table.string(3, "tensor name")
        shape = table.ints(0, "tensor shape", MAX_RANK)
        signature = table.ints(7, "tensor shape signature", MAX_RANK) or None
        code = table.scalar(1, _U8)
        dtype, bits = _TYPES.get(code, ("", 0))
        buffer = table.scalar(2, _U32)
        quant = table.table(4, "quantization")
        scales = 0
        if quant is not None:
            for field_id, what in ((0, "min"), (1, "max"), (2, "scale"), (3, "zero point")):
                _, count = quant.vector(field_id, 8 if field_id == 3 else 4, f"quantization {what}")
                scales = count if field_id == 2 else scales
        sparse, variable = table.ref(6) is not None, bool(table.scalar(5, _U8))
        tensor = TfliteTensor(name, shape, signature, dtype, bits, buffer, scales > 0, sparse, variable)
        self._check_tensor(tensor, code, buffers)
        return tensor

    def _check_tensor(self, tensor: TfliteTensor, code: int, buffers: tuple[int, ...]) -> None:
        label = f"tensor {_show(tensor.name)}"
        if not tensor.dtype:
            self.fail(f"{label} has unknown type {code} (written by a newer converter?)")
        if tensor.buffer >= len(buffers):
            self.fail(f"{label} uses buffer {tensor.buffer}; the model has {len(buffers)}")
        # -1 marks a dynamic dimension (in the signature; some converters also leave it in the shape)
        if any(d < -1 for d in (*tensor.shape, *(tensor.signature or ()))) or (
            tensor.signature is not None and len(tensor.signature) != len(tensor.shape)
        ):
            self.fail(f"{label} has an impossible shape {list(tensor.shape)} (signature {tensor.signature})")
        elements = 1
        for dim in tensor.shape:
            elements *= max(dim, 1)
        nbytes = (elements * max(tensor.bits, 8) + 7) // 8
        if nbytes > MAX_TENSOR_BYTES:
            self.fail(f"{label} declares shape {tensor.shape}: {nbytes} bytes, more than {MAX_TENSOR_BYTES >> 30} GiB")
        stored = buffers[tensor.buffer] if tensor.buffer else 0
        if stored and tensor.bits and not tensor.sparse and -1 not in tensor.shape:
            packed = (elements * tensor.bits + 7) // 8
            # sub-byte types are stored packed by recent converters, one per byte by older ones
            if stored not in {packed, elements if tensor.bits < 8 else packed}:
                self.fail(
                    f"{label} declares {tensor.dtype}{list(tensor.shape)} = {packed} bytes, its data has {stored}"
                )

    def _operator(self, table: _Table, n_opcodes: int, n_tensors: int) -> TfliteOperator:
        opcode = table.scalar(0, _U32)
        if opcode >= n_opcodes:
            self.fail(f"an operator uses opcode {opcode}; the model has {n_opcodes}")
        inputs, outputs = table.ints(1, "operator inputs"), table.ints(2, "operator outputs")
        for index in (*inputs, *outputs, *table.ints(8, "operator intermediates")):
            if not -1 <= index < n_tensors:
                self.fail(f"an operator refers to tensor {index}; the subgraph has {n_tensors}")
        table.vector(5, 1, "custom options")
        big_offset, big_size = table.scalar(9, _U64), table.scalar(10, _U64)
        if big_offset > 1 and big_offset + big_size > self.size:
            self.fail("custom options stored past the end of the file")
        options: dict[str, int] = {}
        for field_id in (4, 12):  # builtin_options and builtin_options_2: headers checked, fields read lazily
            table.table(field_id, "builtin options")
        if table.scalar(3, _U8) == _BATCH_MATMUL_OPTIONS:
            opts = table.table(4, "batch matmul options")
            if opts is not None:
                options = {"adj_x": opts.scalar(0, _U8), "adj_y": opts.scalar(1, _U8)}
        return TfliteOperator(opcode, inputs, outputs, options)
