"""Load one supply into PostGIS in one transaction: its rows, rejected rows, validation results and ledger.

A re-run of a supply deletes that supply's rows and inserts them again in the same transaction, so a supply
is either wholly there (once) or not at all. Rows go in by COPY into a temporary table and one
``INSERT ... SELECT ST_SetSRID(ST_MakePoint(...), 27700)`` (STACK-NOTES: fast, and no UPDATE bloat).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable

import pandas as pd
from psycopg2 import sql

from csp_observatory import ddl
from csp_observatory.reporting import redact_reason, strip_row_content, validation_expectations
from csp_observatory.schema import FeedSchema


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


def check_frame(schema: FeedSchema, file_name: str, frame: pd.DataFrame) -> list[str]:
    """The frame's columns in table order; raise FrameMismatch if any is missing or unexpected."""
    feed_file = schema.file(file_name)
    expected = ddl.frame_columns(schema, feed_file)
    got = list(frame.columns)
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


def _copy_ready(frame: pd.DataFrame, columns: list[ddl.Column]) -> pd.DataFrame:
    """The frame with values written the way COPY reads them into each column's SQL type."""
    out = pd.DataFrame(index=frame.index)
    for c in columns:
        s = frame[c.name]
        if c.sql_type == "integer":
            if c.name in ("sanitised_easting", "sanitised_northing"):
                # Centroids can arrive as floats (e.g. 409123.0); the contract says whole metres.
                s = pd.to_numeric(s).round()
            # Int64 refuses a non-whole value rather than truncating it silently.
            s = pd.to_numeric(s).astype("Int64")
        elif c.sql_type == "date":
            s = pd.to_datetime(s).dt.strftime("%Y-%m-%d")
        elif c.sql_type == "boolean":
            s = s.astype("boolean").map({True: "t", False: "f"}, na_action="ignore")
        out[c.name] = s
    return out


def _copy_frame(cur: Any, staging: str, frame: pd.DataFrame, columns: list[ddl.Column]) -> None:
    buf = io.StringIO()
    # Unquoted empty field = NULL; an empty string would be written quoted ("") and stay a string.
    _copy_ready(frame, columns).to_csv(buf, index=False, header=False, na_rep="")
    buf.seek(0)
    cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL '')").format(
        sql.Identifier(staging), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)).as_string(cur), buf)


def _as_dict(obj: Any) -> Any:
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj):
        return asdict(obj)
    return obj


def _delete_supply(cur: Any, schema: FeedSchema, supply_id: str) -> dict[str, int]:
    removed: dict[str, int] = {}
    for f in schema.files:
        cur.execute(sql.SQL("DELETE FROM {} WHERE supply_id = %s").format(
            sql.Identifier(schema.db_schema, f.table)), (supply_id,))
        removed[f"{schema.db_schema}.{f.table}"] = cur.rowcount
    return removed


def _insert_table(cur: Any, schema: FeedSchema, file_name: str, frame: pd.DataFrame, supply_id: str,
                  period: str, sha256: str) -> int:
    feed_file = schema.file(file_name)
    names = check_frame(schema, file_name, frame)
    by_name = {c.name: c for c in ddl.table_columns(schema, feed_file)}
    columns = [by_name[n] for n in names]
    staging = f"stage_{feed_file.table}"
    I = sql.Identifier  # noqa: E741
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(I(staging)))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
        I(staging), sql.SQL(", ").join(sql.SQL("{} {}").format(I(c.name), sql.SQL(c.sql_type)) for c in columns)))
    if len(frame):
        _copy_frame(cur, staging, frame, columns)
    x, y = ddl.point_columns(schema)
    cur.execute(sql.SQL(
        "INSERT INTO {target} ({cols}, supply_id, period, source_sha256, loaded_at, geom) "
        "SELECT {cols}, %s, %s, %s, now(), ST_SetSRID(ST_MakePoint({x}, {y}), {srid}) FROM {staging}").format(
        target=I(schema.db_schema, feed_file.table), cols=sql.SQL(", ").join(I(c.name) for c in columns),
        x=I(x), y=I(y), srid=sql.Literal(ddl.SRID), staging=I(staging)), (supply_id, period, sha256))
    inserted = cur.rowcount
    cur.execute(sql.SQL("DROP TABLE {}").format(I(staging)))
    return inserted


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


def load_supply(conn: Any, schema: FeedSchema, supply_id: str, period: str, tables: dict[str, pd.DataFrame],
                lineage: dict[str, str], rejected: pd.DataFrame | None = None,
                validation: dict[str, Any] | None = None,
                on_commit_ledger: Callable[[Any], None] | None = None,
                in_transaction: Callable[[Any], None] | None = None) -> LoadResult:
    """Replace a supply's rows in one transaction (rows, rejected rows, validation, ledger); commit or nothing.

    ``in_transaction(conn)`` does further writes that must commit or roll back with the rows (the supply's
    metadata in the catalogue, the tables' comments); ``on_commit_ledger(conn)`` marks the files loaded, last.
    """
    unknown = set(tables) - {f.name for f in schema.files}
    if unknown:
        raise ValueError(f"{schema.feed}: {sorted(unknown)} are not files of this feed")
    missing_sha = [name for name in tables if not lineage.get(name)]
    if missing_sha:
        raise ValueError(f"{supply_id}: no source SHA-256 for {missing_sha}")
    # Check every frame before touching the database: a personal column anywhere stops the whole supply.
    for name, frame in tables.items():
        check_frame(schema, name, frame)
    result = LoadResult(supply_id=supply_id)
    try:
        with conn.cursor() as cur:
            # Two runs of the same supply at once would each delete then insert: make them take turns.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.supply.{supply_id}",))
            result.replaced = _delete_supply(cur, schema, supply_id)
            for name, frame in tables.items():
                table = f"{schema.db_schema}.{schema.file(name).table}"
                result.rows[table] = _insert_table(cur, schema, name, frame, supply_id, period, lineage[name])
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
        ddl.refresh_ward_month(conn, schema)    # the layers' counts by ward and month, committed with the rows
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
