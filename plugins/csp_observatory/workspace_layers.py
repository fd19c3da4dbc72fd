"""What an analyst's QGIS project shows: a layer per depersonalised table the analyst may read, styled by category.

:func:`project_layers` lists the layers the database holds (each feed's tables, their counts by ward and month, and
the quality stamp's table), grouped by feed; :func:`style_for` colours a layer's points by the category its schema
names (``ward_month.category_field``), grouping codes where a code list says which broader category each belongs to.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Any, Final, Iterable

from psycopg2 import sql

from csp_observatory import ddl, ward_month
from csp_observatory.schema import REFERENCE_DIR, FeedFile, FeedSchema
from csp_observatory.workspace_connection import Connection


#: At most this many categories get their own colour; the rest share "other".
MAX_CATEGORIES: Final = 12
#: ColorBrewer "Paired" (12 classes, qualitative) then four of "Dark2": distinct colours for categories (the 14
#: police.uk categories among them), then grey for the rest.
PALETTE: Final = ("31,120,180", "227,26,28", "51,160,44", "255,127,0", "106,61,154", "177,89,40",
                  "166,206,227", "251,154,153", "178,223,138", "253,191,111", "202,178,214", "255,255,153",
                  "27,158,119", "217,95,2", "117,112,179", "231,41,138")
OTHER_COLOUR: Final = "160,160,160"
#: A code list file whose rows say which broader category each code belongs to: styled by that category.
GROUPING_COLUMNS: Final = ("police_uk_category",)


# --- what a project shows -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Category:
    value: str
    label: str


@dataclass(frozen=True)
class Style:
    """Points coloured by a category: ``expression`` is a field name or a QGIS expression giving the category."""

    expression: str
    categories: tuple[Category, ...]
    title: str


#: The quality stamp's table (``stamp.py``): one row per supply, integer key fid.
QUALITY_LAYER: Final = ("dq", "supplies")


@dataclass(frozen=True)
class Layer:
    """One layer of the project: a PostGIS table, with a point geometry or none (counts by ward and month)."""

    group: str
    name: str
    db_schema: str
    table: str
    geometry: str | None = "geom"
    key: str = ddl.FID_COLUMN
    style: Style | None = None
    abstract: str = ""

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", f"{self.db_schema}_{self.table}")

    def datasource(self, connection: Connection) -> str:
        table = f'table="{self.db_schema}"."{self.table}"'
        if self.geometry:
            return (f"{connection.qgis()} key='{self.key}' srid={ddl.SRID} type=Point checkPrimaryKeyUnicity='1' "
                    f"{table} ({self.geometry})")
        return f"{connection.qgis()} key='{self.key}' checkPrimaryKeyUnicity='1' {table}"


def _grouped_codes(feed_file: FeedFile, name: str) -> tuple[str, dict[str, str]] | None:
    """(column, {code: group}) when the datafield's code list file groups its codes (Home Office offence codes into
    police.uk categories); None otherwise."""
    d = feed_file.field(name)
    if not d.codes_file:
        return None
    with open(REFERENCE_DIR / d.codes_file, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for column in GROUPING_COLUMNS:
        if rows and column in rows[0]:
            code_column = next(iter(rows[0]))
            return column, {r[code_column]: r[column] for r in rows if r.get(column)}
    return None


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def style_for(schema: FeedSchema, feed_file: FeedFile, conn: Any | None = None, db_schema: str | None = None
              ) -> Style | None:
    """How a layer's points are coloured: by its schema's category datafield. A short code list gives a colour
    per code; a list grouped in its file (offence codes) a colour per group; otherwise (free text, a long list) the
    most frequent values in the layer now (read with ``conn``), the rest in grey. None: one colour for all."""
    d = ward_month.category_field(schema, feed_file)
    if d is None:
        return None
    field_ref = '"' + d.name.replace('"', '""') + '"'
    grouped = _grouped_codes(feed_file, d.name)
    if grouped is not None:
        column, groups = grouped
        names = sorted(set(groups.values()))
        whens = " ".join(
            f"WHEN {field_ref} IN ({', '.join(_sql_string(c) for c in sorted(c for c, g in groups.items() if g == n))})"
            f" THEN {_sql_string(n)}" for n in names)
        return Style(f"CASE {whens} END", tuple(Category(n, n) for n in names[:len(PALETTE)]),
                     f"{d.label}, as {column.replace('_', ' ')}")
    codes = d.allowed_codes
    if codes is not None and len(codes) <= MAX_CATEGORIES:
        ordered = list(d.codes) if d.codes is not None else sorted(codes)
        return Style(d.name, tuple(Category(c, c) for c in ordered), d.label)
    values: list[str] = []
    if conn is not None:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL GROUP BY 1 "
                                "ORDER BY count(*) DESC, 1 LIMIT %s").format(
                c=sql.Identifier(d.name), t=sql.Identifier(db_schema or schema.db_schema, feed_file.table)),
                (MAX_CATEGORIES,))
            values = [r[0] for r in cur.fetchall()]
    return Style(d.name, tuple(Category(v, v) for v in values), f"{d.label} (the most frequent values)")


def _readable(cur: Any, db_schema: str, table: str) -> bool:
    cur.execute("SELECT c.oid IS NOT NULL AND has_table_privilege(c.oid, 'SELECT') "
                "FROM (SELECT to_regclass(%s) AS oid) c", (f'"{db_schema}"."{table}"',))
    row = cur.fetchone()
    return bool(row and row[0])


def _comment(cur: Any, db_schema: str, table: str) -> str:
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f'"{db_schema}"."{table}"',))
    row = cur.fetchone()
    return (row[0] if row else None) or ""


def project_layers(conn: Any, schemas: Iterable[FeedSchema]) -> list[Layer]:
    """The layers of the project: for each depersonalised feed file whose table exists and the login may read,
    its points and (where it has them) its counts by ward and month; then the quality stamp of every supply
    (``dq.supplies``). Personal tables are never listed."""
    layers: list[Layer] = []
    with conn.cursor() as cur:
        for schema in schemas:
            if schema.personalised:
                continue
            db_schema = ddl.table_schema(schema)
            for f in schema.files:
                if not _readable(cur, db_schema, f.table):
                    continue
                layers.append(Layer(group=schema.title, name=f.title, db_schema=db_schema, table=f.table,
                                    style=style_for(schema, f, conn, db_schema),
                                    abstract=_comment(cur, db_schema, f.table)))
                counts = ward_month.ward_month_table(f)
                if ward_month.has_ward_month(schema, f) and _readable(cur, db_schema, counts):
                    layers.append(Layer(group=schema.title, name=f"{f.title} by ward and month",
                                        db_schema=db_schema, table=counts, geometry=None,
                                        abstract=_comment(cur, db_schema, counts)))
        # The quality stamp (guidance Box 3): each supply's outcome and grades, to join to a layer by supply_id
        # or to read before trusting a month (the graded views carry it per record: docs/ANALYSTS.md).
        if layers and _readable(cur, QUALITY_LAYER[0], QUALITY_LAYER[1]):
            layers.append(Layer(group="Data quality", name="Quality stamp of each supply", db_schema=QUALITY_LAYER[0],
                                table=QUALITY_LAYER[1], geometry=None,
                                abstract=_comment(cur, QUALITY_LAYER[0], QUALITY_LAYER[1])))
    conn.rollback()
    return layers


def layers_extent(conn: Any, layers: Iterable[Layer]) -> tuple[float, float, float, float] | None:
    """The extent (EPSG:27700) of the layers' points, to open the project on; None if they have none."""
    parts = [sql.SQL("SELECT {} AS g FROM {}").format(sql.Identifier(layer.geometry),
                                                       sql.Identifier(layer.db_schema, layer.table))
             for layer in layers if layer.geometry]
    if not parts:
        return None
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
                            "(SELECT ST_Extent(g) AS e FROM ({}) u) x").format(sql.SQL(" UNION ALL ").join(parts)))
        row = cur.fetchone()
    conn.rollback()
    if not row or row[0] is None:
        return None
    pad = 500.0
    return row[0] - pad, row[1] - pad, row[2] + pad, row[3] + pad
