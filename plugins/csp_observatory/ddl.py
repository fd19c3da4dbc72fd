"""PostGIS schemas, roles and per-feed tables, derived from the feed schemas.

Every identifier goes through ``psycopg2.sql.Identifier``: table and column names come from YAML files that
partners' schemas may one day be contributed as, so they are never formatted into SQL text. Functions here do
not commit: the caller decides the transaction (see ARCHITECTURE.md, *PostGIS*).
"""
from __future__ import annotations

from typing import Any, Final, NamedTuple

from psycopg2 import sql

from csp_observatory.schema import CONTENT_KEY_COLUMN, FeedFile, FeedSchema

SRID: Final = 27700
SCHEMAS: Final = ("depersonalised", "personal", "observatory", "reference")
ROLES: Final = ("csp_analyst", "csp_engineer", "csp_personal_reader")

#: Schema datafield type -> PostgreSQL column type.
SQL_TYPES: Final = {
    "string": "text", "code": "text", "postcode": "text", "time": "text",
    "date": "date", "integer": "integer", "float": "double precision", "boolean": "boolean",
}
#: Added by sanitising (ARCHITECTURE.md, column contracts).
SANITISED_COLUMNS: Final = (
    ("sanitised_postcode", "text"), ("sanitised_easting", "integer"), ("sanitised_northing", "integer"),
    ("sanitise_rule", "text"), ("displacement_m", "real"), ("geocode_method", "text"),
)
#: Added by geocoding; kept only in personal tables (the exact point).
GEOCODED_COLUMNS: Final = (
    ("geo_easting", "double precision"), ("geo_northing", "double precision"), ("geo_postcode", "text"),
    ("geocode_method", "text"), ("geocode_note", "text"),
)
#: Lineage: which supply, which file (by hash) and which row of it each record came from.
LINEAGE_COLUMNS: Final = (
    ("supply_id", "text"), ("period", "text"), ("source_sha256", "text"), ("source_row", "integer"),
    ("loaded_at", "timestamptz"),
)
NOT_NULL_COLUMNS: Final = frozenset({"supply_id", "source_sha256", "loaded_at"})
GEOM_TYPE: Final = f"geometry(Point,{SRID})"
#: Columns the loader fills itself; every other table column must come from the frame.
LOADER_COLUMNS: Final = frozenset({"supply_id", "period", "source_sha256", "loaded_at", "geom"})

_COMMENTS: Final = {
    "age": "Age in whole years at the event date (or at the end of the supply period), derived from date of birth",
    "sanitised_postcode": "Postcode the record is shown at after Appendix 1 sanitising",
    "sanitised_easting": "Easting (EPSG:27700) of the sanitised point: a postcode centroid, never the address",
    "sanitised_northing": "Northing (EPSG:27700) of the sanitised point: a postcode centroid, never the address",
    "sanitise_rule": "How the point was chosen: own_postcode | next_nearest (or, where the feed keeps points in "
                     "their ward first: same_ward | same_district | anywhere) | non_addressable | not_geocoded",
    "displacement_m": "Distance in metres from the geocoded location to the sanitised point",
    "geocode_method": "How the location was found: supplied | wgs84 | postcode | terminated_postcode | gazetteer | "
                      "outside_coverage | failed",
    CONTENT_KEY_COLUMN: "Key of a file with no reference number: a hash of the record's loaded values and its "
                        "occurrence among identical records; the same in a re-sent supply",
    "geo_easting": "Easting (EPSG:27700) of the geocoded location",
    "geo_northing": "Northing (EPSG:27700) of the geocoded location",
    "geo_postcode": "Postcode the geocoded point belongs to",
    "geocode_note": "Note from geocoding (e.g. terminated postcode used)",
    "supply_id": "Supply this record came in: <feed>/<period>",
    "period": "Supply period",
    "source_sha256": "SHA-256 of the encrypted file the record came from (observatory.deliveries)",
    "source_row": "Data row number in the partner's file (header excluded)",
    "loaded_at": "When the supply was loaded",
}


class Column(NamedTuple):
    """One column of a feed table."""

    name: str
    sql_type: str


def table_schema(schema: FeedSchema) -> str:
    """The PostGIS schema holding a feed's tables."""
    return schema.db_schema


def point_columns(schema: FeedSchema) -> tuple[str, str]:
    """The frame columns the table's geom is built from: the sanitised point, or the exact one if personal."""
    return ("geo_easting", "geo_northing") if schema.personalised else ("sanitised_easting", "sanitised_northing")


def table_columns(schema: FeedSchema, feed_file: FeedFile) -> list[Column]:
    """The columns of a feed file's table, in order, from its datafields and the sanitising contract."""
    cols: list[Column] = []
    if schema.personalised:
        cols += [Column(d.name, SQL_TYPES[d.type]) for d in feed_file.datafields]
        extra = GEOCODED_COLUMNS
    else:
        # what sanitising drops (schema.DROPPED_ON_SANITISING, or free_text: drop) has no column here
        cols += [Column(d.name, SQL_TYPES[d.type]) for d in feed_file.datafields if not d.dropped_on_sanitising]
        if feed_file.by_role("date_of_birth") and not feed_file.by_role("age") and "age" not in feed_file.field_names:
            cols.append(Column("age", "integer"))
        extra = SANITISED_COLUMNS
    if feed_file.content_key:
        cols.append(Column(CONTENT_KEY_COLUMN, "text"))
    names = {c.name for c in cols}
    for name, sql_type in (*extra, *LINEAGE_COLUMNS):
        if name in names:
            raise ValueError(f"{feed_file.name}: datafield {name!r} clashes with a column the observatory adds")
        cols.append(Column(name, sql_type))
    cols.append(Column("geom", GEOM_TYPE))
    return cols


def frame_columns(schema: FeedSchema, feed_file: FeedFile) -> list[str]:
    """The columns a loaded frame must have: the table's, less those the loader fills itself."""
    return [c.name for c in table_columns(schema, feed_file) if c.name not in LOADER_COLUMNS]


def _lock(cur: Any, what: str) -> None:
    # Several feed DAGs may start at once: serialise DDL so CREATE ... IF NOT EXISTS cannot race.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.ddl.{what}",))


def ensure_database(conn: Any) -> None:
    """Schemas, roles, grants and the observatory's own tables; safe to run again (no commit)."""
    I = sql.Identifier  # noqa: E741
    with conn.cursor() as cur:
        _lock(cur, "database")
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
        for schema in ("personal", "observatory"):
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


def _comment_for(schema: FeedSchema, feed_file: FeedFile, column: str) -> str | None:
    for d in feed_file.datafields:
        if d.name == column:
            if d.role == "age" and feed_file.by_role("date_of_birth") and not schema.personalised:
                return f"{d.label} (from the date of birth at the event where one was supplied)"
            return d.label
    if column == "geom":
        return "Exact geocoded point (EPSG:27700)" if schema.personalised else \
            "Sanitised point (EPSG:27700): the centroid of a postcode with enough households (Appendix 1)"
    return _COMMENTS.get(column)


def _primary_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The primary key columns of a table, in order ([] if it has none or does not exist)."""
    cur.execute("""SELECT a.attname FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                   WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
                   ORDER BY array_position(i.indkey, a.attnum)""", (f'"{db_schema}"."{table}"',))
    return [r[0] for r in cur.fetchall()]


def _migrate_primary_key(cur: Any, db_schema: str, feed_file: FeedFile, have: list[str]) -> None:
    """Give an existing table the key its schema now declares (e.g. a file that moved to ``key: content``).

    Rows loaded before a move to a content key get a ``migrated-`` key from their stored values; a re-sent supply
    replaces them with its own keys.
    """
    I = sql.Identifier  # noqa: E741
    want = ["supply_id", *feed_file.table_key]
    if have == want:
        return
    table = I(db_schema, feed_file.table)
    if feed_file.content_key:
        cur.execute(sql.SQL(
            "UPDATE {t} SET {k} = m.k FROM (SELECT ctid AS id, 'migrated-' || md5(x::text) || '-' || "
            "row_number() OVER (PARTITION BY md5(x::text)) AS k FROM {t} x WHERE {k} IS NULL) m "
            "WHERE {t}.ctid = m.id").format(t=table, k=I(CONTENT_KEY_COLUMN)))
    if have:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, I(f"{feed_file.table}_pkey")))
        # A column leaving the key keeps the NOT NULL the key gave it: drop that too (it may now be optional).
        for column in set(have) - set(want) - NOT_NULL_COLUMNS:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(table, I(column)))
    cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        table, I(f"{feed_file.table}_pkey"), sql.SQL(", ").join(I(c) for c in want)))


def ensure_feed_tables(conn: Any, schema: FeedSchema) -> list[str]:
    """Create (or extend) one table per file of a feed, with keys, indexes and comments; no commit."""
    I = sql.Identifier  # noqa: E741
    db_schema = table_schema(schema)
    made: list[str] = []
    with conn.cursor() as cur:
        _lock(cur, f"feed.{schema.feed}")
        for f in schema.files:
            table = sql.Identifier(db_schema, f.table)
            cols = table_columns(schema, f)
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s", (db_schema, f.table))
            existing = {r[0] for r in cur.fetchall()}
            key = _primary_key(cur, db_schema, f.table)
            if existing and {c.name for c in cols} <= existing and key == ["supply_id", *f.table_key]:
                # Up to date: take no lock stronger than a read, so analysts' open queries never block a load.
                continue
            col_defs = [sql.SQL("{} {}{}").format(I(c.name), sql.SQL(c.sql_type),
                                                  sql.SQL(" NOT NULL" if c.name in NOT_NULL_COLUMNS else ""))
                        for c in cols]
            # supply_id first: the key index also serves "delete this supply's rows".
            pk = [I("supply_id"), *(I(k) for k in f.table_key)]
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, CONSTRAINT {} PRIMARY KEY ({}))").format(
                table, sql.SQL(", ").join(col_defs), I(f"{f.table}_pkey"), sql.SQL(", ").join(pk)))
            # A schema may gain datafields after its table exists: add them, never drop (old supplies keep theirs).
            for c in cols:
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    table, I(c.name), sql.SQL(c.sql_type)))
            if existing:
                # A table made just now has its key already; an older one may need the key its schema now declares.
                _migrate_primary_key(cur, db_schema, f, key)
            cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist (geom)").format(
                I(f"{f.table}_geom_gist"), table))
            cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (supply_id)").format(
                I(f"{f.table}_supply_idx"), table))
            title = f"{schema.title}: {f.title}. {f.description} (guidance section {schema.guidance_section}; " \
                    f"{schema.dataset_type}; partner {schema.partner.agency})"
            cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (title,))
            for c in cols:
                comment = _comment_for(schema, f, c.name)
                if comment:
                    cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(c.name)), (comment,))
            made.append(f"{db_schema}.{f.table}")
    return made
