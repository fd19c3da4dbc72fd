"""Load the postcode reference and gazetteer into PostGIS and read them back (CSP_DATABASE_URL)."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from csp_observatory import gazetteer as gz
from csp_observatory import postcodes_postgis, postcodes_sources

pytestmark = pytest.mark.integration


@pytest.fixture()
def conn() -> Iterator:
    psycopg2 = pytest.importorskip("psycopg2")
    url = os.environ.get("CSP_DATABASE_URL")
    if not url:
        pytest.skip("CSP_DATABASE_URL is not set")
    connection = psycopg2.connect(url)
    try:
        yield connection
    finally:
        connection.rollback()
        connection.close()


@pytest.fixture(scope="module", autouse=True)
def restore_shipped_reference() -> Iterator[None]:
    """These tests load test frames into the project's own reference tables: put the shipped ones back after."""
    yield
    url = os.environ.get("CSP_DATABASE_URL")
    if url:
        import psycopg2

        connection = psycopg2.connect(url)
        try:
            postcodes_postgis.load_reference(connection, postcodes_sources.shipped_reference())
            gz.load_places(connection, gz.shipped_places())
        finally:
            connection.close()


def test_reference_round_trip(conn) -> None:
    ref = postcodes_sources.shipped_reference()
    assert postcodes_postgis.load_reference(conn, ref) == len(ref)
    back = postcodes_postgis.read_reference(conn)
    key = ["postcode"]
    assert back.sort_values(key).reset_index(drop=True).equals(ref.sort_values(key).reset_index(drop=True))
    with conn.cursor() as cur:
        cur.execute("SELECT ST_X(geom), ST_Y(geom), ST_SRID(geom) FROM reference.postcodes WHERE postcode = 'HX1 1AA'")
        assert cur.fetchone() == (409508.0, 425333.0, 27700)
        cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'reference' AND tablename = 'postcodes'")
        defs = " ".join(r[0] for r in cur.fetchall())
        assert "gist (geom)" in defs and "(households)" in defs and "(postcode)" in defs
        # A spatial query the sanitiser relies on: postcodes with enough households near a point.
        cur.execute("""SELECT count(*) FROM reference.postcodes
                       WHERE households >= 4 AND ST_DWithin(geom, ST_SetSRID(ST_MakePoint(409508, 425333), 27700), 300)""")
        assert cur.fetchone()[0] > 0


def test_replace_and_upsert(conn) -> None:
    ref = postcodes_sources.shipped_reference()
    postcodes_postgis.load_reference(conn, ref)
    small = ref.head(10).assign(households=99)
    postcodes_postgis.load_reference(conn, small, replace=False)
    back = postcodes_postgis.read_reference(conn).set_index("postcode")
    assert len(back) == len(ref) and (back.loc[small["postcode"].tolist(), "households"] == 99).all()
    postcodes_postgis.load_reference(conn, small, replace=True)
    assert len(postcodes_postgis.read_reference(conn)) == 10


def test_failed_load_leaves_the_table_as_it_was(conn) -> None:
    ref = postcodes_sources.shipped_reference()
    postcodes_postgis.load_reference(conn, ref)
    broken = ref.head(5).copy()
    broken["source"] = broken["source"].astype(object)
    broken.loc[broken.index[0], "easting"] = 10**12   # does not fit an integer column
    with pytest.raises(Exception):
        postcodes_postgis.load_reference(conn, broken)
    assert len(postcodes_postgis.read_reference(conn)) == len(ref)


def test_places_round_trip(conn) -> None:
    places = gz.read_os_open_names(gz.HY20_PLACES)
    assert gz.load_places(conn, places) == len(places)
    back = gz.read_places(conn)
    assert back is not None and len(back) == len(places)
    assert back.sort_values("id").reset_index(drop=True).equals(places.sort_values("id").reset_index(drop=True))
    m = gz.match_location("waste ground off Ferry Road", back)
    assert m is not None and m.name == "Ferry Road"
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM reference.places WHERE ST_SRID(geom) = 27700")
        assert cur.fetchone()[0] == len(places)
