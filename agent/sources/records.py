"""Lines of CSV or JSON sensor readings: bytes → lines → rows of floats → windows, for the file/FIFO and
serial sources."""

from __future__ import annotations

import csv
import json
import logging
import math
from typing import Literal

import numpy as np
from pydantic import Field

from agent.errors import SourceError
from agent.schema import Section
from agent.sources.base import BadInput
from agent.sources.payloads import json_number

log = logging.getLogger(__name__)

MAX_LINE = 65_536  # bytes; a device that never sends a newline must not fill the memory


class LineFormat(Section):
    """The fields shared by every source of text lines."""

    format: Literal["csv", "json"] = Field("csv", description="csv: comma-separated values; json: one object a line.")
    fields: list[str] = Field(
        default_factory=list,
        description="Columns (CSV header names, or 0-based column numbers when there is no header) or JSON keys "
        "to read, in this order; empty: every numeric column of the first reading.",
    )
    header: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Whether a CSV's first line names the columns; auto: yes when none of its cells is a number.",
    )
    window: int = Field(1, ge=1, description="Readings per frame: the tensor is (window, number of fields).")
    hop: int | None = Field(
        None, ge=1, description="Readings from the start of one window to the start of the next; unset: window."
    )

    @property
    def step(self) -> int:
        return self.hop if self.hop is not None else self.window


BadLine = BadInput  # a line that is not a reading


class LineSplitter:
    """Cuts a byte stream into lines; a line longer than MAX_LINE comes out once, cut short (and fails to parse)."""

    def __init__(self) -> None:
        self._pending = b""
        self._overlong = False  # dropping the rest of a line that was already reported

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, rest = (self._pending + chunk).split(b"\n")
        if self._overlong and lines:
            lines.pop(0)
            self._overlong = False
        if len(rest) > MAX_LINE:
            if not self._overlong:
                lines.append(rest)
            self._overlong = True
            rest = b""
        self._pending = rest
        return lines

    def flush(self) -> list[bytes]:
        """The last line, when the input ended without a newline."""
        rest, self._pending = self._pending, b""
        return [rest] if rest.strip() and not self._overlong else []


def _number(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise BadLine("not a number", f"{name}={value[:40]!r}") from None
    if not math.isfinite(number):  # NaN or inf would poison every window it is in
        raise BadLine("not a number", f"{name}={value[:40]!r}")
    return number


class LineParser:
    """Turns one line into a row of floats, one per field; a new parser for each pass over the input."""

    def __init__(self, fmt: LineFormat) -> None:
        self.fmt = fmt
        self.fields = list(fmt.fields)  # resolved on the first reading when empty
        self._first = True
        self._names: list[str] | None = None  # the CSV header
        self._columns: list[int] | None = None

    def parse(self, raw: bytes) -> list[float] | None:
        """The row of a reading, None for a blank or header line; BadLine for anything else."""
        if len(raw) > MAX_LINE:
            raise BadLine("line too long", f"over {MAX_LINE} bytes without a newline")
        try:
            text = raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            raise BadLine("not text", "not UTF-8") from None
        if not text:
            return None
        return self._csv(text) if self.fmt.format == "csv" else self._json(text)

    def _csv(self, text: str) -> list[float] | None:
        cells = [cell.strip() for cell in next(csv.reader([text]))]
        if self._first:
            self._first = False
            numeric = any(_is_number(cell) for cell in cells)
            if self.fmt.header == "yes" or (self.fmt.header == "auto" and not numeric):
                self._names = cells
                return None
        if self._columns is None:
            self._columns = self._pick_columns(cells)
        row = []
        for column, name in zip(self._columns, self.fields, strict=True):
            if column >= len(cells):
                raise BadLine("missing field", f"no column {name!r} (the line has {len(cells)})")
            row.append(_number(cells[column], name))
        return row

    def _pick_columns(self, cells: list[str]) -> list[int]:
        names = self._names if self._names is not None else [str(i) for i in range(len(cells))]
        if self.fields:
            missing = [name for name in self.fields if name not in names]
            if missing:
                raise SourceError(
                    f"column(s) {', '.join(missing)} not found; the columns are: {', '.join(names)} "
                    "(without a header, name columns by number from 0)"
                )
            return [names.index(name) for name in self.fields]
        columns = [i for i, cell in enumerate(cells[: len(names)]) if _is_number(cell)]
        if not columns:
            raise BadLine("not a number", "no numeric column")
        self.fields = [names[i] for i in columns]
        return columns

    def _json(self, text: str) -> list[float]:
        try:
            item = json.loads(text)
        except (ValueError, RecursionError):
            raise BadLine("bad JSON", text[:40]) from None
        if not isinstance(item, dict):
            raise BadLine("bad JSON", "not an object")
        if not self.fields:
            self.fields = [key for key, value in item.items() if json_number(value) is not None]
            if not self.fields:
                raise BadLine("not a number", "no numeric value")
        row = []
        for name in self.fields:
            if name not in item:
                raise BadLine("missing field", f"no key {name!r}")
            number = json_number(item[name])
            if number is None:
                raise BadLine("not a number", f"{name}={item[name]!r:.40}")
            row.append(number)
        return row


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


class Windower:
    """Groups rows into windows of ``window`` rows whose starts are ``hop`` rows apart."""

    def __init__(self, window: int, hop: int) -> None:
        self.window = window
        self.hop = hop
        self._rows: list[list[float]] = []
        self._start = 0  # index of the first buffered row among all rows pushed
        self._seen = 0
        self._skip = 0  # rows to drop when the hop is longer than the window

    def push(self, row: list[float]) -> tuple[np.ndarray, int] | None:
        """A full window (window, fields) float32 and the index of its first row, or None."""
        index = self._seen
        self._seen += 1
        if self._skip:
            self._skip -= 1
            return None
        if not self._rows:
            self._start = index
        self._rows.append(row)
        if len(self._rows) < self.window:
            return None
        window = np.asarray(self._rows, dtype=np.float32)  # (window, fields)
        start = self._start
        if self.hop < self.window:
            del self._rows[: self.hop]
            self._start += self.hop
        else:
            self._rows.clear()
            self._skip = self.hop - self.window
        return window, start
