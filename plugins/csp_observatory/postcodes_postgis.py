"""The postcode reference in PostGIS: ``reference.postcodes``, loaded by COPY and read back by COPY.

:func:`load_reference` loads a reference frame (replacing the table's rows, or upserting by postcode) with a point
geometry in EPSG:27700, in one transaction; :func:`read_reference` reads it back. :func:`copy_out`,
:func:`frame_to_csv` and :func:`grant_read` serve the other reference tables too (``gazetteer.py``).
"""
from __future__ import annotations

import io
from typing import Any, Final, Iterable

import pandas as pd

from csp_observatory.postcodes import REFERENCE_COLUMNS, _typed, empty_reference

# --- PostGIS -----------------------------------------------------------------------------------------

_TABLE_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS reference;
CREATE TABLE IF NOT EXISTS reference.postcodes (
    postcode text PRIMARY KEY,
    easting integer NOT NULL,
    northing integer NOT NULL,
    households integer NOT NULL DEFAULT 0,
    ward_code text,
    district_code text,
    terminated boolean NOT NULL DEFAULT false,
    source text,
    terminated_date text,
    geom geometry(Point, 27700) NOT NULL
);
"""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS postcodes_geom_gist ON reference.postcodes USING gist (geom)",
    "CREATE INDEX IF NOT EXISTS postcodes_households_idx ON reference.postcodes (households)",
)
_COLUMNS_SQL: Final = ", ".join(REFERENCE_COLUMNS)


def grant_read(cur: Any, table: str, roles: Iterable[str] = ("csp_analyst", "csp_engineer")) -> None:
    """GRANT SELECT on a reference table to those of the roles that exist."""
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),))
    for (role,) in cur.fetchall():
        cur.execute(f'GRANT USAGE ON SCHEMA reference TO "{role}"')
        cur.execute(f'GRANT SELECT ON {table} TO "{role}"')


def frame_to_csv(frame: pd.DataFrame) -> io.BytesIO:
    """A frame as header-less CSV for COPY (pyarrow: about 8x faster than ``DataFrame.to_csv``); nulls empty."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buf,
                    pacsv.WriteOptions(include_header=False))
    buf.seek(0)
    return buf


def copy_out(cur: Any, select_sql: str, names: list[str], types: dict[str, str] | None = None) -> pd.DataFrame:
    """Run ``COPY (select) TO STDOUT`` and parse it with pyarrow; ``types`` maps columns to ``int64``,
    ``float64`` or ``bool`` (others are text); empty fields are null."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow_types = {c: {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}.get(
        (types or {}).get(c, ""), pa.string()) for c in names}
    buf = io.BytesIO()
    cur.copy_expert(f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv)", buf)
    buf.seek(0)
    if not buf.getbuffer().nbytes:
        return pa.table({c: pa.array([], arrow_types[c]) for c in names}).to_pandas(
            types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
    table = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=names),
                           convert_options=pacsv.ConvertOptions(column_types=arrow_types, strings_can_be_null=True,
                                                                true_values=["t"], false_values=["f"]))
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)


def load_reference(conn: Any, frame: pd.DataFrame, replace: bool = True, commit: bool = True) -> int:
    """Load a reference frame into ``reference.postcodes`` in one transaction; returns the rows loaded.

    COPY into a temporary staging table, then one INSERT ... SELECT that builds the points (no UPDATE of
    the whole table, so no bloat). ``replace`` empties the table first and rebuilds its indexes once after
    the insert; otherwise rows are upserted by postcode.
    """
    frame = _typed(frame.drop_duplicates("postcode", keep="first"))
    buf = frame_to_csv(frame[REFERENCE_COLUMNS])
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            cur.execute(_TABLE_DDL)
            # A temporary table is never WAL-logged (like UNLOGGED) and is private to this session, so two
            # loaders cannot collide on its name; ON COMMIT DROP cleans it up.
            cur.execute("""CREATE TEMP TABLE postcodes_staging (
                postcode text, easting integer, northing integer, households integer, ward_code text,
                district_code text, terminated boolean, source text, terminated_date text) ON COMMIT DROP""")
            cur.copy_expert(f"COPY postcodes_staging ({_COLUMNS_SQL}) FROM STDIN WITH (FORMAT csv)", buf)
            select = (f"SELECT {_COLUMNS_SQL}, ST_SetSRID(ST_MakePoint(easting, northing), 27700) "
                      "FROM postcodes_staging")
            if replace:
                cur.execute("TRUNCATE reference.postcodes")
                # Building the indexes once after the insert is much faster than maintaining them row by row.
                cur.execute("ALTER TABLE reference.postcodes DROP CONSTRAINT IF EXISTS postcodes_pkey")
                cur.execute("DROP INDEX IF EXISTS reference.postcodes_geom_gist")
                cur.execute("DROP INDEX IF EXISTS reference.postcodes_households_idx")
                cur.execute(f"INSERT INTO reference.postcodes ({_COLUMNS_SQL}, geom) {select}")
                cur.execute("ALTER TABLE reference.postcodes ADD CONSTRAINT postcodes_pkey PRIMARY KEY (postcode)")
            else:
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*REFERENCE_COLUMNS[1:], "geom"])
                cur.execute(f"INSERT INTO reference.postcodes ({_COLUMNS_SQL}, geom) {select} "
                            f"ON CONFLICT (postcode) DO UPDATE SET {updates}")
            for sql in _INDEXES:
                cur.execute(sql)
            grant_read(cur, "reference.postcodes")
            cur.execute("ANALYZE reference.postcodes")
        if commit:
            conn.commit()
    except Exception:
        conn.rollback()
        raise
    return len(frame)


def read_reference(conn: Any) -> pd.DataFrame:
    """The reference frame from ``reference.postcodes`` (COPY TO STDOUT); empty if the table does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('reference.postcodes') IS NOT NULL")
        if not cur.fetchone()[0]:
            return empty_reference()
        raw = copy_out(cur, f"SELECT {_COLUMNS_SQL} FROM reference.postcodes", REFERENCE_COLUMNS,
                       {"easting": "int64", "northing": "int64", "households": "int64", "terminated": "bool"})
    return _typed(raw)
