"""Decoding of inputs that arrive as whole messages (MQTT payloads, HTTP bodies): JPEG/PNG images, ``.npy``
tensors and JSON numbers. Anything malformed raises BadPayload, which the sources count and skip."""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.sources.base import BadInput

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs rather than eat the device's memory
IMAGE_FORMATS = ("JPEG", "PNG")


BadPayload = BadInput  # an input message that cannot be decoded


def decode_image(data: bytes) -> np.ndarray:
    """JPEG or PNG bytes → (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise BadPayload("image too large", f"{img.width}x{img.height} pixels")
            img.load()
            return np.asarray(img.convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadPayload("not a JPEG or PNG image", str(exc)[:80]) from None


def decode_npy(data: bytes) -> np.ndarray:
    """The bytes of a ``.npy`` file → its array; the header is checked against the data before any memory is
    allocated, so that a hostile header cannot ask for terabytes."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise BadPayload("not a .npy tensor", f".npy format version {version} is not supported")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise BadPayload("not a .npy tensor", str(exc)[:80]) from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BadPayload("not a .npy tensor", f"dtype {dtype} is not numeric")
    body = data[buf.tell() :]
    expected = math.prod(shape) * dtype.itemsize
    if len(body) != expected:
        raise BadPayload("not a .npy tensor", f"shape {shape} needs {expected} bytes of data, got {len(body)}")
    flat = np.frombuffer(body, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").copy()  # a writable array of its own


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadPayload("not text", "not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadPayload("bad JSON", str(exc)[:80]) from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a reading")  # NaN or Infinity would poison every window it is in


def json_number(value: Any) -> float | None:
    """A finite float from a JSON number; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def json_tensor(item: Any) -> np.ndarray:
    """A list, or nested lists, of JSON numbers → a float32 tensor of their shape."""
    if not isinstance(item, list) or not item:
        raise BadPayload("not a tensor", "expected a non-empty list (or nested lists) of numbers")
    pending = [item]
    while pending:  # booleans and strings would be converted silently by numpy: refuse them first
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
        elif json_number(value) is None:
            raise BadPayload("not a tensor", f"{value!r:.40} is not a finite number")
    try:
        tensor = np.asarray(item, dtype=np.float64)
    except (ValueError, OverflowError):
        raise BadPayload("not a tensor", "the nested lists are not all of the same length") from None
    if tensor.size == 0:
        raise BadPayload("not a tensor", "no numbers")
    with np.errstate(over="ignore"):
        single = tensor.astype(np.float32)  # same shape as the nested lists
    if not np.isfinite(single).all():
        raise BadPayload("not a tensor", "a number is out of float32 range")
    return single
