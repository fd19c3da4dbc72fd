"""What the loader sends to COPY: values typed per column, EWKB points, rows in key order, each value in
PostgreSQL's binary COPY format (no database; tests/integration/test_loading.py reads them back)."""
from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import shapely

from csp_observatory import copy_binary, ddl, loading, record_keys
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


LOADED_AT = dt.datetime(2026, 11, 29, 23, 0, 0, 250000, tzinfo=dt.timezone.utc)


def test_points_are_the_ewkb_postgis_reads_and_missing_ones_are_null():
    x = np.array([409123.0, 0.5, np.nan, 400000.0])
    y = np.array([425001.0, 1.25, 425000.0, np.nan])
    got = copy_binary._ewkb_points(x, y).to_pylist()
    want = [shapely.to_wkb(shapely.set_srid(shapely.Point(a, b), ddl.SRID), include_srid=True, byte_order=1)
            for a, b in zip(x[:2], y[:2])]
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
    table = copy_binary.copy_table(prc, feed_file, frame, columns, "prc/202609", "202609", "ab" * 32, LOADED_AT)
    assert set(table.column_names) == {*(c.name for c in columns), *ddl.LOADER_COLUMNS}
    rows = {r["crime_reference"]: r for r in table.to_pylist()}
    assert rows["B1"]["sanitised_easting"] == 409000 and rows["B1"]["geom"].startswith(bytes.fromhex("0101000020346C0000"))
    assert rows["A2"]["geom"] is None and rows["A2"]["flag_drugs"] is None
    assert None in rows and rows[None]["committed_from_date"] is None       # "" is loaded as NULL
    assert {r["supply_id"] for r in rows.values()} == {"prc/202609"}
    assert {r["loaded_at"] for r in rows.values()} == {LOADED_AT}
    assert str(rows["B1"]["committed_from_date"]) == "2026-09-02" and rows["B1"]["flag_drugs"] is True
    # The key order (fids and COPY follow it): "" (NULL) sorts last, as nulls do in PostgreSQL's ascending order.
    assert record_keys.key_order(table, feed_file).tolist() == [1, 0, 2]
    assert record_keys.key_order(table.take([1, 0, 2]), feed_file) is None       # already in order: nothing moves


def _fields(row: bytes) -> list[bytes | None]:
    """The fields of one binary COPY tuple (count, then length and bytes of each; -1 for NULL)."""
    (count,), at, out = struct.unpack_from(">h", row), 2, []
    for _ in range(count):
        (size,) = struct.unpack_from(">i", row, at)
        at += 4
        out.append(None if size < 0 else row[at:at + size])
        at += max(size, 0)
    assert at == len(row)
    return out


def test_every_type_is_in_postgresqls_binary_wire_format_and_nulls_are_null():
    table = pa.table({
        "i": pa.array([7, None, -2**31], pa.int64()), "b": pa.array([2**40, 0, -1], pa.int64()),
        "f": pa.array([0.1, None, -2.5]), "r": pa.array([0.1, 1.5, None]),
        "d": pa.array([dt.date(2000, 1, 2), None, dt.date(1969, 12, 31)], pa.date32()),
        "t": pa.array(["a,\"b\"\n\\.\t\u00e9", "", None]), "o": pa.array([True, None, False]),
        "g": pa.array([b"\x01\x00", None, b""], pa.binary()),
        "ts": pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()),
                                             pa.array([LOADED_AT], pa.timestamp("us", "UTC"))),
        "lin": pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()), pa.array(["prc/1"])),
    })
    types = {"i": "integer", "b": "bigint", "f": "double precision", "r": "real", "d": "date", "t": "text",
             "o": "boolean", "g": "geometry(Point,27700)", "ts": "timestamptz", "lin": "text"}
    rows = [_fields(r) for r in copy_binary.binary_copy_rows(table, types).to_pylist()]
    us = 946_684_800_000_000          # 2000-01-01 in microseconds after 1970
    stamp = struct.pack(">q", int(LOADED_AT.timestamp() * 1_000_000) - us)
    assert rows[0] == [struct.pack(">i", 7), struct.pack(">q", 2**40), struct.pack(">d", 0.1),
                       struct.pack(">f", 0.1), struct.pack(">i", 1), "a,\"b\"\n\\.\t\u00e9".encode(), b"\x01",
                       b"\x01\x00", stamp, b"prc/1"]
    assert rows[1] == [None, struct.pack(">q", 0), None, struct.pack(">f", 1.5), None, b"", None, None, stamp,
                       b"prc/1"]
    assert rows[2][0] == struct.pack(">i", -2**31) and rows[2][4] == struct.pack(">i", -10958)
    assert rows[2][3] is None and rows[2][5] is None and rows[2][6] == b"\x00" and rows[2][7] == b""


def test_an_integer_or_real_out_of_range_is_refused_as_a_csv_copy_refused_it():
    with pytest.raises(ValueError, match="integer"):
        copy_binary.binary_copy_rows(pa.table({"i": pa.array([2**31], pa.int64())}), {"i": "integer"})
    with pytest.raises(ValueError, match="real"):
        copy_binary.binary_copy_rows(pa.table({"r": pa.array([1e39])}), {"r": "real"})


def test_a_real_halfway_between_two_floats_rounds_as_its_decimal_text_did():
    # 1 + 2**-24 lies halfway between the float32s 1 and 1 + 2**-23: a cast rounds it to even (1), but its shortest
    # text, 1.0000000596046448, is above the halfway point, and float4in rounds that up; 1 + 3 * 2**-24's text is
    # below its halfway point, so down, where the cast goes up to even (checked against PostgreSQL 15's float4in).
    got = copy_binary.real_values(np.array([1 + 2**-24, 1 + 3 * 2**-24, 0.1, -(1 + 2**-24)]))
    assert repr(1 + 2**-24) == "1.0000000596046448" and repr(1 + 3 * 2**-24) == "1.0000001788139343"
    assert np.array([1 + 2**-24, 1 + 3 * 2**-24]).astype(np.float32).tolist() == [1.0, 1 + 2**-22]
    assert got.tolist() == [1 + 2**-23, 1 + 2**-23, float(np.float32(0.1)), -(1 + 2**-23)]


def test_rows_taken_from_chunks_come_in_the_order_asked():
    chunks = [pa.array([b"a", b"b", b"c"]), pa.array([b"d", b"e", b"f"]), pa.array([b"g"])]
    positions = np.array([6, 0, 4, 2, 5])
    assert copy_binary.take_from_chunks(chunks, 3, positions).to_pylist() == [b"g", b"a", b"e", b"c", b"f"]


def test_a_value_that_is_not_whole_is_refused_not_truncated(prc):
    feed_file = prc.file("victims")
    column = next(c for c in ddl.table_columns(prc, feed_file) if c.name == "age")
    with pytest.raises((TypeError, ValueError)):
        copy_binary._arrow_column(pd.Series([30.5]), column)
    with pytest.raises(ValueError):
        copy_binary._arrow_column(pd.Series(["forty"], dtype=object), column)


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


def test_the_string_key_order_is_arrows_sort_of_the_strings():
    rng = np.random.default_rng(5)
    digests = [f"{v:032x}" for v in rng.integers(0, 2**63, 300)]
    keys = [f"{digests[i % 200]}-{1 + i // 200 * 9}" for i in range(400)]           # repeats: -1, -10, -19
    keys += ["", "a", "ab", "ab\x01", "abcdefgh", "abcdefgh\x00", "abcdefghijklmnop", "abcdefghijklmnopq",
             "é", "e\u0301", "zz", "Z", "0" * 40, "0" * 16 + "1", "0" * 16]
    text = pa.array([keys[i] for i in rng.permutation(len(keys))])
    want = pc.sort_indices(text).to_numpy()
    assert record_keys._string_order(text).tolist() == want.tolist()
    assert record_keys._string_order(text.slice(7, 50)).tolist() == pc.sort_indices(text.slice(7, 50)).tolist()
    assert record_keys._string_order(pa.array([], pa.string())).tolist() == []
    assert record_keys._string_order(pa.array(["", "", ""])).tolist() == [0, 1, 2]
