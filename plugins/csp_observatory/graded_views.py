"""Each feed table's graded view (the quality stamp per record, ``stamp.py``): ``<schema>.<table>_graded``.

Every record of the table, ``fid`` first, with its supply's level and grades from ``dq.supplies``. The view reads
through a SQL function (``<table>_graded_rows``) whose body names the table as text, so the view holds no
dependency on the table: the table can still be dropped, migrated or re-created without ``CASCADE`` (as the counts
by ward and month, see docs/ANALYSTS.md). The function is ``STABLE`` SQL, which PostgreSQL inlines: a map's
bounding box still uses the table's GiST index. The view's row type is a composite type, so its ``geom`` keeps
``geometry(Point,27700)`` for GDAL and QGIS. Nothing here commits.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Final

from psycopg2 import errors, sql

from csp_observatory.database import ROLES
from csp_observatory.schema import FeedSchema

log = logging.getLogger(__name__)

VIEW_SUFFIX: Final = "_graded"
#: In a graded view's comment: the hash of its definition, so that an unchanged view is never re-created.
VIEW_MARK: Final = "[dq view "
#: The columns a graded view adds to its table's, after them.
VIEW_COLUMNS: Final = (("dq_level", "text"), ("dq_completeness", "text"), ("dq_accuracy", "text"),
                       ("dq_precision", "text"), ("dq_currency", "text"), ("dq_reported_at", "timestamptz"))
#: How long a view's re-creation waits for readers of the old one before it leaves it to the next report.
VIEW_LOCK_TIMEOUT: Final = "5s"


def view_name(table: str) -> str:
    """The graded view of a feed table (same schema)."""
    return f"{table}{VIEW_SUFFIX}"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted (for the text of a function body, where no cursor quotes it)."""
    return '"' + name.replace('"', '""') + '"'


def view_body(db_schema: str, table: str, columns: list[str]) -> str:
    """The text of a graded view's function: the table's columns (``fid`` first) and its supply's stamp."""
    t = ", ".join(f"t.{quote_ident(c)}" for c in columns)
    return (f"SELECT {t}, s.level, s.completeness, s.accuracy, s.\"precision\", s.currency, s.reported_at "
            f"FROM {quote_ident(db_schema)}.{quote_ident(table)} t "
            f"LEFT JOIN dq.supplies s ON s.supply_id = t.supply_id")


def view_sql(db_schema: str, table: str, columns: list[tuple[str, str]]) -> tuple[str, list[sql.Composable]]:
    """The statements that (re)create a table's graded view from its columns [(name, SQL type with typmod)], and
    the hash of its definition. ``fid`` comes first; the dq columns after the table's."""
    I = sql.Identifier  # noqa: E741
    ordered = [c for c in columns if c[0] == "fid"] + [c for c in columns if c[0] != "fid"]
    view, rows_type, func = view_name(table), f"{table}{VIEW_SUFFIX}_row", f"{table}{VIEW_SUFFIX}_rows"
    all_columns = [*ordered, *VIEW_COLUMNS]
    digest = hashlib.sha256(json.dumps([db_schema, table, all_columns]).encode()).hexdigest()[:16]
    body = view_body(db_schema, table, [n for n, _ in ordered])
    statements: list[sql.Composable] = [
        sql.SQL("DROP VIEW IF EXISTS {}").format(I(db_schema, view)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(I(db_schema, func)),
        sql.SQL("DROP TYPE IF EXISTS {}").format(I(db_schema, rows_type)),
        sql.SQL("CREATE TYPE {} AS ({})").format(I(db_schema, rows_type), sql.SQL(", ").join(
            sql.SQL("{} {}").format(I(n), sql.SQL(t)) for n, t in all_columns)),
        # STABLE SQL, not STRICT, not SECURITY DEFINER: inlined into the query, so filters reach the table's indexes.
        sql.SQL("CREATE FUNCTION {}() RETURNS SETOF {} LANGUAGE sql STABLE AS {}").format(
            I(db_schema, func), I(db_schema, rows_type), sql.Literal(body)),
        sql.SQL("CREATE VIEW {} AS SELECT * FROM {}()").format(I(db_schema, view), I(db_schema, func)),
    ]
    return digest, statements


def _table_columns(cur: Any, db_schema: str, table: str) -> list[tuple[str, str]]:
    cur.execute("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                   WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
                (f'"{db_schema}"."{table}"',))
    return [(n, t) for n, t in cur.fetchall()]


def ensure_views(conn: Any, schema: FeedSchema) -> dict[str, str]:
    """Create or bring up to date each feed table's graded view; no commit. Returns {view: what happened}.

    A view whose definition is unchanged (same columns, by the hash in its comment) is left alone; one being read
    when it must change is left for the next report (waiting at most :data:`VIEW_LOCK_TIMEOUT`), never blocking
    the supply's stamp. Readers: the roles that may read the table (grants copied from it).
    """
    I = sql.Identifier  # noqa: E741
    done: dict[str, str] = {}
    with conn.cursor() as cur:
        for f in schema.files:
            columns = _table_columns(cur, schema.db_schema, f.table)
            if not columns or "supply_id" not in {n for n, _ in columns}:
                continue
            view = view_name(f.table)
            digest, statements = view_sql(schema.db_schema, f.table, columns)
            cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f'"{schema.db_schema}"."{view}"',))
            current = cur.fetchone()[0] or ""
            if f"{VIEW_MARK}{digest}]" in current:
                done[f"{schema.db_schema}.{view}"] = "unchanged"
                continue
            cur.execute("SAVEPOINT csp_dq_view")
            try:
                cur.execute("SET LOCAL lock_timeout = %s", (VIEW_LOCK_TIMEOUT,))
                for statement in statements:
                    cur.execute(statement)
                cur.execute(sql.SQL("COMMENT ON VIEW {} IS %s").format(I(schema.db_schema, view)), (
                    f"{schema.title}: {f.title}, every record with its supply's quality stamp (dq.supplies): "
                    f"level green/amber/red and grade per quality (grading.py). Filter dq_level to leave out a bad "
                    f"month. Key: fid. {VIEW_MARK}{digest}]",))
                for role in ROLES:
                    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (role,))
                    if not cur.fetchone()[0]:
                        continue
                    cur.execute("SELECT has_table_privilege(%s, to_regclass(%s), 'SELECT')",
                                (role, f'"{schema.db_schema}"."{f.table}"'))
                    verb = "GRANT SELECT ON {} TO {}" if cur.fetchone()[0] else "REVOKE ALL ON {} FROM {}"
                    cur.execute(sql.SQL(verb).format(I(schema.db_schema, view), I(role)))
                cur.execute("RESET lock_timeout")
                cur.execute("RELEASE SAVEPOINT csp_dq_view")
                done[f"{schema.db_schema}.{view}"] = "created"
            except errors.LockNotAvailable:
                cur.execute("ROLLBACK TO SAVEPOINT csp_dq_view")
                cur.execute("RESET lock_timeout")
                log.warning("%s.%s is being read: its new definition waits for the next report", schema.db_schema,
                            view)
                done[f"{schema.db_schema}.{view}"] = "busy"
    return done
