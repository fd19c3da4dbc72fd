"""Counts of a depersonalised layer by ward, month and category (``<table>_ward_month``, beside the layer).

Each file of a depersonalised feed that has a location has them (:func:`has_ward_month`): made with its table
(``feed_tables.py``), recounted by :func:`refresh_ward_month` in the transaction of each load's refresh (the refresh
DAG each load's asset event starts, dags/refresh.py) and of retention's deletions. Nothing here commits.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Final

from psycopg2 import errors, sql

from csp_observatory.ddl import FID_COLUMN, table_columns, table_schema
from csp_observatory.schema import Datafield, FeedFile, FeedSchema

log = logging.getLogger(__name__)

#: A depersonalised layer's counts by ward, month and category: ``<table><WARD_MONTH_SUFFIX>`` beside it.
WARD_MONTH_SUFFIX: Final = "_ward_month"
#: How a counts table's comment starts: only tables so marked are ever dropped as orphans (ensure_database).
WARD_MONTH_MARK: Final = "Counts by ward and month of "


def has_ward_month(schema: FeedSchema, feed_file: FeedFile) -> bool:
    """Whether a file has counts by ward and month: a depersonalised file with a location (never a personal one)."""
    return not schema.personalised and bool(feed_file.location.columns)


def ward_month_table(feed_file: FeedFile) -> str:
    """The name of a layer's counts table, in the layer's schema."""
    return f"{feed_file.table}{WARD_MONTH_SUFFIX}"


def category_field(schema: FeedSchema, feed_file: FeedFile) -> Datafield | None:
    """The datafield a layer is counted and styled by: the one its schema gives the role ``category`` (the offence
    code, the incident type...) and that its table keeps; None if it has none (every record is then counted under
    a null category)."""
    kept = {c.name for c in table_columns(schema, feed_file)}
    return next((d for d in feed_file.by_role("category") if d.name in kept), None)


def _event_month(schema: FeedSchema, feed_file: FeedFile) -> sql.Composable:
    """SQL for a record's month: its event date's, else its supply period's (as the first day of the month)."""
    period = (sql.SQL("CASE WHEN t.period ~ '^[0-9]{6}$' THEN to_date(t.period, 'YYYYMM') END")
              if schema.period_format == "%Y%m" else sql.SQL("NULL::date"))
    event = feed_file.event_date
    if event and feed_file.field(event).type == "date" and not feed_file.field(event).dropped_on_sanitising:
        return sql.SQL("COALESCE(date_trunc('month', t.{})::date, {})").format(sql.Identifier(event), period)
    return period


def ensure_ward_month(cur: Any, schema: FeedSchema, feed_file: FeedFile) -> None:
    """Make a layer's counts table, with its comments and grants (``feed_tables.ensure_feed_tables`` calls it)."""
    I = sql.Identifier  # noqa: E741
    db_schema, name = table_schema(schema), ward_month_table(feed_file)
    table = I(db_schema, name)
    cur.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        {} bigint PRIMARY KEY, ward_code text, district_code text, month date, category text,
        records integer NOT NULL)""").format(table, I(FID_COLUMN)))
    category = category_field(schema, feed_file)
    by = f"{category.label} ({category.name})" if category else "no category (the schema names none)"
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (
        f"{WARD_MONTH_MARK}{db_schema}.{feed_file.table} ({schema.title}: {feed_file.title}), by {by}. Refreshed "
        f"by every load of the feed, in its transaction: it counts what the layer holds. A record's ward is its "
        f"sanitised postcode's (reference.postcodes), or the nearest postcode's for a place without one; its month "
        f"is its event date's, else its supply period's",))
    comments = {
        FID_COLUMN: "Row number (QGIS, GDAL feature id); renumbered at each refresh",
        "ward_code": "Ward (ONS code) of the sanitised point; empty for records without a point",
        "district_code": "Local authority district (ONS code) of the sanitised point",
        "month": "First day of the month of the event (or of the supply period where the record has no date)",
        "category": f"Category: {by}",
        "records": "Number of records",
    }
    for column, text in comments.items():
        cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(column)), (text,))
    # The schema's default privileges already grant analysts and engineers SELECT; say it here too, whoever made it.
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (["csp_analyst", "csp_engineer"],))
    for (role,) in cur.fetchall():
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, I(role)))


def ward_month_query(schema: FeedSchema, feed_file: FeedFile, reference: bool = True) -> sql.Composable:
    """The query that counts a layer by ward, month and category (the counts table's columns, in order): what a
    plain view would run on every read. ``reference``: whether reference.postcodes exists to give the wards."""
    I = sql.Identifier  # noqa: E741
    category = category_field(schema, feed_file)
    category_sql = sql.SQL("t.{}::text").format(I(category.name)) if category else sql.SQL("NULL::text")
    if reference:
        # The ward of the sanitised postcode; a point with no postcode (a park, a car park) takes the nearest one's.
        ward = sql.SQL("""COALESCE(p.ward_code, n.ward_code) AS ward_code,
                          COALESCE(p.district_code, n.district_code) AS district_code""")
        joins = sql.SQL("""LEFT JOIN reference.postcodes p ON p.postcode = t.sanitised_postcode
                           LEFT JOIN LATERAL (SELECT r.ward_code, r.district_code FROM reference.postcodes r
                                              WHERE p.postcode IS NULL AND t.geom IS NOT NULL
                                              ORDER BY r.geom <-> t.geom LIMIT 1) n ON true""")
    else:
        ward, joins = sql.SQL("NULL::text AS ward_code, NULL::text AS district_code"), sql.SQL("")
    return sql.SQL("""
        SELECT row_number() OVER (ORDER BY month, ward_code, category) AS {fid}, ward_code, district_code, month,
               category, records
          FROM (SELECT {ward}, {month} AS month, {category} AS category, count(*)::integer AS records
                  FROM {layer} t {joins}
                 GROUP BY 1, 2, 3, 4) s""").format(
        fid=I(FID_COLUMN), ward=ward, month=_event_month(schema, feed_file), category=category_sql,
        layer=I(table_schema(schema), feed_file.table), joins=joins)


def refresh_one(cur: Any, schema: FeedSchema, feed_file: FeedFile) -> int:
    """Recount one layer into its counts table; returns the number of rows written."""
    counts = sql.Identifier(table_schema(schema), ward_month_table(feed_file))
    cur.execute("SELECT to_regclass('reference.postcodes') IS NOT NULL")
    reference = cur.fetchone()[0]
    # Loads of two supplies of a feed may run at once: one recount at a time, each seeing the other's rows once
    # committed (a read committed statement started after the lock sees them). Readers are never blocked.
    cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(counts))
    cur.execute(sql.SQL("DELETE FROM {}").format(counts))
    cur.execute(sql.SQL("INSERT INTO {} ({}, ward_code, district_code, month, category, records) {}").format(
        counts, sql.Identifier(FID_COLUMN), ward_month_query(schema, feed_file, reference)))
    return cur.rowcount


def refresh_ward_month(conn: Any, schema: FeedSchema) -> dict[str, int]:
    """Recount each of a feed's layers by ward, month and category; no commit (the load calls it in its
    transaction, so the counts always match the layer). Returns the rows written per counts table."""
    written: dict[str, int] = {}
    files = [f for f in schema.files if has_ward_month(schema, f)]
    if not files:
        return written
    with conn.cursor() as cur:
        for f in files:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table_schema(schema)}"."{ward_month_table(f)}"',))
            if not cur.fetchone()[0]:
                continue        # made by ensure_feed_tables; a table from before it is counted at its next run
            started = time.perf_counter()
            written[f"{table_schema(schema)}.{ward_month_table(f)}"] = refresh_one(cur, schema, f)
            log.info("%s.%s: counts by ward and month refreshed in %.3f s", table_schema(schema),
                     ward_month_table(f), time.perf_counter() - started)
    return written


def drop_orphan_counts(conn: Any, cur: Any) -> list[str]:
    """Drop the counts tables whose layer is gone (dropped by an engineer, or by a test): they have no other
    dependency on it, so that dropping a layer never needs CASCADE. A table someone is reading is left for the
    next time (never wait for an analyst's lock)."""
    if conn.autocommit:
        return []
    cur.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'depersonalised' AND c.relkind = 'r' AND right(c.relname, %s) = %s
                     AND starts_with(coalesce(obj_description(c.oid, 'pg_class'), ''), %s)
                     AND to_regclass(format('%%I.%%I', n.nspname, left(c.relname, -%s))) IS NULL""",
                (len(WARD_MONTH_SUFFIX), WARD_MONTH_SUFFIX, WARD_MONTH_MARK, len(WARD_MONTH_SUFFIX)))
    dropped = []
    for (name,) in cur.fetchall():
        table = sql.Identifier("depersonalised", name)
        cur.execute("SAVEPOINT csp_orphan_counts")
        try:
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(table))
            cur.execute(sql.SQL("DROP TABLE {}").format(table))
            cur.execute("RELEASE SAVEPOINT csp_orphan_counts")
            dropped.append(name)
        except (errors.LockNotAvailable, errors.UndefinedTable):
            cur.execute("ROLLBACK TO SAVEPOINT csp_orphan_counts")
    return dropped
