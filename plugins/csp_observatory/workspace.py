"""An analyst's workspace: one QGIS project per CSP deployment, and GeoPackage exports of sanitised layers.

``qgis-project`` writes a QGIS project file (``.qgs``, XML) that opens every depersonalised layer the database
holds (EPSG:27700, styled by the category its schema names: ``ddl.category_field``) and each layer's counts by ward
and month (``ddl.ward_month_table``), grouped by feed. Its layers connect to PostGIS through a pg_service name
(``service='csp_observatory'``) or with host, port, database and user: never with a password, which stays in the
analyst's ``~/.pgpass`` (or QGIS asks for it). Every layer names ``fid`` as its key, the feature id QGIS and GDAL
take from the tables' primary key.

``export`` writes one feed's sanitised layers for one period to a GeoPackage (EPSG:27700, one layer per file of
the feed, the table's comment as its description) for analysts without database access. It refuses a personalised
feed before it connects, and writes only the columns the depersonalised table has by the schema (sanitising has
dropped the rest), never ``SELECT *``.

Both read the database with the analyst's login: ``--dsn``, else ``CSP_ANALYST_DSN``, else the project's own
connection (the service, or the host parameters with the password from ``~/.pgpass``). ``docs/ANALYSTS.md`` says
how to use them; ``scripts/qgis_project`` and ``scripts/export_gpkg`` run them with this clone's venv.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import xml.etree.ElementTree as ET
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Iterable

from psycopg2 import sql

from csp_observatory import ddl
from csp_observatory.schema import REFERENCE_DIR, SCHEMA_DIR, FeedFile, FeedSchema, load_schemas

#: The pg_service name a project connects with unless told otherwise (docs/ANALYSTS.md shows the stanza).
DEFAULT_SERVICE: Final = "csp_observatory"
DSN_ENV: Final = "CSP_ANALYST_DSN"
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
#: The QGIS version the project says it was saved with: the LTR Debian 12 ships (later versions read it as is).
QGIS_VERSION: Final = "3.22.16-Białowieża"
_BNG_PROJ4: Final = ("+proj=tmerc +lat_0=49 +lon_0=-2 +k=0.9996012717 +x_0=400000 +y_0=-100000 +ellps=airy "
                     "+units=m +no_defs")
_QGIS_SRSID_27700: Final = "2437"     # QGIS's own id for EPSG:27700 (QGIS reads the authid first)


class RefusedExport(ValueError):
    """An export that must not be made (a personalised feed, a period with no rows)."""


# --- connection ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    """How a project's layers reach PostGIS: a pg_service name, or host/port/database/user. It has no password
    field, so none can reach a project file."""

    service: str | None = DEFAULT_SERVICE
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if not self.service and not self.dbname:
            raise ValueError("a connection needs a pg_service name or a database name")

    def _pairs(self) -> list[tuple[str, str]]:
        if self.service:
            return [("service", self.service)]
        pairs = [("dbname", self.dbname or ""), ("host", self.host or ""),
                 ("port", str(self.port) if self.port else ""), ("user", self.user or "")]
        return [(k, v) for k, v in pairs if v]

    def libpq(self) -> str:
        """A libpq connection string (for psycopg2 and GDAL's ``PG:``); libpq finds the password in ~/.pgpass."""
        return " ".join(f"{k}={_quote(v)}" for k, v in self._pairs())

    def qgis(self) -> str:
        """The connection part of a QGIS PostGIS data source."""
        return " ".join(f"{k}={_quote(v, always=k in ('service', 'dbname', 'user'))}" for k, v in self._pairs())


def _quote(value: str, always: bool = False) -> str:
    if always or not value or re.search(r"[\s'\\]", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def connection_from_demo(path: Path) -> tuple[Connection, str]:
    """The analyst's connection from a set-up's demo config (``.run/demo.yaml``): the parameters for the project,
    and the analyst URL (with its password) for the command itself, which never reaches the project."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    conn = Connection(service=None, host=raw.get("analyst_host"), port=raw.get("analyst_port"),
                      dbname=raw.get("analyst_database"), user=raw.get("analyst_user"))
    return conn, raw["analyst_url"]


def connect(dsn: str | None, connection: Connection) -> Any:
    """A psycopg2 connection as the analyst: ``dsn``, else ``CSP_ANALYST_DSN``, else the project's connection."""
    import psycopg2

    return psycopg2.connect(dsn or os.environ.get(DSN_ENV) or connection.libpq(), connect_timeout=10)


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
    d = ddl.category_field(schema, feed_file)
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
                counts = ddl.ward_month_table(f)
                if ddl.has_ward_month(schema, f) and _readable(cur, db_schema, counts):
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


# --- the project file ---------------------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _spatialrefsys(parent: ET.Element) -> None:
    from pyproj import CRS

    srs = _sub(parent, "spatialrefsys", nativeFormat="Wkt")
    _sub(srs, "wkt", CRS.from_epsg(ddl.SRID).to_wkt())
    _sub(srs, "proj4", _BNG_PROJ4)
    _sub(srs, "srsid", _QGIS_SRSID_27700)
    _sub(srs, "srid", str(ddl.SRID))
    _sub(srs, "authid", f"EPSG:{ddl.SRID}")
    _sub(srs, "description", "OSGB36 / British National Grid")
    _sub(srs, "projectionacronym", "tmerc")
    _sub(srs, "ellipsoidacronym", "EPSG:7001")
    _sub(srs, "geographicflag", "false")


def _marker(parent: ET.Element, name: str, colour: str) -> None:
    symbol = _sub(parent, "symbol", type="marker", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = _sub(symbol, "layer", class_="SimpleMarker", enabled="1", locked="0", **{"pass": "0"})
    props = {"color": f"{colour},255", "name": "circle", "outline_color": "35,35,35,255", "outline_style": "solid",
             "outline_width": "0.2", "outline_width_unit": "MM", "size": "2.4", "size_unit": "MM",
             "joinstyle": "bevel", "scale_method": "diameter", "angle": "0"}
    # QGIS >= 3.18 reads the Option map; earlier 3.x versions the prop elements. Both say the same.
    options = _sub(layer, "Option", type="Map")
    for k, v in props.items():
        _sub(options, "Option", type="QString", name=k, value=v)
    for k, v in props.items():
        _sub(layer, "prop", k=k, v=v)


def _renderer(parent: ET.Element, style: Style | None) -> None:
    if style is None:
        renderer = _sub(parent, "renderer-v2", type="singleSymbol", forceraster="0", symbollevels="0",
                        enableorderby="0")
        _marker(_sub(renderer, "symbols"), "0", PALETTE[0])
        return
    renderer = _sub(parent, "renderer-v2", type="categorizedSymbol", attr=style.expression, forceraster="0",
                    symbollevels="0", enableorderby="0")
    categories = _sub(renderer, "categories")
    symbols = _sub(renderer, "symbols")
    for i, c in enumerate(style.categories):
        _sub(categories, "category", render="true", symbol=str(i), value=c.value, label=c.label)
        _marker(symbols, str(i), PALETTE[i % len(PALETTE)])
    # An empty value is QGIS's "all other values".
    other = str(len(style.categories))
    _sub(categories, "category", render="true", symbol=other, value="", label="other")
    _marker(symbols, other, OTHER_COLOUR)
    _marker(_sub(renderer, "source-symbol"), "0", OTHER_COLOUR)


def project_xml(title: str, connection: Connection, layers: list[Layer],
                extent: tuple[float, float, float, float] | None = None) -> str:
    """The QGIS project (``.qgs``) text: project CRS EPSG:27700, one group per feed, a PostGIS layer per table."""
    root = ET.Element("qgis", projectname=title, version=QGIS_VERSION)
    _sub(root, "homePath", path="")
    _sub(root, "title", title)
    _sub(root, "autotransaction", active="0")
    _sub(root, "evaluateDefaultValues", active="0")
    _sub(root, "trust", active="0")
    _spatialrefsys(_sub(root, "projectCrs"))
    # QGIS reads projectCrs only where the project says it uses a CRS ("on the fly" projections, QGIS < 3.28).
    properties = _sub(root, "properties")
    _sub(_sub(properties, "SpatialRefSys"), "ProjectionsEnabled", "1", type="int")
    tree = _sub(root, "layer-tree-group")
    _sub(tree, "customproperties")
    groups: dict[str, ET.Element] = {}
    for layer in layers:
        if layer.group not in groups:
            groups[layer.group] = _sub(tree, "layer-tree-group", name=layer.group, checked="Qt::Checked",
                                       expanded="1")
            _sub(groups[layer.group], "customproperties")
        _sub(groups[layer.group], "layer-tree-layer", id=layer.id, name=layer.name, providerKey="postgres",
             source=layer.datasource(connection), checked="Qt::Checked", expanded="0")
    canvas = _sub(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    _sub(canvas, "units", "meters")
    if extent is not None:
        box = _sub(canvas, "extent")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), extent):
            _sub(box, tag, repr(float(value)))
    _sub(canvas, "rotation", "0")
    _spatialrefsys(_sub(canvas, "destinationsrs"))
    _sub(canvas, "rendermaptile", "0")
    project_layers_el = _sub(root, "projectlayers")
    for layer in layers:
        spatial = layer.geometry is not None
        ml = _sub(project_layers_el, "maplayer", type="vector", geometry="Point" if spatial else "No geometry",
                  wkbType="Point" if spatial else "NoGeometry", hasScaleBasedVisibilityFlag="0",
                  readOnly="0", autoRefreshEnabled="0", refreshOnNotifyEnabled="0")
        _sub(ml, "id", layer.id)
        _sub(ml, "datasource", layer.datasource(connection))
        _sub(ml, "keywordList").append(ET.Element("value"))
        _sub(ml, "layername", layer.name)
        _spatialrefsys(_sub(ml, "srs"))
        _sub(ml, "abstract", layer.abstract)
        _sub(ml, "provider", "postgres", encoding="")
        if spatial:
            _renderer(ml, layer.style)
    order = _sub(root, "layerorder")
    for layer in layers:
        _sub(order, "layer", id=layer.id)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def write_project(out: Path, title: str, connection: Connection, dsn: str | None = None,
                  schemas: Iterable[FeedSchema] | None = None) -> list[Layer]:
    """Write the deployment's QGIS project to ``out``; returns its layers (nothing is written if it has none)."""
    with closing(connect(dsn, connection)) as conn:
        layers = project_layers(conn, schemas if schemas is not None else load_schemas(SCHEMA_DIR))
        if not layers:
            raise RefusedExport("no depersonalised layer is loaded yet (or this login may read none): "
                                "load a supply first")
        extent = layers_extent(conn, layers)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(project_xml(title, connection, layers, extent), encoding="utf-8")
    tmp.replace(out)
    return layers


def service_stanza(connection: Connection, name: str = DEFAULT_SERVICE) -> str:
    """The ``pg_service.conf`` section an analyst adds for a project that uses a service (no password: that goes
    in ``~/.pgpass``, or QGIS asks)."""
    lines = [f"[{name}]"]
    lines += [f"{k}={v}" for k, v in (("host", connection.host), ("port", connection.port),
                                      ("dbname", connection.dbname), ("user", connection.user)) if v]
    return "\n".join(lines) + "\n"


# --- GeoPackage export --------------------------------------------------------------------------------------------

def export_columns(schema: FeedSchema, feed_file: FeedFile, present: set[str]) -> list[str]:
    """The columns an export holds: the depersonalised table's by the schema, less the point (it becomes the
    GeoPackage's geometry) and anything the table does not have; never a column sanitising drops."""
    dropped = {d.name for d in feed_file.datafields if d.dropped_on_sanitising}
    return [c.name for c in ddl.table_columns(schema, feed_file)
            if c.name != "geom" and c.name in present and c.name not in dropped]


def refuse_personalised(schema: FeedSchema) -> None:
    """Raise RefusedExport for a personalised feed: its records identify people and never leave the database."""
    if schema.personalised:
        raise RefusedExport(f"{schema.feed} is a personalised feed (guidance section {schema.guidance_section}): its "
                            f"records identify people and are never exported; only depersonalised feeds are")


@dataclass
class ExportResult:
    out: Path
    rows: dict[str, int] = field(default_factory=dict)   # layer (table) -> rows written


def export_gpkg(conn: Any, schema: FeedSchema, period: str, out: Path, files: Iterable[str] | None = None,
                overwrite: bool = False) -> ExportResult:
    """Write a feed's sanitised layers for one period to a GeoPackage, one layer per file of the feed."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    refuse_personalised(schema)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RefusedExport(f"{out} exists: give another --out, or --overwrite")
    wanted = [schema.file(name) for name in files] if files else list(schema.files)
    supply_id = f"{schema.feed}/{period}"
    result = ExportResult(out=out)
    tmp = out.with_name(out.name + ".tmp.gpkg")
    tmp.unlink(missing_ok=True)
    db_schema = ddl.table_schema(schema)
    try:
        with conn.cursor() as cur:
            for f in wanted:
                if not _readable(cur, db_schema, f.table):
                    continue
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                            "AND table_name = %s", (db_schema, f.table))
                columns = export_columns(schema, f, {r[0] for r in cur.fetchall()})
                cur.execute(sql.SQL("SELECT {}, ST_AsBinary(geom) FROM {} WHERE supply_id = %s ORDER BY {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(db_schema, f.table),
                    sql.Identifier(ddl.FID_COLUMN)), (supply_id,))
                rows = cur.fetchall()
                if not rows:
                    continue
                frame = pd.DataFrame([r[:-1] for r in rows], columns=columns)
                # The table's types, so the GeoPackage's fields are integer, real, boolean, date as in PostGIS.
                for c in ddl.table_columns(schema, f):
                    if c.name not in frame:
                        continue
                    if c.sql_type == "date":
                        frame[c.name] = pd.to_datetime(frame[c.name])
                    elif c.sql_type == "timestamptz":
                        frame[c.name] = pd.to_datetime(frame[c.name], utc=True)
                    elif c.sql_type == "integer":
                        frame[c.name] = pd.array(frame[c.name], dtype="Int64")
                    elif c.sql_type == "boolean":
                        frame[c.name] = pd.array(frame[c.name], dtype="boolean")
                    elif c.sql_type in ("double precision", "real"):
                        frame[c.name] = pd.to_numeric(frame[c.name]).astype(float)
                geometry = shapely.from_wkb([None if r[-1] is None else bytes(r[-1]) for r in rows])
                gdf = gpd.GeoDataFrame(frame, geometry=geometry, crs=f"EPSG:{ddl.SRID}")
                # GeoPackage 1.2: what older GDAL (Debian 12's 3.6, QGIS LTRs built on it) reads without a warning.
                gdf.to_file(tmp, layer=f.table, driver="GPKG", engine="pyogrio",
                            dataset_options=None if result.rows else {"VERSION": "1.2"},
                            layer_options={"DESCRIPTION": _comment(cur, db_schema, f.table)[:2000]})
                result.rows[f.table] = len(gdf)
        conn.rollback()
        if not result.rows:
            raise RefusedExport(f"no rows are loaded for {supply_id} (or this login may read none of its layers)")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


# --- command line -------------------------------------------------------------------------------------------------

def _schema(feed: str) -> FeedSchema:
    for schema in load_schemas(SCHEMA_DIR):
        if schema.feed == feed:
            return schema
    raise SystemExit(f"no feed {feed!r} in {SCHEMA_DIR}")


def _connection(args: argparse.Namespace) -> tuple[Connection, str | None]:
    dsn = args.dsn
    if args.demo_config:
        connection, url = connection_from_demo(args.demo_config)
        return connection, dsn or url
    if args.dbname:
        return Connection(service=None, host=args.host, port=args.port, dbname=args.dbname, user=args.user), dsn
    return Connection(service=args.service), dsn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csp_observatory.workspace", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("qgis-project", "export"):
        p = sub.add_parser(name)
        p.add_argument("--service", default=DEFAULT_SERVICE,
                       help=f"pg_service name the project connects with (default {DEFAULT_SERVICE})")
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--dbname", help="connect with host/port/dbname/user instead of a service")
        p.add_argument("--user")
        p.add_argument("--demo-config", type=Path,
                       help="a set-up's .run/demo.yaml: the analyst's host, port, database and user (and, for this "
                            "command only, the analyst URL)")
        p.add_argument("--dsn", help=f"libpq string or URL this command reads with (default ${DSN_ENV}, else the "
                                     f"project's connection); never written to a file")
        p.add_argument("--out", type=Path, required=True)
        if name == "qgis-project":
            p.add_argument("--title", default="CSP observatory")
            p.add_argument("--feeds", help="comma-separated feed ids (default: every feed)")
        else:
            p.add_argument("--feed", required=True)
            p.add_argument("--period", required=True, help="the supply period, e.g. 202609")
            p.add_argument("--file", action="append", help="one file of the feed (default: all of them)")
            p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            schema = _schema(args.feed)
            refuse_personalised(schema)     # before any connection is made
            connection, dsn = _connection(args)
            with closing(connect(dsn, connection)) as conn:
                result = export_gpkg(conn, schema, args.period, args.out, args.file, args.overwrite)
            for table, n in result.rows.items():
                print(f"{table}: {n} rows")
            print(f"wrote {result.out} (EPSG:{ddl.SRID})")
            return 0
        connection, dsn = _connection(args)
        schemas = load_schemas(SCHEMA_DIR)
        if args.feeds:
            feeds = set(args.feeds.split(","))
            unknown = feeds - {s.feed for s in schemas}
            if unknown:
                raise SystemExit(f"no such feed: {', '.join(sorted(unknown))}")
            schemas = [s for s in schemas if s.feed in feeds]
        layers = write_project(args.out, args.title, connection, dsn, schemas)
        print(f"wrote {args.out}: {len(layers)} layers in {len({la.group for la in layers})} groups, connecting "
              f"with {connection.qgis()} (no password in the file)")
        if connection.service:
            print(f"QGIS needs the service {connection.service!r} in ~/.pg_service.conf and the password in ~/.pgpass "
                  f"(docs/ANALYSTS.md)")
        return 0
    except RefusedExport as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
