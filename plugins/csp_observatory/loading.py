"""Load one supply into PostGIS in one transaction: its rows, rejected rows, validation results and ledger.

Each feed table is partitioned, one partition per supply (``partitions.py``, issue 9). A load COPYs each file's
rows into a fresh table with no index, then builds its indexes (the record's key, ``fid``, the GiST index on
``geom``: each built once over the whole supply, instead of kept up to date row by row), then drops the
partition of an earlier load of the supply and attaches the new one. All of it is one transaction, so a supply is
either wholly there (once) or not at all, readers never see part of it, and a failure leaves no table behind.
Arrow writes each batch of rows as CSV with the lineage columns, ``fid`` (a block reserved from the table's
sequence, in the order of the record's key) and the point already as hex EWKB (``geom``, which PostGIS reads as it
reads ``ST_SetSRID(ST_MakePoint(x, y), 27700)``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
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
#: Hex EWKB of a little-endian point with an SRID (type 0x20000001), before its two coordinates.
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
    """Hex EWKB of Point(x, y) in SRID 27700 per row (the text ST_SetSRID(ST_MakePoint(x, y), 27700) outputs);
    null where x or y is missing (NaN)."""
    rec = np.empty(len(x), dtype=[("head", "S9"), ("x", "<f8"), ("y", "<f8")])   # packed: 25 bytes a point
    rec["head"], rec["x"], rec["y"] = _EWKB_POINT, x, y
    hexed = np.frombuffer(rec.tobytes().hex().upper().encode("ascii"), dtype="S50")
    return pa.array(hexed, pa.binary(), mask=np.isnan(x) | np.isnan(y)).cast(pa.string())


def copy_table(schema: FeedSchema, feed_file: Any, frame: pd.DataFrame, columns: list[ddl.Column], supply_id: str,
               period: str, sha256: str, loaded_at: str) -> pa.Table:
    """The rows as COPY takes them: the frame's columns, the lineage, and geom; in the order of the record's key."""
    values = {c.name: _arrow_column(frame[c.name], c) for c in columns}
    x_name, y_name = ddl.point_columns(schema)
    x = pc.cast(values[x_name], pa.float64()).to_numpy(zero_copy_only=False) if x_name in values else None
    y = pc.cast(values[y_name], pa.float64()).to_numpy(zero_copy_only=False) if y_name in values else None
    n = len(frame)
    if x is None or y is None:
        x = y = np.full(n, np.nan)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    lineage = {"supply_id": supply_id, "period": period, "source_sha256": sha256, "loaded_at": loaded_at}
    for name, value in lineage.items():
        values[name] = pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))
    values["geom"] = _ewkb_points(x, y)
    table = pa.table(values)
    key = [c for c in ddl.natural_key(feed_file) if c in values and c != "supply_id"]
    if not key:
        return table
    order = pc.sort_indices(table.select(key), sort_keys=[(c, "ascending") for c in key]).to_numpy()
    # Partners' files usually come in key order already: then there is nothing to move.
    return table if bool((order == np.arange(n)).all()) else table.take(pa.array(order))


def _copy_rows(cur: Any, target: sql.Composable, table: pa.Table) -> None:
    names = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    # Arrow quotes every text value and leaves nulls as bare empty fields: COPY's NULL ''.
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL '')").format(target, names).as_string(cur)
    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    for start in range(0, table.num_rows, COPY_BATCH_ROWS):
        buf = io.BytesIO()
        pa_csv.write_csv(table.slice(start, COPY_BATCH_ROWS), buf, options)
        buf.seek(0)
        cur.copy_expert(statement, buf)


def _as_dict(obj: Any) -> Any:
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj):
        return asdict(obj)
    return obj


def _stage_table(cur: Any, schema: FeedSchema, file_name: str, frame: pd.DataFrame, supply_id: str,
                 period: str, sha256: str) -> tuple[int, partitions.Staged | None]:
    """COPY a file's rows into a fresh partition and index it (not attached yet); (rows, partition or None)."""
    feed_file = schema.file(file_name)
    names = check_frame(schema, file_name, frame)
    by_name = {c.name: c for c in ddl.table_columns(schema, feed_file)}
    if not len(frame):
        return 0, None
    started = time.perf_counter()
    # now() is the transaction's start: every row of the supply carries the same loaded_at, as one INSERT gave.
    cur.execute("SELECT now()::text")
    rows = copy_table(schema, feed_file, frame, [by_name[n] for n in names], supply_id, period, sha256,
                      cur.fetchone()[0])
    staged = partitions.stage(cur, schema.db_schema, feed_file.table, rows.num_rows)
    # fids in the order of the record's key, as an identity column filling in COPY order gave them.
    rows = rows.append_column(ddl.FID_COLUMN, pa.array(np.arange(staged.first, staged.end, dtype=np.int64)))
    prepared = time.perf_counter()
    _copy_rows(cur, sql.Identifier(schema.db_schema, staged.name), rows)
    copied = time.perf_counter()
    partitions.index(cur, schema.db_schema, feed_file.table, staged, ddl.natural_key(feed_file), supply_id)
    indexed = time.perf_counter()
    if rows.num_rows >= ANALYZE_MIN_ROWS:
        # The counts by ward and month read the new rows in this transaction: without statistics they were
        # planned as nested loops (measured: minutes at 1M rows, instead of seconds).
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema.db_schema, staged.name)))
    log.info("%s.%s: %d rows prepared in %.2f s, copied in %.2f s, indexed in %.2f s, analysed in %.2f s",
             schema.db_schema, staged.name, rows.num_rows, prepared - started, copied - prepared,
             indexed - copied, time.perf_counter() - indexed)
    return rows.num_rows, staged


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
            staged: dict[str, partitions.Staged | None] = {}
            for name in tables:
                table = f"{schema.db_schema}.{schema.file(name).table}"
                # tables[name] is referenced by the call only: a lazy frame is freed before the next is read.
                result.rows[table], staged[name] = _stage_table(cur, schema, name, tables[name], supply_id, period,
                                                                lineage[name])
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
    text = [frame[c].astype("string").fillna("\x00") for c in columns]
    joined = text[0].str.cat(text[1:], sep="\x1f") if len(text) > 1 else text[0]
    digest = pd.Series([hashlib.sha256(v.encode("utf-8")).hexdigest()[:32] for v in joined], index=frame.index)
    occurrence = digest.groupby(digest, sort=False).cumcount() + 1
    return (digest + "-" + occurrence.astype(str)).astype("string")
