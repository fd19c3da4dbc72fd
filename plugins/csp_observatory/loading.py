"""Load one supply into PostGIS in one transaction: its rows, rejected rows, validation results and ledger.

Each feed table is partitioned, one partition per supply (``partitions.py``, issue 9). A load COPYs each file's
rows into a fresh table with no index, then builds its indexes (the record's key, ``fid``, the GiST index on
``geom``: each built once over the whole supply, instead of kept up to date row by row), then drops the
partition of an earlier load of the supply and attaches the new one. All of it is one transaction, so a supply is
either wholly there (once) or not at all, readers never see part of it, and a failure leaves no table behind.
The rows go in PostgreSQL's binary COPY format, built column by column with Arrow and NumPy (no per-row Python,
and no CSV for the server to split and parse): each value as its type's binary input reads it, the lineage columns,
``fid`` (a block reserved from the table's sequence, in the order of the record's key) and the point as EWKB
(``geom``: geometry_recv reads it as ``ST_SetSRID(ST_MakePoint(x, y), 27700)``). The values stored are exactly the
CSV COPY's of earlier versions (``tests/integration/test_loading.py`` reads them back), including a ``real`` that a
cast to float32 would round otherwise (:func:`_real`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from csp_observatory import ddl, partitions
from csp_observatory.report_privacy import redact_reason, strip_row_content, validation_expectations
from csp_observatory.schema import FeedSchema

log = logging.getLogger(__name__)

#: Rows per COPY statement: bounds the CSV text held in memory at once (about 50 MB), whatever the supply's size.
COPY_BATCH_ROWS = 200_000
#: A load of at least this many rows into a table refreshes its planner statistics in the load's transaction.
ANALYZE_MIN_ROWS = 10_000
#: How long a load waits for a feed table's lock to swap a supply's partition (PostgreSQL's lock_timeout syntax).
SWAP_LOCK_TIMEOUT = os.environ.get("CSP_SWAP_LOCK_TIMEOUT", "60s")
#: EWKB of a little-endian point with an SRID (type 0x20000001), before its two coordinates.
_EWKB_POINT = bytes.fromhex("0101000020") + ddl.SRID.to_bytes(4, "little")

class FrameMismatch(ValueError):
    """A frame's columns are not its table's: it must not be loaded (it may carry personal data)."""


@dataclass
class LoadResult:
    """What one supply load wrote."""

    supply_id: str
    rows: dict[str, int] = field(default_factory=dict)        # "<schema>.<table>" -> rows inserted
    replaced: dict[str, int] = field(default_factory=dict)    # rows of an earlier load of the supply removed
    rejected_rows: int = 0
    validation_results: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest and the report."""
        return asdict(self)


class LazyFrames(Mapping[str, pd.DataFrame]):
    """A supply's frames, each read when asked and never kept, so that a load holds one file's rows at a time
    (a 1M-offence supply's three frames together are over a gigabyte). Each frame's columns and length are kept
    from its first reading (:meth:`shape`)."""

    def __init__(self, names: Iterable[str], read: Callable[[str], pd.DataFrame]) -> None:
        self._names, self._read = list(names), read
        self._shapes: dict[str, tuple[list[str], int]] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._names:
            raise KeyError(name)
        frame = self._read(name)
        self._shapes[name] = (list(frame.columns), len(frame))
        return frame

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[list[str], int]:
        """(columns, rows) of a frame, read once if it has not been yet."""
        if name not in self._shapes:
            self[name]
        return self._shapes[name]


def check_frame(schema: FeedSchema, file_name: str, frame: pd.DataFrame | list[str]) -> list[str]:
    """The frame's columns (or the column names given) in table order; raise FrameMismatch if any is missing or
    unexpected."""
    feed_file = schema.file(file_name)
    expected = ddl.frame_columns(schema, feed_file)
    got = list(frame) if isinstance(frame, list) else list(frame.columns)
    extra = [c for c in got if c not in expected]
    missing = [c for c in expected if c not in got]
    if extra or missing:
        personal = [c for c in extra if c in feed_file.field_names
                    and feed_file.field(c).dropped_on_sanitising]
        msg = f"{schema.feed}/{file_name}: frame does not match table {schema.db_schema}.{feed_file.table}"
        if personal:
            msg += f"; it carries personal or exact-location columns {personal}: refusing to load"
        if extra:
            msg += f"; unexpected columns {extra}"
        if missing:
            msg += f"; missing columns {missing}"
        raise FrameMismatch(msg)
    return expected


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
    return pc.if_else(pa.array(np.isnan(x) | np.isnan(y)), pa.scalar(None, pa.binary()), _fixed_binary(rec))


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


def key_order(table: pa.Table, feed_file: Any) -> np.ndarray | None:
    """The rows' positions in the order of the record's key (the order their fids and the COPY follow); None when
    they are in that order already (partners' files usually are: then nothing is moved)."""
    key = [c for c in ddl.natural_key(feed_file) if c in table.column_names and c != "supply_id"]
    if not key:
        return None
    column = table.column(key[0]).combine_chunks() if len(key) == 1 else None
    if column is not None and pa.types.is_string(column.type) and not column.null_count:
        order = _string_order(column)
    else:
        order = pc.sort_indices(table.select(key), sort_keys=[(c, "ascending") for c in key]).to_numpy()
    return None if bool((order == np.arange(table.num_rows)).all()) else order


def _string_order(text: pa.Array) -> np.ndarray:
    """The positions of strings (no null) in ascending byte order, stable: Arrow's sort_indices of them, sooner for
    long keys that differ early (the 32-character content hash, 3x): sorted by their first 8 bytes as an integer,
    then only the runs sharing those (a record repeated: its ``-1``, ``-2``...) by the whole string."""
    n = len(text)
    values = text.buffers()[2]
    data = np.frombuffer(values, dtype=np.uint8) if values is not None and values.size else np.zeros(1, np.uint8)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=n + 1, offset=text.offset * 4)
    at = np.arange(8, dtype=np.int32)
    inside = at[None, :] < np.diff(offsets)[:, None]
    # A byte past the end counts as 0, below every byte of text ("ab" before "ab\x01"); a tie is settled below.
    picked = np.where(inside, data[np.minimum(offsets[:-1, None] + at[None, :], len(data) - 1)], 0)
    prefix = picked.astype(np.uint8).view(">u8").ravel().astype(np.uint64)      # native order: sorts 3x faster
    order = np.argsort(prefix, kind="stable")
    ordered = prefix[order]
    same = ordered[1:] == ordered[:-1]
    if same.any():
        tied = np.zeros(n, dtype=bool)
        tied[1:] |= same
        tied[:-1] |= same
        spots = np.flatnonzero(tied)
        runs = order[spots]
        # The tied runs sorted whole, together: their order among themselves is the prefixes' order already.
        order[spots] = runs[pc.sort_indices(text.take(pa.array(runs))).to_numpy()]
    return order


#: The start of a binary COPY's data (signature, flags, no header extension) and its end (a tuple of -1 fields).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
#: A NULL field of binary COPY: its length, -1, and no data.
_NULL_FIELD = b"\xff\xff\xff\xff"
#: 2000-01-01, PostgreSQL's epoch for binary dates and timestamps, in days and microseconds after 1970-01-01.
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
#: SQL type -> the big-endian NumPy type of its binary wire value (fixed width).
_BINARY_TYPES = {"integer": ">i4", "bigint": ">i8", "double precision": ">f8", "real": ">f4", "date": ">i4",
                 "boolean": "u1", "timestamptz": ">i8"}


def _fixed_binary(rec: np.ndarray) -> pa.Array:
    """Each element of a NumPy array as one Arrow binary value of its bytes (zero copy, then one cast)."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(rec.itemsize), len(rec),
                                                [None, pa.py_buffer(rec)]).cast(pa.binary())


def _fixed_fields(values: np.ndarray, wire: str, null: np.ndarray | None) -> pa.Array:
    """Binary COPY fields of fixed width: each value's length (int32) and its big-endian bytes; NULL where ``null``."""
    rec = np.empty(len(values), dtype=[("len", ">i4"), ("value", wire)])
    rec["len"], rec["value"] = np.dtype(wire).itemsize, values
    fields = _fixed_binary(rec)
    if null is None or not null.any():
        return fields
    return pc.if_else(pa.array(null), pa.scalar(_NULL_FIELD, pa.binary()), fields)


def _var_fields(data: pa.Array) -> pa.Array:
    """Binary COPY fields of text or bytes: each value's length (int32) and its bytes; NULL for a null."""
    data = data.cast(pa.binary())
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32, count=len(data) + 1, offset=data.offset * 4)
    lengths = _fixed_binary(np.diff(offsets).astype(">i4"))
    return pc.binary_join_element_wise(lengths, data, b"").fill_null(_NULL_FIELD)


def _real(values: np.ndarray) -> np.ndarray:
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
        values = _real(column.fill_null(0.0).to_numpy())
    else:
        values = column.fill_null(0).to_numpy()
        if sql_type == "integer" and len(values) and (values.min() < -2**31 or values.max() >= 2**31):
            # what integer's input says of such a value in a CSV COPY
            raise ValueError(f"value out of range for type integer: {values[(values < -2**31) | (values >= 2**31)][0]}")
    return _fixed_fields(values, wire, null)


class _Chunks(io.RawIOBase):
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


def _data(rows: pa.Array) -> memoryview:
    """The bytes of a binary (or large binary) array's values, end to end (its values buffer, no copy)."""
    wide = pa.types.is_large_binary(rows.type)
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64 if wide else np.int32, count=len(rows) + 1,
                            offset=rows.offset * (8 if wide else 4))
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]


@dataclass
class _Prepared:
    """A file's rows ready to COPY, made before it touches the database: each tuple but its ``fid`` (the last field,
    once a block of fids is reserved), in chunks of COPY_BATCH_ROWS in the frame's order, and the key order."""

    file_name: str
    columns: list[str]                # in tuple order; fid follows
    chunks: list[pa.Array]
    order: np.ndarray | None
    rows: int
    seconds: float


def _prepare(schema: FeedSchema, file_name: str, frame: pd.DataFrame, supply_id: str, period: str, sha256: str,
             loaded_at: datetime) -> _Prepared:
    """A file's frame as binary COPY tuples (no database: it may run while the previous file's indexes build)."""
    started = time.perf_counter()
    feed_file = schema.file(file_name)
    names = check_frame(schema, file_name, frame)
    by_name = {c.name: c for c in ddl.table_columns(schema, feed_file)}
    rows = copy_table(schema, feed_file, frame, [by_name[n] for n in names], supply_id, period, sha256, loaded_at)
    types = {c: t.sql_type for c, t in by_name.items()}
    chunks = [binary_copy_rows(rows.slice(start, COPY_BATCH_ROWS), types, more=1)
              for start in range(0, rows.num_rows, COPY_BATCH_ROWS)]
    return _Prepared(file_name, rows.column_names, chunks, key_order(rows, feed_file), rows.num_rows,
                     time.perf_counter() - started)


def _copy_rows(cur: Any, target: sql.Composable, prepared: _Prepared, first_fid: int) -> None:
    """COPY prepared tuples in key order, in binary format, at most COPY_BATCH_ROWS a statement; each row's fid is
    ``first_fid`` plus its place in key order (as an identity column filling in COPY order gave them)."""
    names = sql.SQL(", ").join(sql.Identifier(c) for c in [*prepared.columns, ddl.FID_COLUMN])
    # Binary COPY: PostgreSQL reads each value as it is (no CSV to split, no text to parse, no hex to decode).
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(target, names).as_string(cur)
    for start in range(0, prepared.rows, COPY_BATCH_ROWS):
        if prepared.order is None:
            rows = prepared.chunks[start // COPY_BATCH_ROWS]
        else:
            # The finished tuples put in key order, one value a row, rather than every column's values (a third of
            # the time: one random read per row instead of one per row and column).
            rows = _take_from_chunks(prepared.chunks, COPY_BATCH_ROWS,
                                     prepared.order[start:start + COPY_BATCH_ROWS])
        fids = np.arange(first_fid + start, first_fid + start + len(rows), dtype=np.int64)
        rows = pc.binary_join_element_wise(rows, _fixed_fields(fids, ">i8", None), b"")
        cur.copy_expert(statement, _Chunks([_COPY_HEADER, _data(rows), _COPY_TRAILER]), size=1 << 20)


def _take_from_chunks(chunks: list[pa.Array], size: int, positions: np.ndarray) -> pa.Array:
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


def _as_dict(obj: Any) -> Any:
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj):
        return asdict(obj)
    return obj


def _copy_partition(cur: Any, schema: FeedSchema, prepared: _Prepared,
                    supply_id: str) -> tuple[int, partitions.Staged | None]:
    """COPY a file's prepared rows into a fresh partition (not indexed, not attached); (rows, partition or None)."""
    if not prepared.rows:
        return 0, None
    feed_file = schema.file(prepared.file_name)
    started = time.perf_counter()
    staged = partitions.stage(cur, schema.db_schema, feed_file.table, prepared.rows, supply_id)
    _copy_rows(cur, sql.Identifier(schema.db_schema, staged.name), prepared, staged.first)
    log.info("%s.%s: %d rows prepared in %.2f s, copied in %.2f s", schema.db_schema, staged.name, prepared.rows,
             prepared.seconds, time.perf_counter() - started)
    return prepared.rows, staged


def _index_partition(conn: Any, schema: FeedSchema, file_name: str, staged: partitions.Staged,
                     supply_id: str) -> None:
    """Build a loaded partition's indexes and statistics, in the load's transaction."""
    feed_file = schema.file(file_name)
    started = time.perf_counter()
    with conn.cursor() as cur:
        partitions.index(cur, schema.db_schema, feed_file.table, staged, ddl.natural_key(feed_file), supply_id)
        indexed = time.perf_counter()
        if staged.end - staged.first >= ANALYZE_MIN_ROWS:
            # The counts by ward and month (the refresh after the load) read the new rows: without statistics
            # they were planned as nested loops (measured: minutes at 1M rows, instead of seconds).
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema.db_schema, staged.name)))
    log.info("%s.%s: indexed in %.2f s, analysed in %.2f s", schema.db_schema, staged.name, indexed - started,
             time.perf_counter() - indexed)


def _stage_all(conn: Any, cur: Any, schema: FeedSchema, supply_id: str, period: str,
               tables: Mapping[str, pd.DataFrame], lineage: Mapping[str, str],
               result: LoadResult) -> dict[str, partitions.Staged | None]:
    """COPY and index each file's partition in the load's transaction. The server builds a file's indexes while this
    process prepares the next file's rows (2 cores: one each); the connection runs one statement at a time."""
    # now() is the transaction's start: every row of the supply carries the same loaded_at, as one INSERT gave.
    cur.execute("SELECT now()")
    loaded_at = cur.fetchone()[0]
    staged: dict[str, partitions.Staged | None] = {}
    indexing: Future[None] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="csp-load-index") as pool:
        try:
            for name in tables:
                # tables[name] is referenced by the call only: a lazy frame is freed before the next is read.
                prepared: _Prepared | None = _prepare(schema, name, tables[name], supply_id, period, lineage[name],
                                                      loaded_at)
                if indexing is not None:
                    indexing.result()
                table = f"{schema.db_schema}.{schema.file(name).table}"
                result.rows[table], staged[name] = _copy_partition(cur, schema, prepared, supply_id)
                prepared = None                 # its tuples go before the next file's are made
                if staged[name] is not None:
                    indexing = pool.submit(_index_partition, conn, schema, name, staged[name], supply_id)
            if indexing is not None:
                indexing.result()
        except BaseException:
            if indexing is not None and not indexing.done():
                conn.cancel()           # the load rolls back whole: stop the index build rather than wait for it
            raise
    return staged


def _write_rejected(cur: Any, schema: FeedSchema, supply_id: str, rejected: pd.DataFrame | None) -> int:
    cur.execute("DELETE FROM observatory.rejected_rows WHERE supply_id = %s", (supply_id,))
    if rejected is None or rejected.empty:
        return 0
    fields = {d.name for f in schema.files for d in f.datafields}
    rows = [(supply_id, str(r.source_file), None if pd.isna(r.source_row) else int(r.source_row),
             str(r.stage), redact_reason(str(r.reason), fields))
            for r in rejected[["source_file", "source_row", "reason", "stage"]].itertuples(index=False)]
    cur.executemany("INSERT INTO observatory.rejected_rows (supply_id, file_name, source_row, stage, reason) "
                    "VALUES (%s, %s, %s, %s, %s)", rows)
    return len(rows)


def _write_validation(cur: Any, supply_id: str, validation: dict[str, Any] | None) -> int:
    cur.execute("DELETE FROM observatory.validation_results WHERE supply_id = %s", (supply_id,))
    rows = []
    for file_name, summary in (validation or {}).items():
        for e in validation_expectations(_as_dict(summary)):
            what = f'{e["expectation"]} on {e["column"]}' if e.get("column") else e["expectation"]
            rows.append((supply_id, file_name, e.get("quality"), what, e.get("success"),
                         e.get("unexpected_count"), e.get("unexpected_percent"),
                         json.dumps(strip_row_content(e.get("raw", e)), default=str)))
    if rows:
        cur.executemany(
            "INSERT INTO observatory.validation_results (supply_id, file_name, quality, expectation, success, "
            "unexpected_count, unexpected_percent, raw) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)", rows)
    return len(rows)


def load_supply(conn: Any, schema: FeedSchema, supply_id: str, period: str, tables: Mapping[str, pd.DataFrame],
                lineage: dict[str, str], rejected: pd.DataFrame | None = None,
                validation: dict[str, Any] | None = None,
                on_commit_ledger: Callable[[Any], None] | None = None,
                in_transaction: Callable[[Any], None] | None = None) -> LoadResult:
    """Replace a supply's rows in one transaction (rows, rejected rows, validation, ledger); commit or nothing.

    ``in_transaction(conn)`` does further writes that must commit or roll back with the rows (the supply's
    metadata in the catalogue, the tables' comments); ``on_commit_ledger(conn)`` marks the files loaded, last.
    ``tables`` may be :class:`LazyFrames`: each file's frame is then read only while it is loaded.
    """
    unknown = set(tables) - {f.name for f in schema.files}
    if unknown:
        raise ValueError(f"{schema.feed}: {sorted(unknown)} are not files of this feed")
    missing_sha = [name for name in tables if not lineage.get(name)]
    if missing_sha:
        raise ValueError(f"{supply_id}: no source SHA-256 for {missing_sha}")
    # Check every frame before touching the database: a personal column anywhere stops the whole supply.
    for name in tables:
        check_frame(schema, name, tables.shape(name)[0] if isinstance(tables, LazyFrames) else tables[name])
    result = LoadResult(supply_id=supply_id)
    try:
        with conn.cursor() as cur:
            # Two runs of the same supply at once would each replace the other's partition: make them take turns.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.supply.{supply_id}",))
            staged = _stage_all(conn, cur, schema, supply_id, period, tables, lineage, result)
            # Last, so that the lock the swap takes on each table (readers wait for it if an earlier load of the
            # supply is dropped) is held for as short a time as possible.
            started = time.perf_counter()
            # A reader holding a feed table in an open transaction would make the swap wait, and every reader after
            # it wait behind the swap: give up after SWAP_LOCK_TIMEOUT instead (the load rolls back whole and the
            # stage's retries try again later), so a forgotten session never hangs a load or the analysts.
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (SWAP_LOCK_TIMEOUT,))
            for f in schema.files:
                result.replaced[f"{schema.db_schema}.{f.table}"] = partitions.swap(
                    cur, schema.db_schema, f.table, supply_id, staged.get(f.name))
            log.info("%s: partitions swapped in %.2f s", supply_id, time.perf_counter() - started)
            result.rejected_rows = _write_rejected(cur, schema, supply_id, rejected)
            result.validation_results = _write_validation(cur, supply_id, validation)
            files = {name: {"sha256": lineage[name], "table": f"{schema.db_schema}.{schema.file(name).table}",
                            "rows": result.rows[f"{schema.db_schema}.{schema.file(name).table}"]}
                     for name in tables}
            cur.execute(
                "INSERT INTO observatory.supplies (supply_id, feed, period, status, files, row_counts, loaded_at) "
                "VALUES (%s, %s, %s, 'loaded', %s::jsonb, %s::jsonb, now()) "
                "ON CONFLICT (supply_id) DO UPDATE SET feed = EXCLUDED.feed, period = EXCLUDED.period, "
                "status = EXCLUDED.status, files = EXCLUDED.files, row_counts = EXCLUDED.row_counts, "
                "report = NULL, loaded_at = EXCLUDED.loaded_at",
                (supply_id, schema.feed, period, json.dumps(files), json.dumps(result.rows)))
        # The layers' counts by ward and month are not recounted here: the load's asset event starts the refresh DAG
        # (dags/refresh.py, summaries.refresh), which recounts the feeds it names.
        if in_transaction is not None:
            in_transaction(conn)
        if on_commit_ledger is not None:
            on_commit_ledger(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return result


def record_report(conn: Any, supply_id: str, report: dict[str, Any], status: str | None = None) -> None:
    """Store a supply's quality report (and final status) in observatory.supplies; no commit."""
    with conn.cursor() as cur:
        cur.execute("UPDATE observatory.supplies SET report = %s::jsonb, status = COALESCE(%s, status) "
                    "WHERE supply_id = %s", (json.dumps(report, default=str), status, supply_id))


def loaded_counts(conn: Any, schema: FeedSchema, supply_id: str) -> dict[str, int]:
    """Rows already loaded for a supply, per file of the feed (0 where its table does not exist yet)."""
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema.db_schema}.{f.table}",))
            if not cur.fetchone()[0]:
                counts[f.name] = 0
                continue
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(
                sql.Identifier(schema.db_schema, f.table)), (supply_id,))
            counts[f.name] = int(cur.fetchone()[0])
    return counts


def resend_losses(before: dict[str, int], after: dict[str, int], max_loss: float) -> dict[str, tuple[int, int]]:
    """Files whose re-sent rows would remove more than ``max_loss`` of the rows loaded before: {file: (was, now)}."""
    return {name: (was, after.get(name, 0)) for name, was in before.items()
            if was > 0 and (was - after.get(name, 0)) / was > max_loss}


def content_keys(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A key per row for a file with no reference number: ``<sha256 of its values>-<occurrence>``.

    Stable for a re-sent supply: it depends only on the record's own loaded values (never its position in the
    file), and identical records, which are interchangeable, are told apart by counting them in file order. It is
    computed over the values that are loaded (after sanitising), so it reveals nothing the row does not show.
    """
    if frame.empty:
        return pd.Series([], index=frame.index, dtype="string")
    # each value's text (missing: NUL), joined by the unit separator, in Arrow (pandas' str.cat goes through a
    # Python object per value); each row's UTF-8 bytes are then hashed straight from the Arrow buffer
    text = [pc.fill_null(pa.array(frame[c].astype("string[pyarrow]").array).cast(pa.large_string()), "\x00")
            for c in columns]
    joined = pc.binary_join_element_wise(*text, pa.scalar("\x1f", pa.large_string())) if len(text) > 1 else text[0]
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    ends = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + len(joined) + 1].tolist()
    data = memoryview(joined.buffers()[2] or b"")
    digests = [hashlib.sha256(data[a:b]).hexdigest()[:32] for a, b in zip(ends[:-1], ends[1:])]
    # identical records, told apart by counting them in file order
    codes, _ = pd.factorize(pd.Series(digests, dtype=object))
    occurrence = pd.Series(codes).groupby(codes, sort=False).cumcount().to_numpy() + 1
    keys = pc.binary_join_element_wise(pa.array(digests, pa.large_string()),
                                       pa.array(occurrence).cast(pa.large_string()),
                                       pa.scalar("-", pa.large_string()))
    return pd.Series(pd.arrays.ArrowStringArray(keys), index=frame.index).astype("string")
