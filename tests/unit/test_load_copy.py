"""What the loader sends to COPY: values typed per column, hex EWKB points, rows in key order (no database)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.csv as pa_csv
import pytest
import shapely

from csp_observatory import ddl, loading
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def test_points_are_the_ewkb_postgis_reads_and_missing_ones_are_null():
    x = np.array([409123.0, 0.5, np.nan, 400000.0])
    y = np.array([425001.0, 1.25, 425000.0, np.nan])
    got = loading._ewkb_points(x, y).to_pylist()
    want = [shapely.to_wkb(shapely.set_srid(shapely.Point(a, b), ddl.SRID), hex=True, include_srid=True,
                           byte_order=1) for a, b in zip(x[:2], y[:2])]
    assert got[:2] == want and got[2:] == [None, None]


def test_the_copy_table_has_the_tables_columns_typed_lineage_and_the_point(prc):
    feed_file = prc.file("offences")
    columns = [c for c in ddl.table_columns(prc, feed_file) if c.name not in ddl.LOADER_COLUMNS]
    frame = pd.DataFrame({c.name: [None, None, None] for c in columns})
    frame["crime_reference"] = ["B1", "A2", ""]
    frame["committed_from_date"] = pd.to_datetime(["2026-09-02", "2026-09-03", None])
    frame["flag_drugs"] = pd.array([True, None, False], dtype="boolean")
    frame["sanitised_easting"] = [409000.4, None, 409100.0]
    frame["sanitised_northing"] = [425000.0, 425000.0, 425100.0]
    table = loading.copy_table(prc, feed_file, frame, columns, "prc/202609", "202609", "ab" * 32,
                               "2026-11-29 23:00:00+00")
    assert set(table.column_names) == {*(c.name for c in columns), *ddl.LOADER_COLUMNS}
    rows = {r["crime_reference"]: r for r in table.to_pylist()}
    assert rows["B1"]["sanitised_easting"] == 409000 and rows["B1"]["geom"].startswith("0101000020346C0000")
    assert rows["A2"]["geom"] is None and rows["A2"]["flag_drugs"] is None
    assert None in rows and rows[None]["committed_from_date"] is None       # "" is loaded as NULL
    assert {r["supply_id"] for r in rows.values()} == {"prc/202609"}
    # In key order, so each insert into the supply key's b-tree appends at its right edge.
    assert table.column("crime_reference").to_pylist()[:2] == ["A2", "B1"]
    text = io.BytesIO()
    pa_csv.write_csv(table, text, pa_csv.WriteOptions(include_header=False))
    assert b"2026-09-02" in text.getvalue() and b"true" in text.getvalue()


def test_a_value_that_is_not_whole_is_refused_not_truncated(prc):
    feed_file = prc.file("victims")
    column = next(c for c in ddl.table_columns(prc, feed_file) if c.name == "age")
    with pytest.raises((TypeError, ValueError)):
        loading._arrow_column(pd.Series([30.5]), column)
    with pytest.raises(ValueError):
        loading._arrow_column(pd.Series(["forty"], dtype=object), column)


def test_lazy_frames_are_read_when_asked_and_not_kept():
    reads: list[str] = []

    def read(name: str) -> pd.DataFrame:
        reads.append(name)
        return pd.DataFrame({"a": range(3 if name == "offences" else 5)})

    frames = loading.LazyFrames(["offences", "victims"], read)
    assert list(frames) == ["offences", "victims"] and reads == []
    assert frames.shape("victims") == (["a"], 5) and frames.shape("victims") == (["a"], 5)
    assert reads == ["victims"]                              # the shape is kept; the frame is not
    assert len(frames["offences"]) == 3 and len(frames["offences"]) == 3
    assert reads == ["victims", "offences", "offences"]
    with pytest.raises(KeyError):
        frames["nope"]
