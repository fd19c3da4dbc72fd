"""Load one supply into PostGIS in one transaction: its rows, rejected rows, validation results and ledger.

Each feed table is partitioned, one partition per supply (``partitions.py``, issue 9). A load COPYs each file's
rows into a fresh table with no index, then builds its indexes (the record's key, ``fid``, the GiST index on
``geom``: each built once over the whole supply, instead of kept up to date row by row), then drops the
partition of an earlier load of the supply and attaches the new one. All of it is one transaction, so a supply is
either wholly there (once) or not at all, readers never see part of it, and a failure leaves no table behind.
The rows go in PostgreSQL's binary COPY format, built column by column with Arrow and NumPy (``copy_binary.py``),
in the order of the record's key (``record_keys.key_order``), each with its ``fid`` from a block reserved from the
table's sequence. They are made in a thread ahead of the connection (``copy_stream.py``), which meanwhile runs the
COPYs and index builds one after another: the server waits for this process only for the first file's first batch.

With ``load_connections: 2`` in the settings (the default), a large supply (``file_workers_min_mb``, as for the stages'
processes) on a machine of two cores or more also takes a second connection (``pipeline_load`` passes ``connect``),
so that the server builds two files' partitions at once: the largest file on the load's own connection, the others
on the second (``split_files``). A table cannot pass from one transaction to another before it is committed, so
the second connection builds its partitions in the schema ``loading`` (the loader's alone) and commits them there,
attached to nothing and read by nobody; the load's transaction then moves them into the feed's schema, with the
readers the feed's tables have, and attaches them with the rest. So readers still see the supply whole or not at
all. If the load fails, it drops what the second connection committed; if it is killed first, the next load of the
supply drops it (``partitions.drop_unattached``).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from functools import partial
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from csp_observatory import ddl, partitions
from csp_observatory.copy_binary import (COPY_HEADER, COPY_TRAILER, binary_copy_rows, copy_table, fixed_fields,
                                         take_from_chunks, values_bytes)
from csp_observatory.copy_stream import CopyFeed
from csp_observatory.record_keys import key_order
from csp_observatory.report_privacy import redact_reason, strip_row_content, validation_expectations
from csp_observatory.schema import FeedSchema

log = logging.getLogger(__name__)

#: Rows per batch of COPY data: what the feed makes at a time (about 35 MB at 1M offences), whatever the supply's size.
COPY_BATCH_ROWS = 100_000
#: Batches the feed makes ahead of the COPY: bounds what is held, while the server never waits for the next batch.
FEED_DEPTH = 2
#: Bytes handed to the connection at a time.
COPY_READ_BYTES = 1 << 20
#: A load of at least this many rows into a table refreshes its planner statistics in the load's transaction.
ANALYZE_MIN_ROWS = 10_000
#: How long a load waits for a feed table's lock to swap a supply's partition (PostgreSQL's lock_timeout syntax).
SWAP_LOCK_TIMEOUT = os.environ.get("CSP_SWAP_LOCK_TIMEOUT", "60s")

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
    from its first reading (:meth:`shape`), or taken from ``shape(name)`` when it gives them without reading the rows
    (a staged Arrow file's footer); it may give None, and the frame is then read."""

    def __init__(self, names: Iterable[str], read: Callable[[str], pd.DataFrame],
                 shape: Callable[[str], tuple[list[str], int] | None] | None = None) -> None:
        self._names, self._read, self._shape = list(names), read, shape
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
        """(columns, rows) of a frame, read once if it has not been yet and ``shape`` cannot tell."""
        if name not in self._shapes:
            known = self._shape(name) if self._shape is not None and name in self._names else None
            if known is not None:
                self._shapes[name] = (list(known[0]), int(known[1]))
            else:
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


@dataclass
class _Prepared:
    """A file's rows typed for COPY, in the frame's order, and their key order; made in the feed's thread."""

    file_name: str
    columns: list[str]                # in tuple order; fid follows
    table: pa.Table | None            # let go once its tuples are made
    types: dict[str, str]
    order: np.ndarray | None
    rows: int
    seconds: float


def _prepare(schema: FeedSchema, file_name: str, frame: pd.DataFrame, supply_id: str, period: str, sha256: str,
             loaded_at: datetime) -> _Prepared:
    """A file's frame as the typed columns of its COPY (no database: it runs in the feed's thread)."""
    started = time.perf_counter()
    feed_file = schema.file(file_name)
    names = check_frame(schema, file_name, frame)
    by_name = {c.name: c for c in ddl.table_columns(schema, feed_file)}
    rows = copy_table(schema, feed_file, frame, [by_name[n] for n in names], supply_id, period, sha256, loaded_at)
    return _Prepared(file_name, rows.column_names, rows, {c: t.sql_type for c, t in by_name.items()},
                     key_order(rows, feed_file), rows.num_rows, time.perf_counter() - started)


def _batches(prepared: _Prepared, first_fid: int, whole: bool) -> Iterator[Any]:
    """A file's binary COPY data in key order, COPY_BATCH_ROWS tuples at a time; each row's fid is ``first_fid`` plus
    its place in key order (as an identity column filling in COPY order gave them).

    ``whole``: every tuple is made first, in the frame's order, and each batch then takes its tuples in key order
    (one random read per row, not one per row and column: a third of the time of taking the columns). Otherwise each
    batch takes its rows' columns and makes their tuples: the first batch is ready sooner (for the first file, whose
    COPY waits for it), at the cost of more work in all (the victims' content key: 1.7x)."""
    table, order, n, types = prepared.table, prepared.order, prepared.rows, prepared.types
    prepared.table = None
    tuples = None
    if whole and order is not None:
        tuples = [binary_copy_rows(table.slice(start, COPY_BATCH_ROWS), types, more=1)
                  for start in range(0, n, COPY_BATCH_ROWS)]
        table = None
    yield COPY_HEADER
    for start in range(0, n, COPY_BATCH_ROWS):
        if order is None:
            rows = binary_copy_rows(table.slice(start, COPY_BATCH_ROWS), types, more=1)
        elif tuples is not None:
            rows = take_from_chunks(tuples, COPY_BATCH_ROWS, order[start:start + COPY_BATCH_ROWS])
        else:
            rows = binary_copy_rows(table.take(pa.array(order[start:start + COPY_BATCH_ROWS])), types, more=1)
        fids = np.arange(first_fid + start, first_fid + start + len(rows), dtype=np.int64)
        yield values_bytes(pc.binary_join_element_wise(rows, fixed_fields(fids, ">i8", None), b""))
    yield COPY_TRAILER


def _file_job(schema: FeedSchema, name: str, tables: Mapping[str, pd.DataFrame], staged: partitions.Staged,
              supply_id: str, period: str, sha256: str, loaded_at: datetime, whole: bool) -> Iterator[Any]:
    """The feed's work for one file: its :class:`_Prepared` (first), then its COPY data."""
    # tables[name] is referenced by the call only: a lazy frame is freed once its columns are typed.
    prepared = _prepare(schema, name, tables[name], supply_id, period, sha256, loaded_at)
    if prepared.rows != staged.end - staged.first:
        raise RuntimeError(f"{schema.feed}/{name}: {prepared.rows} rows read where {staged.end - staged.first} "
                           f"were counted")
    yield prepared
    yield from _batches(prepared, staged.first, whole)


def _copy_rows(cur: Any, target: sql.Composable, columns: list[str], data: Any) -> None:
    """One binary COPY of a file's rows (``data``: their COPY data, read as it is made)."""
    names = sql.SQL(", ").join(sql.Identifier(c) for c in [*columns, ddl.FID_COLUMN])
    # Binary COPY: PostgreSQL reads each value as it is (no CSV to split, no text to parse, no hex to decode).
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(target, names).as_string(cur)
    cur.copy_expert(statement, data, size=COPY_READ_BYTES)


def _as_dict(obj: Any) -> Any:
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj):
        return asdict(obj)
    return obj


def _copy_partition(cur: Any, schema: FeedSchema, feed: CopyFeed, name: str, staged: partitions.Staged) -> int:
    """COPY a file's rows, as the feed makes them, into its fresh partition (not indexed, not attached)."""
    started = time.perf_counter()
    prepared: _Prepared = feed.header(name)
    waited = time.perf_counter() - started
    in_schema = staged.schema_in(schema.db_schema)
    _copy_rows(cur, sql.Identifier(in_schema, staged.name), prepared.columns, feed.reader(name))
    log.info("%s.%s: %d rows prepared in %.2f s (%.2f s waited for), copied in %.2f s", in_schema, staged.name,
             prepared.rows, prepared.seconds, waited, time.perf_counter() - started - waited)
    return prepared.rows


def _index_partition(conn: Any, schema: FeedSchema, file_name: str, staged: partitions.Staged,
                     supply_id: str) -> None:
    """Build a loaded partition's indexes and statistics, in the load's transaction."""
    feed_file = schema.file(file_name)
    in_schema = staged.schema_in(schema.db_schema)
    started = time.perf_counter()
    with conn.cursor() as cur:
        partitions.index(cur, schema.db_schema, feed_file.table, staged, ddl.natural_key(feed_file), supply_id)
        indexed = time.perf_counter()
        if staged.end - staged.first >= ANALYZE_MIN_ROWS:
            # The counts by ward and month (the refresh after the load) read the new rows: without statistics
            # they were planned as nested loops (measured: minutes at 1M rows, instead of seconds).
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(in_schema, staged.name)))
    log.info("%s.%s: indexed in %.2f s, analysed in %.2f s", in_schema, staged.name, indexed - started,
             time.perf_counter() - indexed)


def _row_count(tables: Mapping[str, pd.DataFrame], name: str) -> int:
    return tables.shape(name)[1] if isinstance(tables, LazyFrames) else len(tables[name])


def _stage_all(conn: Any, cur: Any, schema: FeedSchema, supply_id: str, period: str,
               tables: Mapping[str, pd.DataFrame], lineage: Mapping[str, str], result: LoadResult,
               connect: Callable[[], ContextManager[Any]] | None, aside: list[partitions.Staged]
               ) -> dict[str, partitions.Staged | None]:
    """COPY and index each file's partition: the load's connection runs each file's COPY and index builds in turn
    while a feed thread makes the rows (:mod:`copy_stream`). With ``connect`` (a second connection) and a supply
    large enough, the files are shared between the two connections (:func:`split_files`): the second one's
    partitions are built in :data:`partitions.LOADING_SCHEMA` and committed there, listed in ``aside`` as soon as
    they exist (the caller drops them if the load fails), and moved into the feed's schema in the load's transaction.
    """
    # now() is the transaction's start: every row of the supply carries the same loaded_at, as one INSERT gave.
    cur.execute("SELECT now()")
    loaded_at = cur.fetchone()[0]
    counts = {name: _row_count(tables, name) for name in tables}
    ours, theirs = split_files(counts, second=connect is not None)
    load = partial(_load_files, schema=schema, supply_id=supply_id, period=period, tables=tables, lineage=lineage,
                   loaded_at=loaded_at, counts=counts)
    second = _Second()
    thread = None
    if theirs:
        assert connect is not None
        thread = threading.Thread(target=_second_connection, name="csp-load-second",
                                  args=(connect, load, theirs, aside, second, conn), daemon=True)
        thread.start()
    try:
        staged = load(conn, ours, into="")
    except BaseException:
        if thread is not None:
            second.stop = True
            try:
                if second.conn is not None:
                    second.conn.cancel()
            except psycopg2.Error:      # it has finished (and closed) meanwhile
                pass
            thread.join()
        if second.error is not None:
            # The second connection's failure cancelled this one's statement: raise its own error.
            raise second.error
        raise
    if thread is not None:
        thread.join()
        if second.error is not None:
            raise second.error
        for name, part in second.staged.items():
            staged[name] = partitions.adopt(cur, schema.db_schema, schema.file(name).table, part)
    for name in tables:
        staged.setdefault(name, None)
        result.rows[f"{schema.db_schema}.{schema.file(name).table}"] = counts[name] if staged[name] else 0
    return staged


def split_files(counts: Mapping[str, int], second: bool = True) -> tuple[list[str], list[str]]:
    """The files (with rows) the load's connection takes, and those a second connection takes: the largest file
    alone on the load's, the rest on the second; none on the second without one (``second``) or on a machine of one
    core. Each list largest first: on one connection the last file's index builds are the one step nothing else
    overlaps, so they are the smallest's."""
    from csp_observatory.file_workers import usable_cores

    files = sorted((n for n in counts if counts[n]), key=lambda n: -counts[n])
    if not second or len(files) < 2 or usable_cores() < 2:
        return files, []
    return files[:1], files[1:]


@dataclass
class _Second:
    """What the load's thread and the thread of its second connection share."""
    conn: Any = None                                    # the second connection, once open
    staged: dict[str, partitions.Staged] = field(default_factory=dict)     # its partitions, once committed
    error: BaseException | None = None                  # its failure, for the load's thread to raise
    stop: bool = False                                  # set by the load's thread when the load has failed


def _second_connection(connect: Callable[[], ContextManager[Any]], load: Callable[..., Any], names: list[str],
                       aside: list[partitions.Staged], second: _Second, main: Any) -> None:
    """In a thread: load ``names`` on a connection of their own, into the loading schema, and commit them there."""
    try:
        with connect() as other:
            second.conn = other
            second.staged = load(other, names, into=partitions.LOADING_SCHEMA, aside=aside,
                                 stopped=lambda: second.stop)
            other.commit()
    except BaseException as exc:    # noqa: BLE001 - handed to the load's thread, which raises it
        if not second.stop:         # (once stopped, its error is only the cancellation the load's failure sent)
            second.error = exc
            main.cancel()           # the load's own COPY or index build stops at once, not when it is done


def _load_files(conn: Any, names: list[str], *, into: str, schema: FeedSchema, supply_id: str, period: str,
                tables: Mapping[str, pd.DataFrame], lineage: Mapping[str, str], loaded_at: datetime,
                counts: Mapping[str, int], aside: list[partitions.Staged] | None = None,
                stopped: Callable[[], bool] = lambda: False) -> dict[str, partitions.Staged]:
    """Stage, COPY and index ``names`` (largest first) on one connection, in its transaction; the partitions made."""
    staged: dict[str, partitions.Staged] = {}
    with conn.cursor() as cur:
        # Every file's partition (its block of fids, its CHECKs) first: the feed numbers each file's rows ahead.
        for name in names:
            staged[name] = partitions.stage(cur, schema.db_schema, schema.file(name).table, counts[name], supply_id,
                                            into=into)
            if aside is not None:
                aside.append(staged[name])
        jobs = [(name, partial(_file_job, schema, name, tables, staged[name], supply_id, period, lineage[name],
                               loaded_at, i > 0)) for i, name in enumerate(names)]
        with CopyFeed(jobs, on_error=conn.cancel, depth=FEED_DEPTH) as feed:
            try:
                for name in names:
                    if stopped():
                        raise RuntimeError("stopped: the load's other connection failed")
                    _copy_partition(cur, schema, feed, name, staged[name])
                    if feed.error is None:          # else the feed has cancelled, or will: say why, not "canceled"
                        _index_partition(conn, schema, name, staged[name], supply_id)
                if feed.error is not None:
                    raise feed.error
            except BaseException as exc:
                # A failure in the feed reaches here as the statement it cancelled: raise the feed's own error.
                if feed.error is not None and feed.error is not exc:
                    raise feed.error from exc
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
    # One statement per thousand rows, not a round trip per row (a supply may set aside many).
    execute_values(cur, "INSERT INTO observatory.rejected_rows (supply_id, file_name, source_row, stage, reason) "
                   "VALUES %s", rows, page_size=1000)
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
        execute_values(
            cur, "INSERT INTO observatory.validation_results (supply_id, file_name, quality, expectation, success, "
            "unexpected_count, unexpected_percent, raw) VALUES %s", rows,
            template="(%s, %s, %s, %s, %s, %s, %s, %s::jsonb)", page_size=1000)
    return len(rows)


def load_supply(conn: Any, schema: FeedSchema, supply_id: str, period: str, tables: Mapping[str, pd.DataFrame],
                lineage: dict[str, str], rejected: pd.DataFrame | None = None,
                validation: dict[str, Any] | None = None,
                on_commit_ledger: Callable[[Any], None] | None = None,
                in_transaction: Callable[[Any], None] | None = None,
                connect: Callable[[], ContextManager[Any]] | None = None) -> LoadResult:
    """Replace a supply's rows in one transaction (rows, rejected rows, validation, ledger); commit or nothing.

    ``in_transaction(conn)`` does further writes that must commit or roll back with the rows (the supply's
    metadata in the catalogue, the tables' comments); ``on_commit_ledger(conn)`` marks the files loaded, last.
    ``tables`` may be :class:`LazyFrames`: each file's frame is then read only while it is loaded. ``connect``
    opens a second connection to the same database (closed when its block ends), for the smaller files
    (:func:`split_files`; the caller passes it only for a large supply): their partitions are built on it while
    this one builds the largest file's, and are attached in this transaction like the rest; if the load fails they
    are dropped.
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
    aside: list[partitions.Staged] = []         # partitions a second connection committed, until attached
    try:
        with conn.cursor() as cur:
            # Two runs of the same supply at once would each replace the other's partition: make them take turns.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.supply.{supply_id}",))
            # what a load of this supply killed between its two connections' commits left unattached
            partitions.drop_unattached(cur, schema.db_schema, [f.table for f in schema.files], supply_id)
            staged = _stage_all(conn, cur, schema, supply_id, period, tables, lineage, result, connect, aside)
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
        _drop_aside(conn, aside)
        raise
    return result


def _drop_aside(conn: Any, aside: list[partitions.Staged]) -> None:
    """After a failed load, drop the partitions its second connection committed in the loading schema (the load's
    rollback returned any it had moved); a failure here is logged, not raised over the load's own error."""
    if not aside:
        return
    try:
        with conn.cursor() as cur:
            for part in aside:
                cur.execute(f"DROP TABLE IF EXISTS {partitions.qualified(partitions.LOADING_SCHEMA, part.name)}")
        conn.commit()
    except Exception:               # noqa: BLE001 - the next load of the supply drops them (drop_unattached)
        conn.rollback()
        log.exception("the failed load's unattached partitions %s could not be dropped now",
                      [part.name for part in aside])


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

