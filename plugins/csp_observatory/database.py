"""The observatory's database as a whole: PostGIS, its schemas, the group roles and their grants, and the
observatory's own tables (supplies, rejected rows, validation results). Safe to run again; no commit.
"""
from __future__ import annotations

from typing import Any, Final

from psycopg2 import sql

from csp_observatory.ddl import lock
from csp_observatory.partitions import LOADING_SCHEMA
from csp_observatory.ward_month import drop_orphan_counts

SCHEMAS: Final = ("depersonalised", "personal", "observatory", "reference", LOADING_SCHEMA)
ROLES: Final = ("csp_analyst", "csp_engineer", "csp_personal_reader")


def ensure_database(conn: Any) -> None:
    """Schemas, roles, grants and the observatory's own tables; safe to run again (no commit)."""
    I = sql.Identifier  # noqa: E741
    with conn.cursor() as cur:
        lock(cur, "database")
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
        if cur.fetchone() is None:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        for schema in SCHEMAS:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(I(schema)))
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))
        existing = {r[0] for r in cur.fetchall()}
        for role in ROLES:
            if role not in existing:
                # Group roles only: people log in with their own accounts that are members of these.
                cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(I(role)))
        # The loading schema holds partitions a load's second connection built and has not attached yet: the
        # loader's alone (they may be personal).
        for schema in ("personal", "observatory", LOADING_SCHEMA):
            cur.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(I(schema)))
        grants = {
            "csp_analyst": ("depersonalised", "reference"),
            "csp_engineer": ("observatory", "depersonalised", "reference"),
            "csp_personal_reader": ("personal",),
        }
        for role, schemas in grants.items():
            for schema in schemas:
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(I(schema), I(role)))
                cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(I(schema), I(role)))
                cur.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}")
                            .format(I(schema), I(role)))
        # Nobody but csp_personal_reader (and the owner) may read personal tables, even ones created later.
        for role in ("csp_analyst", "csp_engineer"):
            cur.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA personal FROM {}").format(I(role)))
        _ensure_observatory_tables(cur)
        drop_orphan_counts(conn, cur)


def _ensure_observatory_tables(cur: Any) -> None:
    cur.execute("""
        CREATE TABLE IF NOT EXISTS observatory.supplies (
            supply_id text PRIMARY KEY,
            feed text NOT NULL,
            period text NOT NULL,
            status text NOT NULL,
            files jsonb NOT NULL DEFAULT '{}'::jsonb,
            row_counts jsonb NOT NULL DEFAULT '{}'::jsonb,
            report jsonb,
            loaded_at timestamptz
        )""")
    cur.execute("COMMENT ON TABLE observatory.supplies IS %s",
                ("One row per supply (feed + period): its files, rows loaded per table and quality report",))
    # No row content here, ever: a rejected row may hold personal data. Row number and reason only.
    cur.execute("""
        CREATE TABLE IF NOT EXISTS observatory.rejected_rows (
            supply_id text NOT NULL,
            file_name text NOT NULL,
            source_row integer,
            stage text NOT NULL,
            reason text NOT NULL
        )""")
    cur.execute("CREATE INDEX IF NOT EXISTS rejected_rows_supply_idx ON observatory.rejected_rows (supply_id)")
    cur.execute("COMMENT ON TABLE observatory.rejected_rows IS %s",
                ("Rows set aside at any stage: row number in the partner's file and the reason (no row content)",))
    cur.execute("""
        CREATE TABLE IF NOT EXISTS observatory.validation_results (
            supply_id text NOT NULL,
            file_name text NOT NULL,
            quality text,
            expectation text NOT NULL,
            success boolean,
            unexpected_count bigint,
            unexpected_percent double precision,
            raw jsonb
        )""")
    cur.execute("CREATE INDEX IF NOT EXISTS validation_results_supply_idx "
                "ON observatory.validation_results (supply_id)")
    cur.execute("COMMENT ON TABLE observatory.validation_results IS %s",
                ("Great Expectations results per supply and file, grouped by the guidance's four qualities "
                 "(4.2.3); raw has sampled values removed",))

