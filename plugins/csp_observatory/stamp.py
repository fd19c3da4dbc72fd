"""The quality stamp (guidance Box 3): each supply's outcome and quality grades in PostGIS, where analysts read them.

The rows come from the supply's report (``stamp_data.build_stamp``: its figures copied, never recomputed); this
module writes and reads them. In the schema ``dq`` (read by ``csp_analyst``, ``csp_engineer`` and
``csp_personal_reader``; written by the loader only):

- ``dq.supplies``: one row per supply: feed, period, partner, status, level (green/amber/red) and its reasons, the
  supply's grade per quality, rows loaded / set aside / flagged / withheld, when it was collected and reported;
- ``dq.qualities``: one row per supply and quality (section 4.2.3): the supply's score, grade, checks passed and
  failed and its caveats (the failed checks, in words); ``dq.file_qualities`` the same per file, as the report has;
- ``dq.checks``: one row per supply, file and check, as the report lists them;
- ``dq.set_aside_rows``: the rows set aside (and the rows loaded with a problem, ``loaded``), by file and row
  number, with stage, reason and the field names the reason mentions: never a value from the row.

Each feed table gets a view ``<table>_graded`` in its own schema (``graded_views.py``): every record with its
supply's level and grades, holding no dependency on the table.

The tables' comments end with the feed's latest loaded supply's stamp (``stamp_text.comment_stamp``); the feed's
DAG docs show it too (``stamp_text.dag_doc_section``). Nothing here commits but :func:`stamp_supply`, which
``pipeline.report_and_archive`` calls to write a supply's stamp and its report in one transaction.
"""
from __future__ import annotations

import logging
from typing import Any, Final

from psycopg2 import sql

from csp_observatory.graded_views import ensure_views
from csp_observatory.schema import FeedSchema
from csp_observatory.stamp_data import Stamp, build_stamp
from csp_observatory.stamp_text import comment_stamp, dag_doc_section, with_stamp

log = logging.getLogger(__name__)

SCHEMA: Final = "dq"
READERS: Final = ("csp_analyst", "csp_engineer", "csp_personal_reader")
_DDL: Final = """
CREATE TABLE IF NOT EXISTS dq.supplies (
    fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    supply_id text NOT NULL UNIQUE,
    feed text NOT NULL,
    period text NOT NULL,
    partner text NOT NULL,
    status text NOT NULL,
    level text NOT NULL CHECK (level IN ('green', 'amber', 'red')),
    level_text text,
    reasons text[] NOT NULL DEFAULT '{}',
    completeness text, accuracy text, "precision" text, currency text,
    rows_in_files integer,
    rows_loaded integer NOT NULL DEFAULT 0,
    rows_set_aside integer NOT NULL DEFAULT 0,
    rows_loaded_with_problems integer NOT NULL DEFAULT 0,
    rows_withheld integer NOT NULL DEFAULT 0,
    files_refused integer NOT NULL DEFAULT 0,
    arrived_at timestamptz,
    due_at timestamptz,
    days_late integer,
    collected_at timestamptz,
    reported_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS supplies_feed_idx ON dq.supplies (feed, period);
CREATE TABLE IF NOT EXISTS dq.qualities (
    supply_id text NOT NULL REFERENCES dq.supplies (supply_id) ON DELETE CASCADE,
    quality text NOT NULL,
    score double precision,
    grade text NOT NULL,
    passed integer NOT NULL,
    failed integer NOT NULL,
    files integer NOT NULL,
    caveats text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (supply_id, quality)
);
CREATE TABLE IF NOT EXISTS dq.file_qualities (
    supply_id text NOT NULL REFERENCES dq.supplies (supply_id) ON DELETE CASCADE,
    file_name text NOT NULL,
    table_name text,
    quality text NOT NULL,
    score double precision,
    grade text NOT NULL,
    passed integer NOT NULL,
    failed integer NOT NULL,
    PRIMARY KEY (supply_id, file_name, quality)
);
CREATE TABLE IF NOT EXISTS dq.checks (
    supply_id text NOT NULL REFERENCES dq.supplies (supply_id) ON DELETE CASCADE,
    file_name text NOT NULL,
    check_no integer NOT NULL,
    quality text,
    expectation text NOT NULL,
    column_name text,
    description text,
    success boolean,
    unexpected_count integer,
    unexpected_percent double precision,
    PRIMARY KEY (supply_id, file_name, check_no)
);
CREATE TABLE IF NOT EXISTS dq.set_aside_rows (
    supply_id text NOT NULL REFERENCES dq.supplies (supply_id) ON DELETE CASCADE,
    file_name text NOT NULL,
    source_row integer,
    stage text NOT NULL,
    reason text NOT NULL,
    fields text[] NOT NULL DEFAULT '{}',
    loaded boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS set_aside_rows_supply_idx ON dq.set_aside_rows (supply_id);
-- v2: dq.supplies made by v1 (key supply_id) gets the integer key fid that QGIS and GDAL take as the feature id
-- (the analysts' QGIS project lists it as a layer); supply_id stays unique, and the other tables refer to it.
ALTER TABLE dq.supplies ADD COLUMN IF NOT EXISTS fid bigint GENERATED ALWAYS AS IDENTITY;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid
                   AND a.attnum = ANY (c.conkey)
                   WHERE c.conrelid = 'dq.supplies'::regclass AND c.contype = 'p' AND a.attname = 'fid') THEN
        ALTER TABLE dq.supplies ADD CONSTRAINT supplies_supply_id_key UNIQUE (supply_id);
        ALTER TABLE dq.supplies DROP CONSTRAINT supplies_pkey CASCADE;      -- and the foreign keys on it
        ALTER TABLE dq.supplies ADD PRIMARY KEY (fid);
        ALTER TABLE dq.qualities ADD FOREIGN KEY (supply_id) REFERENCES dq.supplies (supply_id) ON DELETE CASCADE;
        ALTER TABLE dq.file_qualities ADD FOREIGN KEY (supply_id) REFERENCES dq.supplies (supply_id)
            ON DELETE CASCADE;
        ALTER TABLE dq.checks ADD FOREIGN KEY (supply_id) REFERENCES dq.supplies (supply_id) ON DELETE CASCADE;
        ALTER TABLE dq.set_aside_rows ADD FOREIGN KEY (supply_id) REFERENCES dq.supplies (supply_id)
            ON DELETE CASCADE;
    END IF;
END $$;
"""

TABLE_COMMENTS: Final = {
    "supplies": "Quality stamp (guidance Box 3): one row per supply, its outcome (green, amber, red) and reasons as "
                "its quality report says, and its grade per quality (the worst of its files'). A re-sent supply "
                "replaces its row; a refused re-send of a loaded supply leaves the loaded one's. Key: fid [dq v2]",
    "qualities": "One row per supply and quality (section 4.2.3): the lowest score of its files, the worst grade "
                 "(grading.py), checks passed and failed over its files, and the failed checks as caveats",
    "file_qualities": "One row per supply, file and quality: score, grade and checks as the report shows them",
    "checks": "One row per supply, file and check (Great Expectations), as the report lists them; no values",
    "set_aside_rows": "Rows set aside (loaded = false: not loaded) or loaded with a problem (loaded = true), by file "
                      "and row number in the partner's file, with stage, reason and the fields it names; never a value",
}


# --- PostGIS ------------------------------------------------------------------------------------------------

def ensure_dq(conn: Any) -> None:
    """The ``dq`` schema, its tables, comments and grants (readers: :data:`READERS`); no commit."""
    I = sql.Identifier  # noqa: E741
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('csp_observatory.ddl.dq'))")
        cur.execute("SELECT obj_description(to_regclass('dq.supplies'), 'pg_class')")
        if cur.fetchone()[0] != TABLE_COMMENTS["supplies"]:
            # Made (or changed) once: a report that finds them up to date takes no lock on the analysts' tables.
            cur.execute("CREATE SCHEMA IF NOT EXISTS dq")
            cur.execute("REVOKE ALL ON SCHEMA dq FROM PUBLIC")
            cur.execute(_DDL)
            for table, text in TABLE_COMMENTS.items():
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(I(SCHEMA, table)), (text,))
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(READERS),))
        for (role,) in cur.fetchall():
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA dq TO {}").format(I(role)))
            cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA dq TO {}").format(I(role)))


def loaded_before(conn: Any, supply_id: str) -> bool:
    """Whether the feed's tables hold a supply's rows from an earlier load (observatory.supplies says loaded)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supplies') IS NOT NULL")
        if not cur.fetchone()[0]:
            return False
        cur.execute("SELECT status = 'loaded' FROM observatory.supplies WHERE supply_id = %s", (supply_id,))
        row = cur.fetchone()
    return bool(row and row[0])


def _insert(cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    from psycopg2.extras import execute_values

    columns = list(rows[0])
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        sql.Identifier(SCHEMA, table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    # One statement per thousand rows: a supply with many rows set aside costs a few round trips, not one each.
    execute_values(cur, query.as_string(cur), [tuple(r[c] for c in columns) for r in rows], page_size=1000)


def write_stamp(conn: Any, stamp: Stamp) -> None:
    """Replace a supply's dq rows with ``stamp``'s (a re-run never duplicates them); no commit."""
    sid = stamp.supply["supply_id"]
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.dq.{sid}",))
        cur.execute("DELETE FROM dq.supplies WHERE supply_id = %s", (sid,))     # cascades to its other rows
        _insert(cur, "supplies", [stamp.supply])
        _insert(cur, "qualities", stamp.qualities)
        _insert(cur, "file_qualities", stamp.file_qualities)
        _insert(cur, "checks", stamp.checks)
        _insert(cur, "set_aside_rows", stamp.set_aside)


def latest_loaded(conn: Any, feed: str) -> dict[str, Any] | None:
    """The dq.supplies row of a feed's latest loaded supply (by period, then report time), or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM dq.supplies WHERE feed = %s AND status = 'loaded' "
                    "ORDER BY period DESC, reported_at DESC LIMIT 1", (feed,))
        row = cur.fetchone()
        return dict(zip([d.name for d in cur.description], row)) if row else None


def supply_row(conn: Any, supply_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A supply's dq.supplies row and its dq.qualities rows (for the DAG docs)."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM dq.supplies WHERE supply_id = %s", (supply_id,))
        row = cur.fetchone()
        if row is None:
            return None, []
        out = dict(zip([d.name for d in cur.description], row))
        cur.execute("SELECT * FROM dq.qualities WHERE supply_id = %s", (supply_id,))
        quals = [dict(zip([d.name for d in cur.description], r)) for r in cur.fetchall()]
    return out, quals


def stamp_comments(conn: Any, schema: FeedSchema) -> list[str]:
    """End each of the feed's tables' comments with its latest loaded supply's stamp; no commit. Returns them."""
    latest = latest_loaded(conn, schema.feed)
    text = comment_stamp(latest) if latest else None
    done = []
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL",
                        (f'"{schema.db_schema}"."{f.table}"',) * 2)
            current, exists = cur.fetchone()
            if not exists:
                continue
            wanted = with_stamp(current, text)
            if wanted != (current or ""):
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(sql.Identifier(schema.db_schema, f.table)),
                            (wanted,))
            done.append(f"{schema.db_schema}.{f.table}")
    return done


def record_supply(conn: Any, schema: FeedSchema, report: dict[str, Any], partner: str,
                  collected_at: str | None = None) -> Stamp | None:
    """A supply's stamp, its report in observatory.supplies, the feed's graded views and table comments: all in
    the caller's transaction (no commit). Returns the stamp written, or None when it was kept.

    A supply that was not loaded this time but whose rows an earlier load put in the tables (a held or refused
    re-send, the same files again) keeps the loaded one's stamp and report: they describe what analysts read.
    """
    from csp_observatory import database, loading

    sid, status = report["supply"]["supply_id"], report["supply"]["status"]
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supplies') IS NOT NULL")
        if not cur.fetchone()[0]:
            database.ensure_database(conn)       # a feed's very first supply may be refused before any load
    ensure_dq(conn)
    stamp = None
    if status == "loaded" or not loaded_before(conn, sid):
        stamp = build_stamp(report, schema, partner, collected_at)
        with conn.cursor() as cur:
            # A supply never loaded has no row yet: the report needs one (its status says why it is not loaded).
            cur.execute("INSERT INTO observatory.supplies (supply_id, feed, period, status) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (supply_id) DO NOTHING", (sid, schema.feed, report["supply"]["period"], status))
        loading.record_report(conn, sid, report, status)
        write_stamp(conn, stamp)
    else:
        log.info("%s: %s this time, but loaded before: its stamp and report stay the loaded supply's", sid, status)
    ensure_views(conn, schema)
    if stamp is not None and status == "loaded":
        # Only a load changes what the tables hold, and so which supply their comments name.
        stamp_comments(conn, schema)
    return stamp


def latest_reported(conn: Any, feed: str) -> str | None:
    """The supply of a feed whose stamp was written last, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT supply_id FROM dq.supplies WHERE feed = %s ORDER BY reported_at DESC, supply_id DESC "
                    "LIMIT 1", (feed,))
        row = cur.fetchone()
    return row[0] if row else None


def stamp_supply(settings: Any, schema: FeedSchema, report: dict[str, Any], partner: str,
                 collected_at: str | None = None, db: Any = None) -> bool:
    """For ``pipeline.report_and_archive``: a supply's stamp and report in one transaction, then the feed's DAG docs.

    Never raises: a stamp that cannot be written is logged (the partner's report and the archive go on, and the
    next report of the supply writes it). Returns whether it was committed.
    """
    from csp_observatory import metadata_docs
    from csp_observatory.pipeline_supply import SettingsServices

    try:
        # ``db``: the stage's own connection factory (the DAG layer's Airflow connection); else the settings'
        with (db or SettingsServices(settings).db)() as conn:
            try:
                record_supply(conn, schema, report, partner, collected_at)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            latest = latest_reported(conn, schema.feed)
            row, qualities = supply_row(conn, latest) if latest else (None, [])
            conn.rollback()
    except Exception:       # noqa: BLE001  (the report must still reach the partner)
        log.exception("%s: the quality stamp could not be written", report["supply"]["supply_id"])
        return False
    try:
        metadata_docs.write_quality_doc(settings.reports_dir, schema.feed, dag_doc_section(row, qualities))
    except OSError:
        log.exception("%s: stamped, but the DAG docs' quality section could not be written", schema.feed)
    return True
