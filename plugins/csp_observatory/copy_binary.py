"""Rows as PostgreSQL's binary COPY reads them, built column by column with Arrow and NumPy (no per-row Python).

:func:`copy_table` turns a file's frame into an Arrow table of the feed table's columns (typed, the lineage columns
dictionary-encoded, the point as EWKB); :func:`binary_copy_rows` turns that into one binary COPY tuple per row, each
value as its SQL type's binary input reads it (``geom``: geometry_recv reads EWKB as
``ST_SetSRID(ST_MakePoint(x, y), 27700)``). The values stored are exactly the CSV COPY's of earlier versions
(``tests/integration/test_loading.py`` reads them back), including a ``real`` that a cast to float32 would round
otherwise (:func:`real_values`). ``loading.py`` reserves the fids and runs the COPY.
"""
from __future__ import annotations

import io
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from csp_observatory import ddl
from csp_observatory.schema import FeedSchema

#: EWKB of a little-endian point with an SRID (type 0x20000001), before its two coordinates.
_EWKB_POINT = bytes.fromhex("0101000020") + ddl.SRID.to_bytes(4, "little")


def _arrow_column(s: pd.Series, column: ddl.Column) -> pa.Array:
    """One frame column as Arrow values that COPY reads into the column's SQL type (nulls as empty fields)."""
    if column.sql_type == "integer":
        if column.name in ("sanitised_easting", "sanitised_northing"):
            # Centroids can arrive as floats (e.g. 409123.0); the contract says whole metres.
            s = pd.to_numeric(s).round()
        # Int64 refuses a non-whole value rather than truncating it silently.
        return pa.array(pd.to_numeric(s).astype("Int64"), pa.int64())
    if column.sql_type in ("double precision", "real"):
        return pa.array(pd.to_numeric(s).astype("Float64"), pa.float64())
    if column.sql_type == "date":
        return pc.cast(pa.array(pd.to_datetime(s)), pa.date32(), safe=False)
    if column.sql_type == "boolean":
        return pa.array(s.astype("boolean"), pa.bool_())
    text = pa.array(s.astype("string"), pa.string())
    # An empty text is loaded as NULL, as a missing value (what the CSV of earlier versions did).
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _ewkb_points(x: np.ndarray, y: np.ndarray) -> pa.Array:
    """EWKB of Point(x, y) in SRID 27700 per row (what ST_SetSRID(ST_MakePoint(x, y), 27700) is, and what PostGIS's
    binary input, geometry_recv, reads); null where x or y is missing (NaN)."""
    rec = np.empty(len(x), dtype=[("head", "S9"), ("x", "<f8"), ("y", "<f8")])   # packed: 25 bytes a point
    rec["head"], rec["x"], rec["y"] = _EWKB_POINT, x, y
    return pc.if_else(pa.array(np.isnan(x) | np.isnan(y)), pa.scalar(None, pa.binary()), fixed_binary(rec))


def copy_table(schema: FeedSchema, feed_file: Any, frame: pd.DataFrame, columns: list[ddl.Column], supply_id: str,
               period: str, sha256: str, loaded_at: datetime) -> pa.Table:
    """The rows as COPY takes them, in the frame's order: its columns typed, the lineage (``loaded_at`` an aware
    datetime; each lineage column one value, dictionary-encoded) and geom as EWKB."""
    values = {c.name: _arrow_column(frame[c.name], c) for c in columns}
    x_name, y_name = ddl.point_columns(schema)
    x = pc.cast(values[x_name], pa.float64()).to_numpy(zero_copy_only=False) if x_name in values else None
    y = pc.cast(values[y_name], pa.float64()).to_numpy(zero_copy_only=False) if y_name in values else None
    n = len(frame)
    if x is None or y is None:
        x = y = np.full(n, np.nan)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    lineage = {"supply_id": (supply_id, pa.string()), "period": (period, pa.string()),
               "source_sha256": (sha256, pa.string()), "loaded_at": (loaded_at, pa.timestamp("us", "UTC"))}
    same = pa.array(np.zeros(n, dtype=np.int32))      # one value for every row: not n copies of it
    for name, (value, kind) in lineage.items():
        values[name] = pa.DictionaryArray.from_arrays(same, pa.array([value], kind))
    values["geom"] = _ewkb_points(x, y)
    return pa.table(values)


#: The start of a binary COPY's data (signature, flags, no header extension) and its end (a tuple of -1 fields).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
#: A NULL field of binary COPY: its length, -1, and no data.
_NULL_FIELD = b"\xff\xff\xff\xff"
#: 2000-01-01, PostgreSQL's epoch for binary dates and timestamps, in days and microseconds after 1970-01-01.
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
#: SQL type -> the big-endian NumPy type of its binary wire value (fixed width).
_BINARY_TYPES = {"integer": ">i4", "bigint": ">i8", "double precision": ">f8", "real": ">f4", "date": ">i4",
                 "boolean": "u1", "timestamptz": ">i8"}


def fixed_binary(rec: np.ndarray) -> pa.Array:
    """Each element of a NumPy array as one Arrow binary value of its bytes (zero copy, then one cast)."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(rec.itemsize), len(rec),
                                                [None, pa.py_buffer(rec)]).cast(pa.binary())


def fixed_fields(values: np.ndarray, wire: str, null: np.ndarray | None) -> pa.Array:
    """Binary COPY fields of fixed width: each value's length (int32) and its big-endian bytes; NULL where ``null``."""
    rec = np.empty(len(values), dtype=[("len", ">i4"), ("value", wire)])
    rec["len"], rec["value"] = np.dtype(wire).itemsize, values
    fields = fixed_binary(rec)
    if null is None or not null.any():
        return fields
    return pc.if_else(pa.array(null), pa.scalar(_NULL_FIELD, pa.binary()), fields)


def _var_fields(data: pa.Array) -> pa.Array:
    """Binary COPY fields of text or bytes: each value's length (int32) and its bytes; NULL for a null."""
    data = data.cast(pa.binary())
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32, count=len(data) + 1, offset=data.offset * 4)
    lengths = fixed_binary(np.diff(offsets).astype(">i4"))
    return pc.binary_join_element_wise(lengths, data, b"").fill_null(_NULL_FIELD)


def real_values(values: np.ndarray) -> np.ndarray:
    """float64 -> float32 as PostgreSQL's float4in reads the float64's shortest decimal text (what the CSV COPY
    sent): the same except when the float64 lies exactly halfway between two float32s, where the cast rounds to even
    and the text rounds by its digits; and float4in refuses a value that overflows or underflows to zero."""
    with np.errstate(over="ignore"):        # an overflow is refused below, as float4in refused it
        narrow = values.astype(np.float32)
    back = narrow.astype(np.float64)
    finite = np.isfinite(values)
    bad = finite & (~np.isfinite(narrow) | ((narrow == 0) & (values != 0)))
    if bad.any():
        raise ValueError(f"value out of range for type real: {values[bad][0]!r}")
    toward = np.where(values > back, np.float32(np.inf), np.float32(-np.inf))
    other = np.nextafter(narrow, toward)
    ties = np.flatnonzero(finite & (back != values) & ((back + other.astype(np.float64)) / 2 == values))
    for i in ties:              # about 1 in 2**29 values: exact decimal arithmetic on their text
        text, exact = Decimal(repr(float(values[i]))), Decimal(float(values[i]))
        if text != exact:
            narrow[i] = max(narrow[i], other[i]) if text > exact else min(narrow[i], other[i])
    return narrow


def _binary_fields(column: pa.Array, sql_type: str) -> pa.Array:
    """One column's values as binary COPY fields of its SQL type (the types :func:`copy_table` produces)."""
    wire = _BINARY_TYPES.get(sql_type)
    if wire is None:        # text, and geometry as EWKB: geometry_recv reads it as geometry_in reads hex EWKB
        return _var_fields(column)
    null = np.asarray(column.is_null()) if column.null_count else None
    if sql_type == "date":
        values = column.cast(pa.int32()).fill_null(0).to_numpy() - _PG_EPOCH_DAYS
    elif sql_type == "timestamptz":
        values = column.cast(pa.timestamp("us", "UTC")).cast(pa.int64()).fill_null(0).to_numpy() - _PG_EPOCH_US
    elif sql_type == "boolean":
        values = column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8)
    elif sql_type == "real":
        values = real_values(column.fill_null(0.0).to_numpy())
    else:
        values = column.fill_null(0).to_numpy()
        if sql_type == "integer" and len(values) and (values.min() < -2**31 or values.max() >= 2**31):
            # what integer's input says of such a value in a CSV COPY
            raise ValueError(f"value out of range for type integer: {values[(values < -2**31) | (values >= 2**31)][0]}")
    return fixed_fields(values, wire, null)


class Chunks(io.RawIOBase):
    """The parts of a COPY's data read in order as one stream, without joining them in memory first."""

    def __init__(self, parts: list[Any]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while self._parts and not len(self._parts[0]):
            self._parts.pop(0)
        if not self._parts:
            return b""
        head = self._parts[0]
        size = len(head) if size is None or size < 0 else size
        self._parts[0] = head[size:]
        return bytes(head[:size])


def _constant(column: pa.Array) -> pa.Array | None:
    """The dictionary (one value) of a dictionary column of one entry and no null (the lineage); None for any other
    column."""
    if isinstance(column, pa.DictionaryArray) and len(column.dictionary) == 1 and not column.null_count:
        return column.dictionary
    return None


def binary_copy_rows(table: pa.Table, sql_types: Mapping[str, str], more: int = 0) -> pa.Array:
    """Each row of ``table`` as one tuple of binary COPY (its field count, then each field), built column by column
    with Arrow and NumPy: each value as its SQL type's binary input reads it (``sql_types``: column -> SQL type).
    ``more``: fields appended to each tuple later (counted now)."""
    count = pa.scalar((table.num_columns + more).to_bytes(2, "big"), pa.binary())
    fields: list[Any] = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        one = _constant(column)
        # A constant column's field is the same bytes in every row: encoded once, joined as a scalar.
        fields.append(_binary_fields(one, sql_types[name])[0] if one is not None else
                      _binary_fields(column, sql_types[name]))
    if not table.num_rows:
        return pa.array([], pa.binary())
    return pc.binary_join_element_wise(count, *fields, b"")


def values_bytes(rows: pa.Array) -> memoryview:
    """The bytes of a binary (or large binary) array's values, end to end (its values buffer, no copy)."""
    wide = pa.types.is_large_binary(rows.type)
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64 if wide else np.int32, count=len(rows) + 1,
                            offset=rows.offset * (8 if wide else 4))
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]


def take_from_chunks(chunks: list[pa.Array], size: int, positions: np.ndarray) -> pa.Array:
    """The values at ``positions`` of the arrays ``chunks`` (each ``size`` long but the last) put end to end, in
    that order; without joining the chunks first (Arrow's take on a chunked array copies them all, at every call)."""
    which = positions // size
    parts, where = [], []
    for c in np.unique(which):
        picked = np.flatnonzero(which == c)
        parts.append(chunks[c].take(pa.array(positions[picked] - c * size)))
        where.append(picked)
    gathered = pa.concat_arrays(parts)
    back = np.empty(len(positions), dtype=np.int64)
    back[np.concatenate(where)] = np.arange(len(positions))
    return gathered.take(pa.array(back))
