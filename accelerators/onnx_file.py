"""Checks an ONNX file before anything trusts it: hostile files get one line naming the problem.

The file is parsed as a protobuf without following its external-data references; every tensor it
declares (initializers, Constant nodes, attributes of nodes in subgraphs and functions) is then
checked: its declared size against the bytes it carries, and each external-data reference against
the model's folder (no absolute paths, no ``..``, no symlinks, nothing resolving outside, offsets
within the data file). Only after every check passes is external data read, and only as much as the
caller asks for. Nothing here allocates more than the file's own size plus the data it loads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import onnx

from accelerators.errors import ModelLoadError

GiB = 1 << 30
MAX_FILE_BYTES = 2 * GiB  # protobuf refuses messages over 2 GiB; so does every ONNX runtime
MAX_TENSOR_BYTES = 4 * GiB  # one tensor above this is hostile or not an edge model
SMALL_EXTERNAL_BYTES = 64 << 10  # "small": enough for shapes, axes and scales that shape inference reads

ExternalData = Literal["all", "small", "none"]

# data_type -> (numpy-style dtype name, bits per element); sub-byte types are packed in raw_data
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    onnx.TensorProto.FLOAT: ("float32", 32),
    onnx.TensorProto.UINT8: ("uint8", 8),
    onnx.TensorProto.INT8: ("int8", 8),
    onnx.TensorProto.UINT16: ("uint16", 16),
    onnx.TensorProto.INT16: ("int16", 16),
    onnx.TensorProto.INT32: ("int32", 32),
    onnx.TensorProto.INT64: ("int64", 64),
    onnx.TensorProto.STRING: ("string", 0),  # variable size: counted from string_data
    onnx.TensorProto.BOOL: ("bool", 8),
    onnx.TensorProto.FLOAT16: ("float16", 16),
    onnx.TensorProto.DOUBLE: ("float64", 64),
    onnx.TensorProto.UINT32: ("uint32", 32),
    onnx.TensorProto.UINT64: ("uint64", 64),
    onnx.TensorProto.COMPLEX64: ("complex64", 64),
    onnx.TensorProto.COMPLEX128: ("complex128", 128),
    onnx.TensorProto.BFLOAT16: ("bfloat16", 16),
    onnx.TensorProto.FLOAT8E4M3FN: ("float8", 8),
    onnx.TensorProto.FLOAT8E4M3FNUZ: ("float8", 8),
    onnx.TensorProto.FLOAT8E5M2: ("float8", 8),
    onnx.TensorProto.FLOAT8E5M2FNUZ: ("float8", 8),
    onnx.TensorProto.FLOAT8E8M0: ("float8", 8),
    onnx.TensorProto.UINT4: ("uint4", 4),
    onnx.TensorProto.INT4: ("int4", 4),
    onnx.TensorProto.FLOAT4E2M1: ("float4", 4),
    onnx.TensorProto.UINT2: ("uint2", 2),
    onnx.TensorProto.INT2: ("int2", 2),
    onnx.TensorProto.FLOAT6E2M3: ("float6", 6),
    onnx.TensorProto.FLOAT6E3M2: ("float6", 6),
}

# Other formats people hand us by mistake: (offset, magic, what it is)
_MAGIC = (
    (4, b"TFL3", "a TFLite flatbuffer (use a .tflite name)"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"PK\x03\x04", "a zip archive (a PyTorch checkpoint? export it with torch.onnx.export)"),
    (0, b"\x1f\x8b", "gzip-compressed (decompress it first)"),
    (0, b"\x89HDF", "an HDF5 file (a Keras model?)"),
    (0, b"\x93NUMPY", "a numpy array"),
    (0, b"\x7fELF", "an executable"),
    (0, b"<?xml", "an XML file (an OpenVINO IR?)"),
)


def check_onnx_file(path: Path) -> None:
    """Raise ModelLoadError (one line, naming ``path``) unless ``path`` is a well-formed ONNX model."""
    load_onnx_checked(path, external="none")


def load_onnx_checked(path: Path, *, external: ExternalData = "all") -> onnx.ModelProto:
    """Parse and check ``path``; then load its external data: every tensor, the small ones, or none.

    Tensors left external keep their (checked) references; their dims and dtype are still there.
    """
    model = _parse(path, _read(path))
    base = path.absolute().parent  # not resolved: runtimes look next to the path they were given
    sizes: dict[Path, int] = {}
    pending: list[tuple[onnx.TensorProto, Path, int, int]] = []
    for where, tensor, carries_data in _tensors(model):
        nbytes = _check_tensor(path, where, tensor, carries_data)
        if carries_data and tensor.data_location == onnx.TensorProto.EXTERNAL:
            pending.append((tensor, *_check_external(path, base, where, tensor, nbytes, sizes)))
    wanted = [p for p in pending if external == "all" or (external == "small" and p[3] <= SMALL_EXTERNAL_BYTES)]
    total = sum(length for _, _, _, length in wanted)
    if total > MAX_FILE_BYTES:
        raise _error(path, f"its external data ({total / GiB:.1f} GiB) is too large to load into one protobuf")
    for tensor, file, offset, length in wanted:
        with file.open("rb") as fh:  # the file was checked above; opened again per tensor to keep it simple
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def tensor_elements(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's elements take when stored packed (raw_data); strings count their UTF-8 bytes."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = ONNX_DTYPES.get(tensor.data_type, ("", 32))[1]
    return -(-tensor_elements(tensor) * bits // 8)


def _error(path: Path, what: str) -> ModelLoadError:
    text = f"{path}: {what}"
    return ModelLoadError(text.replace("\r", "\\r").replace("\n", "\\n"))


def _q(name: str, limit: int = 60) -> str:
    """A name from the file, quoted and shortened: it is untrusted text going into a one-line message."""
    return repr(name if len(name) <= limit else name[: limit - 3] + "...")


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise _error(path, "not a regular file; give the path of a .onnx model file")
        if size == 0:
            raise _error(path, "the model file is empty (0 bytes); re-export or re-download it")
        if size > MAX_FILE_BYTES:
            raise _error(
                path,
                f"the file is {size / GiB:.1f} GiB, over the {MAX_FILE_BYTES // GiB} GiB protobuf limit; "
                "save the weights as ONNX external data",
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise _error(path, "no such model file") from None
    except OSError as exc:
        raise _error(path, f"cannot read the model file: {exc.strerror or exc}") from exc


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError (an untyped module) or whatever hostile bytes provoke
        why = f"the protobuf cannot be parsed ({exc}): the file is truncated or corrupt"
        raise _error(path, _not_onnx(data, why)) from None
    if not model.HasField("graph"):
        if model.ir_version == 0 and not model.opset_import:
            raise _error(path, _not_onnx(data, "it has none of an ONNX model's header fields"))
        raise _error(path, "the ONNX model has no graph; re-export it")
    return model


def _not_onnx(data: bytes, otherwise: str) -> str:
    for offset, magic, what in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return f"not an ONNX model: it is {what}"
    return f"not an ONNX model: {otherwise}; re-export or re-download it"


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    """Every tensor the model stores, with where it is and whether it carries data (else only its size
    matters), through subgraphs and functions, without recursion."""
    graphs = [model.graph, *(g for t in model.training_info for g in (t.initialization, t.algorithm))]
    nodes: list[onnx.NodeProto] = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            for tensor in graph.initializer:
                yield f"initializer {_q(tensor.name)}", tensor, True
            for sparse in graph.sparse_initializer:
                yield from _sparse(f"sparse initializer {_q(sparse.values.name)}", sparse)
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        where = f"{node.op_type} node {_q(node.name or (node.output[0] if node.output else ''))}"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield where, attr.t, True
            for tensor in attr.tensors:
                yield where, tensor, True
            if attr.HasField("sparse_tensor"):
                yield from _sparse(where, attr.sparse_tensor)
            for sparse in attr.sparse_tensors:
                yield from _sparse(where, sparse)
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def _sparse(where: str, sparse: onnx.SparseTensorProto) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    # Runtimes densify sparse initializers at load time, so the dense size must be sane too.
    yield f"{where} (dense)", onnx.TensorProto(dims=sparse.dims, data_type=sparse.values.data_type), False
    yield where, sparse.values, True
    yield where, sparse.indices, True


def _check_tensor(path: Path, where: str, tensor: onnx.TensorProto, carries_data: bool) -> int:
    """Check dims, dtype and carried bytes; return the declared size in bytes."""
    if any(d < 0 for d in tensor.dims):
        raise _error(path, f"{where} has negative dimensions {list(tensor.dims)}; the file is corrupt")
    if tensor.data_type not in ONNX_DTYPES:
        raise _error(path, f"{where} has unknown data type {tensor.data_type}; re-export it with a standard dtype")
    name, bits = ONNX_DTYPES[tensor.data_type]
    elements = tensor_elements(tensor)
    declared = tensor_nbytes(tensor)
    if (bits or 8) * elements > 8 * MAX_TENSOR_BYTES:
        raise _error(
            path, f"{where} declares shape {list(tensor.dims)} ({_size(-(-elements * (bits or 8) // 8))} of {name}), "
            f"over the {MAX_TENSOR_BYTES // GiB} GiB limit for one tensor; the file is corrupt or hostile",
        )  # fmt: skip
    if not carries_data:
        return declared
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if bits == 0:
            raise _error(path, f"{where} stores strings as external data, which ONNX does not allow")
        return declared
    if tensor.HasField("raw_data"):
        carried, unit, expected = len(tensor.raw_data), "bytes", declared
        # 6-bit codes pack 4 to 3 bytes; writers may or may not trim the last group
        ok = declared <= carried <= -(-elements // 4) * 3 if bits == 6 else carried == expected
    else:
        carried, unit, expected = _typed_count(tensor), "values", _typed_expected(tensor, elements)
        ok = carried == expected
    if not ok:
        raise _error(
            path,
            f"{where} declares shape {list(tensor.dims)} of {name} ({expected} {unit}) but carries {carried} {unit}; "
            "the file is corrupt or hostile",
        )
    return declared


def _typed_count(tensor: onnx.TensorProto) -> int:
    return (
        len(tensor.float_data)
        + len(tensor.int32_data)
        + len(tensor.string_data)
        + len(tensor.int64_data)
        + len(tensor.double_data)
        + len(tensor.uint64_data)
    )


def _typed_expected(tensor: onnx.TensorProto, elements: int) -> int:
    """How many values the type-specific field must hold for ``elements`` elements."""
    kind = tensor.data_type
    if kind in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        return 2 * elements  # real and imaginary parts
    bits = ONNX_DTYPES[kind][1]
    if bits in (2, 4):  # packed into int32_data like raw bytes, one byte per int32
        return -(-elements * bits // 8)
    return elements


def _check_external(
    path: Path, base: Path, where: str, tensor: onnx.TensorProto, declared: int, sizes: dict[Path, int]
) -> tuple[Path, int, int]:
    """Check one external-data reference; return (data file, offset, length)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    prefix = f"{where} refers to external data {_q(location, 200)}"
    if not location:
        raise _error(path, f"{where} is marked external but names no data file; re-export it")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or location[:1] in "/\\":
        raise _error(path, f"{prefix}, an absolute path; external data must lie in the model's folder")
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        raise _error(path, f"{prefix}, which climbs out with '..'; external data must lie in the model's folder")
    file = base / location
    if file.is_symlink():
        raise _error(path, f"{prefix}, which is a symlink; copy the data file into the model's folder")
    real = file.resolve()
    if not real.is_relative_to(base.resolve()):
        raise _error(path, f"{prefix}, which resolves outside the model's folder")
    if not real.is_file():
        raise _error(path, f"{prefix}, which does not exist; copy it next to the model")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise _error(path, f"{prefix} with a non-numeric offset or length; the file is corrupt") from None
    if real not in sizes:
        sizes[real] = real.stat().st_size
    size = sizes[real]
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise _error(
            path, f"{prefix} at bytes {offset}..{offset + length}, beyond the end of the {size}-byte file; "
            "the data file is truncated or does not belong to this model",
        )  # fmt: skip
    if length != declared:
        raise _error(
            path, f"{prefix} of {length} bytes, but its shape {list(tensor.dims)} needs {declared} bytes; "
            "the file is corrupt or hostile",
        )  # fmt: skip
    return real, offset, length


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:.3g} GiB" if nbytes >= GiB else f"{nbytes} bytes"
