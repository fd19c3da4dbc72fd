"""What a feed table is, derived from its feed schema: its columns and their types, its record key and its
comments (no database but :func:`lock`, which every DDL here takes).

Every feed table has one integer key, ``fid`` (its primary key, from the sequence ``<table>_fid_seq``), which
QGIS and GDAL take as the feature id without being told. A record's own key within its supply (``supply_id`` and
the schema's key columns, :func:`natural_key`) is a ``UNIQUE`` constraint of each partition. Making and migrating
the tables is ``feed_tables.py``; the database's schemas, roles and own tables ``database.py``; a layer's counts by
ward and month ``ward_month.py``. Functions there do not commit: the caller decides the transaction (see
ARCHITECTURE.md, *PostGIS*), and every identifier goes through ``psycopg2.sql.Identifier``: table and column names
come from YAML files that partners' schemas may one day be contributed as, so they are never formatted into SQL text.
"""
from __future__ import annotations

from typing import Any, Final, NamedTuple

from csp_observatory.schema import CONTENT_KEY_COLUMN, FeedFile, FeedSchema

SRID: Final = 27700

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


def comment_for(schema: FeedSchema, feed_file: FeedFile, column: str) -> str | None:
    """A feed table column's comment: its datafield's label, else what the observatory says of its own columns."""
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


def lock(cur: Any, what: str) -> None:
    """Serialise DDL on ``what`` until the transaction ends (the database, or one feed's tables)."""
    # Several feed DAGs may start at once: serialise DDL so CREATE ... IF NOT EXISTS cannot race.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"csp_observatory.ddl.{what}",))

