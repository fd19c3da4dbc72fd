"""PostGIS schemas, roles and per-feed tables, derived from the feed schemas.

Every identifier goes through ``psycopg2.sql.Identifier``: table and column names come from YAML files that
partners' schemas may one day be contributed as, so they are never formatted into SQL text. Functions here do
not commit: the caller decides the transaction (see ARCHITECTURE.md, *PostGIS*).

Every feed table has one integer key, ``fid`` (its primary key, from the sequence ``<table>_fid_seq``), which
QGIS and GDAL take as the feature id without being told. A feed table is partitioned by ranges of ``fid``, one
partition per supply (``partitions.py``: each load fills and indexes a fresh table, then attaches it). A record's
own key within its supply (``supply_id`` and the schema's key columns) is a ``UNIQUE`` constraint on NOT NULL
columns of its partition (``<partition>_supply_key``; PostgreSQL allows no unique key without fid on the parent),
so a repeated record is refused as it always was. Each file of a depersonalised feed that has a location also has
its counts by ward, month and category (``<table>_ward_month``: :func:`refresh_ward_month`), recounted by the
refresh DAG each load's asset event starts (dags/refresh.py) and by retention's deletions.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Final, NamedTuple

from psycopg2 import errors, sql

from csp_observatory import partitions
from csp_observatory.schema import CONTENT_KEY_COLUMN, Datafield, FeedFile, FeedSchema

log = logging.getLogger(__name__)

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
#: The feature id: the primary key of every feed table and counts table, filled by the database (never by a frame,
#: so it is not among table_columns). GDAL's PostgreSQL driver takes a single-column integer primary key as the FID
#: and QGIS a table's primary key as its feature id; a key of several columns neither can use ("Multi-column primary
#: key ... detected but not supported").
FID_COLUMN: Final = "fid"
#: A depersonalised layer's counts by ward, month and category: ``<table><WARD_MONTH_SUFFIX>`` beside it.
WARD_MONTH_SUFFIX: Final = "_ward_month"
#: How a counts table's comment starts: only tables so marked are ever dropped as orphans (ensure_database).
WARD_MONTH_MARK: Final = "Counts by ward and month of "

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
    FID_COLUMN: "Feature id (QGIS, GDAL): a number for the record in this table. A re-run of its supply gives its "
                "records new ones: to refer to a record, use its supply and reference",
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
    if FID_COLUMN in names:
        raise ValueError(f"{feed_file.name}: datafield {FID_COLUMN!r} clashes with the feature id the observatory adds")
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
        _drop_orphan_counts(conn, cur)


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


def natural_key(feed_file: FeedFile) -> list[str]:
    """The columns that identify a record in its table: its supply and the schema's key (``row_key`` for content)."""
    return ["supply_id", *feed_file.table_key]


def _key_name(table: str) -> str:
    return f"{table}_supply_key"


def _constraint(cur: Any, db_schema: str, table: str, contype: str, name: str | None = None) -> list[str]:
    """The columns, in order, of a table's primary key (``contype`` 'p') or of its unique constraint ``name``
    ('u'); [] if there is none or the table does not exist."""
    cur.execute("""SELECT a.attname FROM pg_constraint c
                   CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                   WHERE c.conrelid = to_regclass(%s) AND c.contype = %s AND (%s::text IS NULL OR c.conname = %s)
                   ORDER BY k.ord""", (f'"{db_schema}"."{table}"', contype, name, name))
    return [r[0] for r in cur.fetchall()]


def _primary_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The primary key columns of a table, in order ([] if it has none or does not exist)."""
    return _constraint(cur, db_schema, table, "p")


def _unique_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The columns of a table's ``<table>_supply_key`` constraint, in order ([] if it has none); of a partitioned
    table, its partitions' record key (:func:`record_key`)."""
    if partitions.is_partitioned(cur, db_schema, table):
        return partitions.record_key(cur, db_schema, table)
    return _constraint(cur, db_schema, table, "u", _key_name(table))


def _migrate_keys(cur: Any, db_schema: str, feed_file: FeedFile, pk: list[str], unique: list[str],
                  table: str | None = None, parent: str | None = None) -> None:
    """Give an existing table the keys it has now: ``fid`` as its primary key, and the key its schema declares
    (e.g. a file that moved to ``key: content``) as ``<table>_supply_key``, in place, every row kept.

    A table from before ``fid`` had its natural key as the primary key: that becomes the unique constraint and an
    identity ``fid`` numbers the rows already there. Rows loaded before a move to a content key get a
    ``migrated-`` key from their stored values; a re-sent supply replaces them with its own keys. ``table``: a
    partition of the feed table ``parent`` (which alone may change what is NOT NULL); else the feed table itself.
    """
    I = sql.Identifier  # noqa: E741
    want = natural_key(feed_file)
    have = unique if pk == [FID_COLUMN] else pk       # the natural key the table has now
    name = table or feed_file.table
    target, columns_of = I(db_schema, name), I(db_schema, parent or name)
    if have != want and feed_file.content_key:
        cur.execute(sql.SQL(
            "UPDATE {t} SET {k} = m.k FROM (SELECT ctid AS id, 'migrated-' || md5(x::text) || '-' || "
            "row_number() OVER (PARTITION BY md5(x::text)) AS k FROM {t} x WHERE {k} IS NULL) m "
            "WHERE {t}.ctid = m.id").format(t=target, k=I(CONTENT_KEY_COLUMN)))
    if pk != [FID_COLUMN]:
        # Numbers the rows already there (PostgreSQL fills an identity column added to a table that has rows).
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} bigint GENERATED ALWAYS AS IDENTITY")
                    .format(target, I(FID_COLUMN)))
        if pk:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, I(f"{name}_pkey")))
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            target, I(f"{name}_pkey"), I(FID_COLUMN)))
    if unique != want:
        if unique:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, I(_key_name(name))))
        # A column leaving the key keeps the NOT NULL the key gave it: drop that too (it may now be optional).
        for column in sorted(set(have) - set(want) - NOT_NULL_COLUMNS):
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(columns_of, I(column)))
        for column in want:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(columns_of, I(column)))
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})").format(
            target, I(_key_name(name)), sql.SQL(", ").join(I(c) for c in want)))


def _relkind(cur: Any, db_schema: str, table: str) -> str | None:
    """'r' for a plain table, 'p' for a partitioned one, None if there is none."""
    cur.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", (f'"{db_schema}"."{table}"',))
    row = cur.fetchone()
    return row[0] if row else None


def record_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The columns of a feed table's record key: its partitions' (``<partition>_supply_key``, each partition holds
    one supply), or an unpartitioned table's ``<table>_supply_key``."""
    return _unique_key(cur, db_schema, table)


def _migrate_partition_keys(cur: Any, db_schema: str, feed_file: FeedFile) -> None:
    """A partitioned table whose schema now declares another record key: each partition takes it, rows kept."""
    want = natural_key(feed_file)
    for part, have in partitions.partition_keys(cur, db_schema, feed_file.table).items():
        if have != want:
            # Which columns may be null is the parent's to say (a partition cannot drop its parent's NOT NULL).
            _migrate_keys(cur, db_schema, feed_file, [FID_COLUMN], have, table=part, parent=feed_file.table)


def _up_to_date(cur: Any, db_schema: str, feed_file: FeedFile, cols: list[Column], existing: set[str],
                counts: bool) -> bool:
    if not existing or not {c.name for c in cols} | {FID_COLUMN} <= existing:
        return False
    if _relkind(cur, db_schema, feed_file.table) != "p":
        return False
    if _primary_key(cur, db_schema, feed_file.table) != [FID_COLUMN]:
        return False
    key = natural_key(feed_file)
    if any(k != key for k in partitions.partition_keys(cur, db_schema, feed_file.table).values()):
        return False
    if counts:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{db_schema}"."{ward_month_table(feed_file)}"',))
        return bool(cur.fetchone()[0])
    return True


def ensure_feed_tables(conn: Any, schema: FeedSchema) -> list[str]:
    """Create (or extend, or migrate) one partitioned table per file of a feed, with keys, indexes and comments;
    no commit. An older unpartitioned table becomes its first partition, rows and fids kept (partitions.py)."""
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
            key = natural_key(f)
            counts = has_ward_month(schema, f)
            if _up_to_date(cur, db_schema, f, cols, existing, counts):
                # Up to date: take no lock stronger than a read, so analysts' open queries never block a load.
                continue
            if counts:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{db_schema}"."{ward_month_table(f)}"',))
                counts_there = cur.fetchone()[0]
            if not existing:
                # fid last, so the datafields keep their places (the first column is the first datafield). The
                # record's key is each partition's (a unique key of the parent would have to include fid).
                col_defs = [sql.SQL("{} {}{}").format(I(c.name), sql.SQL(c.sql_type), sql.SQL(
                    " NOT NULL" if c.name in NOT_NULL_COLUMNS or c.name in key else "")).as_string(cur)
                    for c in cols]
                for text, params in partitions.parent_statements(db_schema, f.table, col_defs):
                    cur.execute(text, params or None)
            else:
                # A schema may gain datafields after its table exists: add them, never drop (old supplies keep
                # theirs). On a partitioned table, they reach every partition.
                for c in cols:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        table, I(c.name), sql.SQL(c.sql_type)))
                if _relkind(cur, db_schema, f.table) == "r":
                    # An older observatory's table: bring its keys up to date, then it becomes a partition.
                    _migrate_keys(cur, db_schema, f, _primary_key(cur, db_schema, f.table),
                                  _unique_key(cur, db_schema, f.table))
                    partitions.convert(cur, db_schema, f.table)
                else:
                    _migrate_partition_keys(cur, db_schema, f)
            title = f"{schema.title}: {f.title}. {f.description} (guidance section {schema.guidance_section}; " \
                    f"{schema.dataset_type}; partner {schema.partner.agency})"
            cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (title,))
            for c in [*cols, Column(FID_COLUMN, "bigint")]:
                comment = _comment_for(schema, f, c.name)
                if comment:
                    cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(c.name)), (comment,))
            if counts and not counts_there:
                _ensure_ward_month(cur, schema, f)
                if existing:
                    _refresh_one(cur, schema, f)     # an older layer's counts are there before its next load
            made.append(f"{db_schema}.{f.table}")
    return made


# --- counts by ward, month and category ----------------------------------------------------------------------

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


def _ensure_ward_month(cur: Any, schema: FeedSchema, feed_file: FeedFile) -> None:
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


def _refresh_one(cur: Any, schema: FeedSchema, feed_file: FeedFile) -> int:
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
            written[f"{table_schema(schema)}.{ward_month_table(f)}"] = _refresh_one(cur, schema, f)
            log.info("%s.%s: counts by ward and month refreshed in %.3f s", table_schema(schema),
                     ward_month_table(f), time.perf_counter() - started)
    return written


def _drop_orphan_counts(conn: Any, cur: Any) -> list[str]:
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
