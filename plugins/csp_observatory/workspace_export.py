"""GeoPackage exports of one feed's sanitised layers for one period, for analysts without database access.

:func:`export_gpkg` writes one layer per file of the feed (EPSG:27700, the table's comment as its description),
only the columns the depersonalised table has by the schema (:func:`export_columns`), never ``SELECT *``; a
personalised feed is refused before anything is read (:func:`refuse_personalised`, :class:`RefusedExport`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from psycopg2 import sql

from csp_observatory import ddl
from csp_observatory.schema import FeedFile, FeedSchema
from csp_observatory.workspace_layers import _comment, _readable


class RefusedExport(ValueError):
    """An export that must not be made (a personalised feed, a period with no rows)."""


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
