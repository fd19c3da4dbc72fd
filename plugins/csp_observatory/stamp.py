"""The quality stamp (guidance Box 3): each supply's outcome and quality grades in PostGIS, where analysts read them.

The report (``reporting.build_report``) is the one source: this module copies its figures, never recomputes them.
Grades come from ``grading.py`` (a report that carries its own ``grade`` keeps it), the level and its reasons from
the report's ``outcome`` (``reporting.assess``). In the schema ``dq`` (read by ``csp_analyst``, ``csp_engineer`` and
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

The tables' comments end with the feed's latest loaded supply's stamp (:func:`comment_stamp`); the feed's DAG docs
show it too (:func:`dag_doc_section`). Nothing here commits: ``pipeline.report_and_archive`` writes a supply's stamp
and its report in one transaction.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Final, Iterable

from psycopg2 import sql

from csp_observatory.graded_views import VIEW_SUFFIX, ensure_views, view_name  # noqa: F401  (view_name: re-exported)
from csp_observatory.grading import GRADE_TEXT, GRADES, quality_grade, worst
from csp_observatory.schema import FeedSchema

log = logging.getLogger(__name__)

SCHEMA: Final = "dq"
QUALITIES: Final = ("completeness", "accuracy", "precision", "currency")
READERS: Final = ("csp_analyst", "csp_engineer", "csp_personal_reader")
#: Where a table's comment turns to the stamp: what comes before is the schema's and the partner's text.
COMMENT_MARK: Final = " | Quality stamp: "
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


# --- from the report: pure ----------------------------------------------------------------------------------

@dataclass
class Stamp:
    """The dq rows of one supply, as tuples in the tables' column order (see ``_DDL``)."""

    supply: dict[str, Any]
    qualities: list[dict[str, Any]] = field(default_factory=list)
    file_qualities: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    set_aside: list[dict[str, Any]] = field(default_factory=list)


def file_grade(q: dict[str, Any]) -> str:
    """A file's grade for a quality: the report's own if it carries one, else :func:`grading.quality_grade`."""
    given = q.get("grade")
    if given in GRADES:
        return str(given)
    return quality_grade(_number(q.get("score")), int(q.get("failed") or 0))


def _number(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def fields_named(reason: str, field_names: Iterable[str]) -> list[str]:
    """The datafield names a reason mentions (whole words), in order of the names given."""
    return [n for n in field_names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", reason)]


def check_caveat(file_name: str, e: dict[str, Any]) -> str:
    """One failed check in words: file, check, field and how many values failed (never which)."""
    what = e.get("describe") or e.get("expectation") or "a check"
    on = f" on {e['column']}" if e.get("column") else ""
    n, pct = _int(e.get("unexpected_count")), _number(e.get("unexpected_percent"))
    count = "" if n is None else f": {n:,} value{'s' if n != 1 else ''}" + ("" if pct is None else f" ({pct:g}%)")
    return f"{file_name}: {what}{on} failed{count}"


def build_stamp(report: dict[str, Any], schema: FeedSchema, partner: str, collected_at: str | None = None) -> Stamp:
    """The dq rows of a supply from its report: every figure copied, grades by ``grading.py``."""
    supply = report["supply"]
    sid = supply["supply_id"]
    outcome = report.get("outcome") or {}
    summary = report.get("summary") or {}
    stamp = Stamp(supply={})
    validation = report.get("validation") or {}
    tables = {f.name: f"{schema.db_schema}.{f.table}" for f in schema.files}
    per_quality: dict[str, list[tuple[str, dict[str, Any]]]] = {q: [] for q in QUALITIES}
    for file_name, v in validation.items():
        qualities = (v or {}).get("qualities") or {}
        check_no = 0
        for q in [*QUALITIES, *(k for k in qualities if k not in QUALITIES)]:
            block = qualities.get(q)
            if not isinstance(block, dict):
                continue
            grade = file_grade(block)
            per_quality.setdefault(q, []).append((file_name, block))
            stamp.file_qualities.append({
                "supply_id": sid, "file_name": file_name, "table_name": tables.get(file_name), "quality": q,
                "score": _number(block.get("score")), "grade": grade, "passed": int(block.get("passed") or 0),
                "failed": int(block.get("failed") or 0)})
            for e in block.get("expectations") or []:
                check_no += 1
                stamp.checks.append({
                    "supply_id": sid, "file_name": file_name, "check_no": check_no, "quality": q,
                    "expectation": str(e.get("expectation") or "expectation"), "column_name": e.get("column"),
                    "description": e.get("describe"),
                    "success": None if e.get("success") is None else bool(e["success"]),
                    "unexpected_count": _int(e.get("unexpected_count")),
                    "unexpected_percent": _number(e.get("unexpected_percent"))})
    grades: dict[str, str] = {}
    # The report's own figures for the supply where it gives them (reporting: fitness.supply_qualities), else the
    # same rules here: the lowest file score, the worst file grade, the checks summed.
    given = report.get("qualities") if isinstance(report.get("qualities"), dict) else {}
    for q, blocks in per_quality.items():
        scores = [s for _, b in blocks if (s := _number(b.get("score"))) is not None]
        mine = given.get(q) if isinstance(given.get(q), dict) else {}
        grade = mine.get("grade") if mine.get("grade") in GRADES else worst(file_grade(b) for _, b in blocks)
        grades[q] = grade
        caveats = [check_caveat(name, e) for name, b in blocks for e in b.get("expectations") or []
                   if e.get("success") is False]
        stamp.qualities.append({
            "supply_id": sid, "quality": q, "score": _number(mine["score"]) if "score" in mine else (
                min(scores) if scores else None), "grade": grade,
            "passed": int(mine["passed"]) if "passed" in mine else sum(int(b.get("passed") or 0) for _, b in blocks),
            "failed": int(mine["failed"]) if "failed" in mine else sum(int(b.get("failed") or 0) for _, b in blocks),
            "files": len(blocks), "caveats": caveats})
    field_names = [d.name for f in schema.files for d in f.datafields]
    for loaded, rows in ((False, report.get("rejected_rows") or []), (True, report.get("flagged_rows") or [])):
        for r in rows:
            reason = str(r.get("reason") or "")
            stamp.set_aside.append({"supply_id": sid, "file_name": str(r.get("file") or ""),
                                    "source_row": _int(r.get("row")), "stage": str(r.get("stage") or ""),
                                    "reason": reason, "fields": fields_named(reason, field_names), "loaded": loaded})
    arrival = report.get("arrival") if isinstance(report.get("arrival"), dict) else {}
    stamp.supply = {
        "supply_id": sid, "feed": supply.get("feed") or schema.feed, "period": supply["period"], "partner": partner,
        "status": supply["status"], "level": outcome.get("level") or "red", "level_text": outcome.get("text"),
        "reasons": [str(r) for r in outcome.get("reasons") or []],
        **{q: grades.get(q, "n/a") for q in QUALITIES},
        "rows_in_files": _int(summary.get("rows_in_files")), "rows_loaded": int(summary.get("rows_loaded") or 0),
        "rows_set_aside": int(summary.get("rows_need_attention") or 0),
        "rows_loaded_with_problems": int(summary.get("rows_loaded_with_problems") or 0),
        "rows_withheld": int(summary.get("rows_withheld") or 0),
        "files_refused": int(summary.get("files_refused") or 0),
        "arrived_at": arrival.get("arrived_at") or None, "due_at": arrival.get("due") or None,
        "days_late": _int(arrival.get("days_late")),
        "collected_at": collected_at or (report.get("metadata") or {}).get("date_supplied") or None,
        "reported_at": (report.get("report") or {}).get("generated_at")}
    return stamp


def grades_text(row: dict[str, Any]) -> str:
    """"completeness good, accuracy fair, ..." from a dq.supplies row."""
    return ", ".join(f"{q} {row.get(q) or 'n/a'}" for q in QUALITIES)


def comment_stamp(row: dict[str, Any]) -> str:
    """The stamp a feed table's comment ends with (after :data:`COMMENT_MARK`): its latest loaded supply's."""
    reported = str(row.get("reported_at") or "")[:10]
    reasons = row.get("reasons") or []
    why = f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" if reasons else ""
    return (f"latest supply {row['period']} is {row['level']}{why}; {grades_text(row)} (reported {reported}; "
            f"per record in the {VIEW_SUFFIX} view, detail in dq.supplies and dq.qualities)")


def with_stamp(comment: str | None, stamp_text: str | None) -> str:
    """A table comment with its stamp replaced (or removed, with ``stamp_text`` None); the rest is kept."""
    base = without_stamp(comment)
    return base + (COMMENT_MARK + stamp_text if stamp_text else "")


def without_stamp(comment: str | None) -> str:
    """A table comment without its stamp: the schema's and the partner's text."""
    return (comment or "").split(COMMENT_MARK, 1)[0]


def stamp_of(comment: str | None) -> str:
    """The stamp part of a table comment (from :data:`COMMENT_MARK` on), or ""."""
    text = comment or ""
    i = text.find(COMMENT_MARK)
    return text[i:] if i >= 0 else ""


def _md(text: Any) -> str:
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]()#!|~])", r"\\\1", text)


def dag_doc_section(row: dict[str, Any] | None, qualities: list[dict[str, Any]] | None = None) -> str:
    """Markdown for the feed's DAG docs: the latest supply's level, reasons and grades (one line per quality)."""
    if not row:
        return ""
    lines = ["## Latest quality stamp (dq schema)", "",
             f"*Supply {_md(row['supply_id'])}, {_md(row['status'])}, reported "
             f"{_md(str(row.get('reported_at') or '')[:19])}.*", "",
             f"**Outcome: {_md(str(row['level']).upper())}** ({_md(row.get('level_text') or '')})", ""]
    lines += [f"- {_md(r)}" for r in row.get("reasons") or []] or ["- no problems found"]
    lines += ["", "| Quality | Grade | Score | Checks passed | Checks failed |", "|---|---|---|---|---|"]
    by_q = {q["quality"]: q for q in qualities or []}
    for q in QUALITIES:
        x = by_q.get(q, {})
        score = "n/a" if x.get("score") is None else f"{x['score']:g}%"
        lines.append(f"| {q} | {_md(row.get(q) or 'n/a')} | {score} | {x.get('passed', '')} | {x.get('failed', '')} |")
    lines += ["", "Grades: " + "; ".join(f"{g}: {_md(t)}" for g, t in GRADE_TEXT.items()) + "."]
    return "\n".join(lines)


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
    from contextlib import closing

    import psycopg2

    from csp_observatory import metadata_docs

    try:
        # ``db``: the stage's own connection factory (the DAG layer's Airflow connection); else the settings' URL
        with (db() if db is not None else closing(psycopg2.connect(settings.database_url))) as conn:
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
