"""Loading a supply into PostGIS: one transaction, re-runs replace, failures leave nothing, grants hold."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from contextlib import closing
import uuid

import pandas as pd
import psycopg2
import pytest

from csp_observatory import database, ddl, feed_tables, loading, partitions, record_keys
from csp_observatory.schema import SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.integration

PERIOD = "202609"


@pytest.fixture(scope="module")
def db_url() -> str:
    url = os.environ.get("CSP_DATABASE_URL")
    if not url:
        pytest.skip("CSP_DATABASE_URL is not set (the integration fixtures provide it)")
    return url


@pytest.fixture()
def conn(db_url):
    c = psycopg2.connect(db_url)
    yield c
    c.rollback()
    c.close()


def _isolated(schema: FeedSchema, personalised: bool = False) -> FeedSchema:
    """The real schema with its own feed id and table names, so tests never touch real tables."""
    tag = uuid.uuid4().hex[:8]
    files = tuple(dataclasses.replace(f, table=f"t{tag}_{f.table}") for f in schema.files)
    return dataclasses.replace(schema, feed=f"test_{tag}", files=files,
                               dataset_type="personalised" if personalised else schema.dataset_type)


@pytest.fixture()
def feed(conn):
    schema = _isolated(load_schema(SCHEMA_DIR / "police_recorded_crime.yaml"))
    database.ensure_database(conn)
    feed_tables.ensure_feed_tables(conn, schema)
    conn.commit()
    yield schema
    _drop(conn, schema)


def _drop(conn, schema: FeedSchema) -> None:
    conn.rollback()
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute(psycopg2.sql.SQL("DROP TABLE IF EXISTS {}").format(
                psycopg2.sql.Identifier(schema.db_schema, f.table)))
            # and any partition a failed two-connection load of it left unattached (test_loading_two_connections)
            cur.execute("SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%s) AND relname LIKE %s",
                        (partitions.LOADING_SCHEMA, f.table.replace("_", "\\_") + "\\_%"))
            for (name,) in cur.fetchall():
                cur.execute(psycopg2.sql.SQL("DROP TABLE IF EXISTS {}").format(
                    psycopg2.sql.Identifier(partitions.LOADING_SCHEMA, name)))
        for t in ("supplies", "rejected_rows", "validation_results"):
            cur.execute(f"DELETE FROM observatory.{t} WHERE supply_id LIKE %s", (f"{schema.feed}/%",))
    conn.commit()


def _value(col: ddl.Column, i: int, file_name: str):
    if col.name in ("crime_reference",):
        return f"CR{i // 2 if file_name != 'offences' else i:05d}"
    if col.name.endswith("_reference"):
        return f"R{i:04d}"
    if col.name == "row_key":
        return f"{i:032x}-1"
    if col.name in ("sanitised_easting", "geo_easting"):
        return 409000.0 + i
    if col.name in ("sanitised_northing", "geo_northing"):
        return 425000.0 + i
    if col.name == "source_row":
        return i + 1
    return {"text": f"v{i % 3}", "date": pd.Timestamp("2026-09-01") + pd.Timedelta(days=i % 28),
            "integer": i % 90, "double precision": i / 7, "boolean": bool(i % 2), "real": i * 1.5}[col.sql_type]


def _frames(schema: FeedSchema, n: int = 20) -> dict[str, pd.DataFrame]:
    """Frames shaped as the sanitising stage hands them over (or geocoding, for a personalised feed)."""
    out = {}
    for f in schema.files:
        cols = [c for c in ddl.table_columns(schema, f) if c.name not in ddl.LOADER_COLUMNS]
        frame = pd.DataFrame({c.name: [_value(c, i, f.name) for i in range(n)] for c in cols})
        frame["sanitise_rule" if "sanitise_rule" in frame else "geocode_method"] = "own_postcode"
        frame.loc[n - 1, [c.name for c in cols if c.name in ("sanitised_easting", "sanitised_northing")]] = None
        out[f.name] = frame
    return out


def _lineage(schema: FeedSchema) -> dict[str, str]:
    return {f.name: uuid.uuid4().hex * 2 for f in schema.files}


def _count(conn, schema: FeedSchema, supply_id: str | None = None) -> dict[str, int]:
    counts = {}
    with conn.cursor() as cur:
        for f in schema.files:
            q = psycopg2.sql.SQL("SELECT count(*) FROM {}").format(psycopg2.sql.Identifier(schema.db_schema, f.table))
            if supply_id:
                cur.execute(q + psycopg2.sql.SQL(" WHERE supply_id = %s"), (supply_id,))
            else:
                cur.execute(q)
            counts[f.table] = cur.fetchone()[0]
    conn.rollback()
    return counts


def _rejected() -> pd.DataFrame:
    return pd.DataFrame({"source_file": ["offences", "victims"], "source_row": [4, 9],
                         "reason": ["ho_offence_code '99/9' is not a Home Office offence code", "age is missing"],
                         "stage": ["validate", "validate"]})


def _validation() -> dict:
    return {"offences": {"expectations": [
        {"type": "expect_column_values_to_not_be_null", "column": "crime_reference", "quality": "completeness",
         "success": True, "unexpected_count": 0, "unexpected_percent": 0.0},
        {"type": "expect_column_values_to_be_in_set", "column": "ho_offence_code", "quality": "accuracy",
         "success": False, "unexpected_count": 1, "unexpected_percent": 5.0,
         "result": {"partial_unexpected_list": ["99/9"]}},
    ]}}


def _load(conn, schema, tables, supply_id=None, lineage=None, ledger=None):
    return loading.load_supply(conn, schema, supply_id or f"{schema.feed}/{PERIOD}", PERIOD, tables,
                               lineage or _lineage(schema), rejected=_rejected(), validation=_validation(),
                               on_commit_ledger=ledger)


def test_load_then_reload_replaces_without_duplicates(conn, feed):
    frames = _frames(feed, 20)
    first = _load(conn, feed, frames)
    assert sorted(first.rows.values()) == [20, 20, 20]
    counts = _count(conn, feed)
    assert set(counts.values()) == {20}

    second = _load(conn, feed, frames)
    assert second.rows == first.rows
    assert sum(second.replaced.values()) == 60
    assert _count(conn, feed) == counts
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM observatory.rejected_rows WHERE supply_id = %s", (f"{feed.feed}/{PERIOD}",))
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT status, row_counts FROM observatory.supplies WHERE supply_id = %s",
                    (f"{feed.feed}/{PERIOD}",))
        status, row_counts = cur.fetchone()
        assert status == "loaded" and sum(row_counts.values()) == 60
        cur.execute("SELECT expectation, success, raw::text FROM observatory.validation_results "
                    "WHERE supply_id = %s ORDER BY expectation", (f"{feed.feed}/{PERIOD}",))
        results = cur.fetchall()
    assert {r[0].split()[0]: r[1] for r in results} == {"expect_column_values_to_not_be_null": True,
                                                        "expect_column_values_to_be_in_set": False}
    # A sampled value from GX is row content: it must not be stored.
    assert not any("99/9" in r[2] for r in results)


def test_values_arrive_typed_with_point_and_lineage(conn, feed):
    frames = _frames(feed, 5)
    lineage = _lineage(feed)
    _load(conn, feed, frames, lineage=lineage)
    table = next(f.table for f in feed.files if f.name == "offences")
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL(
            "SELECT committed_from_date, flag_drugs, sanitised_easting, ST_X(geom), ST_Y(geom), ST_SRID(geom), "
            "source_sha256, source_row, period FROM {} WHERE source_row = 2").format(
            psycopg2.sql.Identifier(feed.db_schema, table)))
        row = cur.fetchone()
        cur.execute(psycopg2.sql.SQL("SELECT count(*) FROM {} WHERE geom IS NULL").format(
            psycopg2.sql.Identifier(feed.db_schema, table)))
        no_point = cur.fetchone()[0]
    conn.rollback()
    assert str(row[0]) == "2026-09-02" and row[1] is True
    assert (row[2], row[3], row[4], row[5]) == (409001, 409001.0, 425001.0, 27700)
    assert (row[6], row[7], row[8]) == (lineage["offences"], 2, PERIOD)
    assert no_point == 1                 # the record without a sanitised point keeps a null geom


def test_failure_mid_way_leaves_the_previous_load_intact(conn, feed):
    frames = _frames(feed, 10)
    _load(conn, feed, frames)
    before = _count(conn, feed)

    bad = {k: v.copy() for k, v in frames.items()}
    bad["victims"]["age"] = bad["victims"]["age"].astype(object)
    bad["victims"].loc[5, "age"] = "forty"     # offences and offenders go in first; the last file fails
    with pytest.raises(ValueError):
        _load(conn, feed, bad)
    assert _count(conn, feed) == before

    dup = {k: v.copy() for k, v in frames.items()}
    dup["offenders"].loc[3, ["crime_reference", "offender_reference"]] = dup["offenders"].loc[
        2, ["crime_reference", "offender_reference"]].to_list()
    with pytest.raises(psycopg2.IntegrityError):
        _load(conn, feed, dup)
    assert _count(conn, feed) == before


def test_failed_first_load_and_failing_ledger_leave_nothing(conn, feed):
    supply = f"{feed.feed}/209912"
    calls = []

    def ledger(c):
        calls.append(c)
        raise RuntimeError("ledger unavailable")

    with pytest.raises(RuntimeError):
        _load(conn, feed, _frames(feed, 8), supply_id=supply, ledger=ledger)
    assert calls, "the ledger callback runs inside the load"
    assert set(_count(conn, feed, supply).values()) == {0}
    with conn.cursor() as cur:
        for t in ("supplies", "rejected_rows", "validation_results"):
            cur.execute(f"SELECT count(*) FROM observatory.{t} WHERE supply_id = %s", (supply,))
            assert cur.fetchone()[0] == 0, t
    conn.rollback()


def test_ledger_commits_with_the_rows(conn, feed, db_url):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS observatory.h6_ledger_probe (supply_id text)")
    conn.commit()
    supply = f"{feed.feed}/{PERIOD}"
    try:
        _load(conn, feed, _frames(feed, 3), supply_id=supply,
              ledger=lambda c: c.cursor().execute("INSERT INTO observatory.h6_ledger_probe VALUES (%s)", (supply,)))
        # A second session sees both (conn.dsn hides the password, so connect from the URL).
        with closing(psycopg2.connect(db_url)) as other, other.cursor() as cur:
            cur.execute("SELECT count(*) FROM observatory.h6_ledger_probe WHERE supply_id = %s", (supply,))
            assert cur.fetchone()[0] == 1
        assert set(_count(conn, feed, supply).values()) == {3}
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS observatory.h6_ledger_probe")
        conn.commit()


def test_personal_columns_in_a_depersonalised_frame_are_refused(conn, feed):
    frames = _frames(feed, 4)
    frames["offenders"]["offender_name"] = "A Person"
    with pytest.raises(loading.FrameMismatch, match="offender_name"):
        _load(conn, feed, frames)
    frames = _frames(feed, 4)
    frames["offences"]["easting"] = 409123
    with pytest.raises(loading.FrameMismatch, match="easting"):
        _load(conn, feed, frames)
    assert set(_count(conn, feed).values()) == {0}


def test_geometry_index_and_grants(conn, feed):
    _load(conn, feed, _frames(feed, 3))
    table = feed.files[0].table
    with conn.cursor() as cur:
        cur.execute("SELECT srid, type FROM geometry_columns WHERE f_table_schema = %s AND f_table_name = %s",
                    (feed.db_schema, table))
        assert cur.fetchone() == (27700, "POINT")
        cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                    (feed.db_schema, table))
        defs = [r[0] for r in cur.fetchall()]
        assert any("USING gist (geom)" in d for d in defs)
        cur.execute("SELECT obj_description(%s::regclass), col_description(%s::regclass, 1)",
                    (f"{feed.db_schema}.{table}",) * 2)
        table_comment, first_col = cur.fetchone()
        assert feed.files[0].title in table_comment and first_col == feed.files[0].datafields[0].label
        q = f"{feed.db_schema}.{table}"
        cur.execute("SELECT has_table_privilege('csp_analyst', %s, 'SELECT'), "
                    "has_table_privilege('csp_analyst', 'observatory.supplies', 'SELECT'), "
                    "has_schema_privilege('csp_analyst', 'personal', 'USAGE'), "
                    "has_schema_privilege('csp_analyst', 'observatory', 'USAGE'), "
                    "has_schema_privilege('public', 'personal', 'USAGE'), "
                    "has_table_privilege('csp_engineer', 'observatory.supplies', 'SELECT')", (q,))
        assert cur.fetchone() == (True, False, False, False, False, True)
    conn.rollback()
    # Acting as the analyst (when this account may): depersonalised yes, observatory no.
    with conn.cursor() as cur:
        try:
            cur.execute("SET ROLE csp_analyst")
        except psycopg2.errors.InsufficientPrivilege:
            conn.rollback()
            return
        cur.execute(psycopg2.sql.SQL("SELECT count(*) FROM {}").format(psycopg2.sql.Identifier(feed.db_schema, table)))
        assert cur.fetchone()[0] == 3
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT count(*) FROM observatory.supplies")
    conn.rollback()


def test_personalised_feed_goes_to_personal_schema_for_its_reader_only(conn):
    schema = _isolated(load_schema(SCHEMA_DIR / "police_recorded_crime.yaml"), personalised=True)
    try:
        database.ensure_database(conn)
        feed_tables.ensure_feed_tables(conn, schema)
        conn.commit()
        frames = _frames(schema, 4)
        assert "offender_name" in frames["offenders"] and "date_of_birth" in frames["victims"]
        result = _load(conn, schema, frames)
        assert set(result.rows) == {f"personal.{f.table}" for f in schema.files}
        table = f"personal.{schema.files[1].table}"
        with conn.cursor() as cur:
            cur.execute(f"SELECT ST_X(geom) FROM {table} WHERE source_row = 1")     # test-made name, not input
            assert cur.fetchone()[0] == 409000.0                                    # the exact point
            cur.execute("SELECT has_table_privilege('csp_analyst', %s, 'SELECT'), "
                        "has_table_privilege('csp_engineer', %s, 'SELECT'), "
                        "has_table_privilege('csp_personal_reader', %s, 'SELECT')", (table,) * 3)
            assert cur.fetchone() == (False, False, True)
        conn.rollback()
    finally:
        _drop(conn, schema)


def test_schema_gaining_a_datafield_adds_the_column(conn, feed):
    from csp_observatory.schema import Datafield

    f = feed.files[0]
    grown = dataclasses.replace(feed, files=(dataclasses.replace(
        f, datafields=(*f.datafields, Datafield(name="beat_code", label="Police beat", type="string",
                                                role="attribute"))), *feed.files[1:]))
    feed_tables.ensure_feed_tables(conn, grown)
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT data_type, col_description(%s::regclass, ordinal_position) FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s AND column_name = 'beat_code'",
                    (f"{feed.db_schema}.{f.table}", feed.db_schema, f.table))
        assert cur.fetchone() == ("text", "Police beat")
    conn.rollback()


def _partitions(conn, schema: FeedSchema, table: str) -> dict[str, list[str]]:
    with conn.cursor() as cur:
        parts = partitions.partition_keys(cur, schema.db_schema, table)
    conn.rollback()
    return parts


def _fids(conn, schema: FeedSchema, table: str, supply_id: str) -> list[int]:
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SELECT fid FROM {} WHERE supply_id = %s ORDER BY fid").format(
            psycopg2.sql.Identifier(schema.db_schema, table)), (supply_id,))
        fids = [r[0] for r in cur.fetchall()]
    conn.rollback()
    return fids


def test_a_file_moving_to_a_content_key_is_migrated_and_loads_without_its_old_key(conn, feed):
    """A partition loaded when victims were keyed by victim_reference takes row_key as its key, rows kept."""
    victims = feed.file("victims")
    old = dataclasses.replace(victims, key=("crime_reference", "victim_reference"), content_key=False)
    old_feed = dataclasses.replace(feed, files=(feed.files[0], feed.files[1], old))
    table = psycopg2.sql.Identifier(feed.db_schema, victims.table)
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("DROP TABLE {}").format(table))
    feed_tables.ensure_feed_tables(conn, old_feed)
    conn.commit()
    frame = pd.DataFrame({c: pd.Series([None, None], dtype="object") for c in ddl.frame_columns(old_feed, old)})
    frame["crime_reference"], frame["victim_reference"], frame["gender"] = ["CR1", "CR1"], ["V1", "V2"], "F"
    loading.load_supply(conn, old_feed, f"{feed.feed}/202608", "202608", {"victims": frame},
                        lineage={"victims": "s" * 64})
    assert list(_partitions(conn, feed, victims.table).values()) == [["supply_id", "crime_reference",
                                                                      "victim_reference"]]
    feed_tables.ensure_feed_tables(conn, feed)       # the schema now says key: content
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                    (f"{feed.db_schema}.{victims.table}",))
        # the feature id QGIS and GDAL take is the primary key; the record's own key is each partition's
        assert [r[0] for r in cur.fetchall()] == ["fid"]
        assert feed_tables.record_key(cur, feed.db_schema, victims.table) == ["supply_id", "row_key"]
        cur.execute(psycopg2.sql.SQL("SELECT count(*), count(DISTINCT row_key) FROM {}").format(table))
        assert cur.fetchone() == (2, 2)
        cur.execute("SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = %s::regclass AND attname IN "
                    "('victim_reference', 'row_key')", (f"{feed.db_schema}.{victims.table}",))
        assert dict(cur.fetchall()) == {"victim_reference": False, "row_key": True}
    conn.rollback()
    # a guidance-exact victims frame (no victim_reference) now loads, twice identical rows and all
    frame = pd.DataFrame({c: pd.Series([None, None], dtype="object") for c in ddl.frame_columns(feed, victims)})
    frame["crime_reference"] = ["CR9", "CR9"]
    frame["row_key"] = record_keys.content_keys(frame[["crime_reference"]], ["crime_reference"])
    loading.load_supply(conn, feed, f"{feed.feed}/{PERIOD}", PERIOD, {"victims": frame},
                        lineage={"victims": "a" * 64})
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(table),
                    (f"{feed.feed}/{PERIOD}",))
        assert cur.fetchone()[0] == 2
    conn.rollback()


def test_a_large_load_refreshes_the_planner_statistics_in_its_transaction(conn, feed, monkeypatch):
    """Without fresh statistics the counts by ward and month were planned as nested loops over the whole layer."""
    monkeypatch.setattr(loading, "ANALYZE_MIN_ROWS", 10)
    table = feed.file("offences").table
    _load(conn, feed, _frames(feed, 30))
    (part,) = _partitions(conn, feed, table)
    with conn.cursor() as cur:
        cur.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (f"{feed.db_schema}.{part}",))
        assert cur.fetchone()[0] == 30
    conn.rollback()


def test_a_resent_period_replaces_only_its_own_partition(conn, feed):
    """Each supply is one partition of each table: a re-send swaps its own, another period's rows and fids stay."""
    august, september = f"{feed.feed}/202608", f"{feed.feed}/{PERIOD}"
    offences = feed.file("offences").table
    _load(conn, feed, _frames(feed, 6), supply_id=august)
    _load(conn, feed, _frames(feed, 10), supply_id=september)
    august_fids, parts = _fids(conn, feed, offences, august), set(_partitions(conn, feed, offences))
    assert len(parts) == 2 and len(august_fids) == 6
    resent = _load(conn, feed, _frames(feed, 7), supply_id=september)
    assert resent.replaced[f"{feed.db_schema}.{offences}"] == 10
    assert _count(conn, feed, september) == {f.table: 7 for f in feed.files}
    assert _fids(conn, feed, offences, august) == august_fids          # untouched
    after = set(_partitions(conn, feed, offences))
    assert len(after) == 2 and len(after & parts) == 1                  # september's partition is a new one
    new_fids = _fids(conn, feed, offences, september)
    assert min(new_fids) > max(august_fids) and len(set(new_fids)) == 7
    with conn.cursor() as cur:                                          # nothing else is left in the schema
        cur.execute("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r' "
                    "AND relname LIKE %s", (feed.db_schema, f"{offences}\\_f%"))
        assert cur.fetchone()[0] == 2
    conn.rollback()


def test_a_failure_before_attach_leaves_the_previous_rows_and_no_stray_table(conn, feed, monkeypatch):
    _load(conn, feed, _frames(feed, 4))
    offences = feed.file("offences").table
    before, parts, fids = _count(conn, feed), _partitions(conn, feed, offences), _fids(
        conn, feed, offences, f"{feed.feed}/{PERIOD}")
    copied = []

    def fail(cur, db_schema, table, supply_id, staged):       # after every file's COPY and indexes, before ATTACH
        copied.append(staged)
        raise RuntimeError("lost the connection")

    monkeypatch.setattr(partitions, "swap", fail)
    with pytest.raises(RuntimeError):
        _load(conn, feed, _frames(feed, 9))
    assert copied and copied[0].end - copied[0].first == 9
    assert _count(conn, feed) == before and _partitions(conn, feed, offences) == parts
    assert _fids(conn, feed, offences, f"{feed.feed}/{PERIOD}") == fids
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{feed.db_schema}.{copied[0].name}",))
        assert cur.fetchone()[0] is None                                # the new partition's table is gone
    conn.rollback()


def test_an_unpartitioned_table_of_an_older_observatory_is_migrated_rows_and_fids_kept(conn, feed):
    offences = feed.file("offences")
    table = psycopg2.sql.Identifier(feed.db_schema, offences.table)
    cols = psycopg2.sql.SQL(", ").join(psycopg2.sql.SQL("{} {}").format(psycopg2.sql.Identifier(c.name),
                                                                        psycopg2.sql.SQL(c.sql_type))
                                       for c in ddl.table_columns(feed, offences))
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("DROP TABLE {}").format(table))
        # the layout before partitions: an identity fid as primary key, the record's key unique, a GiST index
        pkey, key = (psycopg2.sql.Identifier(f"{offences.table}{suffix}") for suffix in ("_pkey", "_supply_key"))
        cur.execute(psycopg2.sql.SQL("CREATE TABLE {} ({}, fid bigint GENERATED ALWAYS AS IDENTITY, "
                                     "CONSTRAINT {} PRIMARY KEY (fid), CONSTRAINT {} UNIQUE (supply_id, "
                                     "crime_reference))").format(table, cols, pkey, key))
        cur.execute(psycopg2.sql.SQL("CREATE INDEX {} ON {} USING gist (geom)").format(
            psycopg2.sql.Identifier(f"{offences.table}_geom_gist"), table))
        cur.execute(psycopg2.sql.SQL("INSERT INTO {} (supply_id, period, source_sha256, loaded_at, crime_reference) "
                                     "SELECT s, right(s, 6), 's', now(), 'CR' || i FROM generate_series(1, 3) i, "
                                     "unnest(%s) s").format(table), ([f"{feed.feed}/202607", f"{feed.feed}/202608"],))
        cur.execute(psycopg2.sql.SQL("DELETE FROM {} WHERE fid = 2").format(table))     # a gap, as re-runs leave
        cur.execute(psycopg2.sql.SQL("SELECT fid, supply_id, crime_reference FROM {} ORDER BY fid").format(table))
        rows = cur.fetchall()
        cur.execute("GRANT SELECT ON {} TO csp_engineer".format(f'"{feed.db_schema}"."{offences.table}"'))
    conn.commit()
    assert feed_tables.ensure_feed_tables(conn, feed) == [f"{feed.db_schema}.{offences.table}"]
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SELECT fid, supply_id, crime_reference FROM {} ORDER BY fid").format(table))
        assert cur.fetchall() == rows
        assert feed_tables.primary_key(cur, feed.db_schema, offences.table) == ["fid"]
        assert partitions.is_partitioned(cur, feed.db_schema, offences.table)
        assert feed_tables.record_key(cur, feed.db_schema, offences.table) == ["supply_id", "crime_reference"]
        cur.execute("SELECT has_table_privilege('csp_engineer', %s, 'SELECT')", (f"{feed.db_schema}.{offences.table}",))
        assert cur.fetchone()[0]
    conn.rollback()
    assert feed_tables.ensure_feed_tables(conn, feed) == []               # migrated once
    conn.rollback()
    # A re-send of a supply loaded before replaces its rows in the old partition; a new one gets later fids.
    frames = {"offences": _frames(feed, 2)["offences"]}
    _load(conn, feed, frames, supply_id=f"{feed.feed}/202608", lineage={"offences": "b" * 64})
    _load(conn, feed, frames, supply_id=f"{feed.feed}/202609", lineage={"offences": "b" * 64})
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SELECT supply_id, count(*), min(fid) FROM {} GROUP BY 1 ORDER BY 1")
                    .format(table))
        got = cur.fetchall()
    conn.rollback()
    july = sum(1 for r in rows if r[1] == f"{feed.feed}/202607")             # 2 or 3: the gap is in one month
    assert [(s, n) for s, n, _ in got] == [(f"{feed.feed}/{p}", n) for p, n in
                                          (("202607", july), ("202608", 2), ("202609", 2))]
    assert got[1][2] > rows[-1][0] and got[2][2] > got[1][2]


def test_a_failed_fid_reservation_leaves_no_lock_behind(conn, feed, db_url):
    """The block of fids is taken under a session lock: a failure inside it must not keep the lock for the
    connection's life (the next load of the table would wait for ever)."""
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.UndefinedTable):
            partitions.reserve_fids(cur, feed.db_schema, "no_such_table", 10)
    conn.rollback()
    with closing(psycopg2.connect(db_url)) as other, other.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                    (f"csp_observatory.fid.{feed.db_schema}.no_such_table",))
        assert cur.fetchone()[0] is True
    first = _load(conn, feed, _frames(feed, 3)).rows
    assert sorted(first.values()) == [3, 3, 3]


def test_a_resend_never_waits_for_ever_on_a_reader_left_in_a_transaction(conn, feed, db_url, monkeypatch):
    """A session holding a feed table in an open transaction (a forgotten psql, a hung client) blocks the swap of a
    re-sent supply's partition: the load gives up after its lock timeout and rolls back whole, the first load's
    rows stay, and once the reader has gone the re-send loads."""
    monkeypatch.setattr(loading, "SWAP_LOCK_TIMEOUT", "1s")
    offences = feed.file("offences").table
    _load(conn, feed, _frames(feed, 5))
    with closing(psycopg2.connect(db_url)) as reader:
        with reader.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {feed.db_schema}.{offences}")     # noqa: S608
            assert cur.fetchone()[0] == 5
        # the reader's transaction is still open here
        with pytest.raises(psycopg2.errors.LockNotAvailable):
            _load(conn, feed, _frames(feed, 8))
        conn.rollback()
        assert _count(conn, feed) == {f.table: 5 for f in feed.files}
        reader.rollback()
    assert sorted(_load(conn, feed, _frames(feed, 8)).rows.values()) == [8, 8, 8]
    assert _count(conn, feed) == {f.table: 8 for f in feed.files}


def test_binary_copy_reads_back_every_type_null_and_odd_text_exactly(conn, feed):
    """The binary COPY gives what the CSV COPY gave: text byte for byte (quotes, separators, line breaks,
    backslashes, COPY's own markers), "" as NULL, dates, booleans, whole metres, reals as float4in read their text."""
    odd = ['a,"b"', "line\nbreak\r\n", "back\\slash", "\\.", "\\N", "NULL", "tab\there", "é ü 中 🙂", "  spaced  ", ""]
    frames = _frames(feed, len(odd))
    offences = frames["offences"]
    offences["method_of_entry"] = odd
    offences["displacement_m"] = [0.1, 1 + 2**-24, 12.75, None, 1e-3, 373650.47223307507, 0.0, -2.5, 1e30, 7.0]
    offences["flag_drugs"] = pd.array([True, False, None] * 3 + [True], dtype="boolean")
    _load(conn, feed, frames)
    table = psycopg2.sql.Identifier(feed.db_schema, next(f.table for f in feed.files if f.name == "offences"))
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL(
            "SELECT method_of_entry, displacement_m::text, flag_drugs, committed_from_date::text, sanitised_easting, "
            "ST_AsEWKT(geom), loaded_at = (SELECT loaded_at FROM observatory.supplies WHERE supply_id = %s) "
            "FROM {} ORDER BY source_row").format(table), (f"{feed.feed}/{PERIOD}",))
        got = cur.fetchall()
        cur.execute("SELECT %s::real::text, %s::real::text", ("1.0000000596046448", "373650.47223307507"))
        real_texts = cur.fetchone()
    conn.rollback()
    assert [r[0] for r in got] == odd[:-1] + [None]
    assert [r[1] for r in got] == ["0.1", real_texts[0], "12.75", None, "0.001", real_texts[1], "0", "-2.5", "1e+30",
                                   "7"]
    assert [r[2] for r in got] == [True, False, None] * 3 + [True]
    assert [r[3] for r in got][:3] == ["2026-09-01", "2026-09-02", "2026-09-03"]
    assert got[0][4] == 409000 and got[0][5] == "SRID=27700;POINT(409000 425000)" and got[-1][5] is None
    assert all(r[6] for r in got)           # every row carries the transaction's start, as the supply's record does


def test_a_failure_while_the_previous_file_is_being_indexed_rolls_back_whole(conn, feed, monkeypatch):
    """The server builds a file's indexes while the feed prepares the next file's rows: a failure in that preparation
    stops the index build and leaves the earlier load as it was, with no table of the failed one behind."""
    _load(conn, feed, _frames(feed, 4))
    before = _count(conn, feed)
    offences = feed.file("offences").table
    real_prepare, real_index = loading._prepare, loading._index_partition
    indexing: list[str] = []
    building = threading.Event()

    def slow_index(c, schema, file_name, staged, supply_id):
        indexing.append(staged.name)
        building.set()
        with c.cursor() as cur:                      # still building when the next file's preparation fails
            cur.execute("SELECT pg_sleep(30)")
        real_index(c, schema, file_name, staged, supply_id)

    def prepare(schema, file_name, *args):
        if file_name != "offences":
            building.wait(30)
            time.sleep(0.5)                          # the index build's statement is running
            raise RuntimeError("the next file's frame could not be read")
        return real_prepare(schema, file_name, *args)

    monkeypatch.setattr(loading, "_index_partition", slow_index)
    monkeypatch.setattr(loading, "_prepare", prepare)
    with pytest.raises(RuntimeError, match="could not be read"):
        _load(conn, feed, _frames(feed, 9))
    assert len(indexing) == 1
    assert _count(conn, feed) == before
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{feed.db_schema}.{indexing[0]}",))
        assert cur.fetchone()[0] is None                                # the offences' new table is gone
        cur.execute("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r' "
                    "AND relname LIKE %s", (feed.db_schema, f"{offences}\\_f%"))
        assert cur.fetchone()[0] == 1                                   # the earlier load's partition only
    conn.rollback()


def _partition_indexes(cur, feed: FeedSchema, part: str) -> list[tuple[str, str | None]]:
    """Each index of a partition, with the parent's index it is a child of (None: the partition's own)."""
    cur.execute("""SELECT ci.relname, pi.relname FROM pg_index x JOIN pg_class ci ON ci.oid = x.indexrelid
                   LEFT JOIN pg_inherits h ON h.inhrelid = x.indexrelid
                   LEFT JOIN pg_class pi ON pi.oid = h.inhparent
                   WHERE x.indrelid = %s::regclass ORDER BY 1""", (f"{feed.db_schema}.{part}",))
    return cur.fetchall()


def test_files_load_largest_first_each_attached_with_the_indexes_analysts_use(conn, feed):
    """Files of different sizes (one empty) go in largest first: each non-empty one is a partition attached with its
    record key, primary key and GiST index (children of the parent's), fids in key order; a repeated record is still
    refused by the record key, with PostgreSQL's message naming it."""
    frames = _frames(feed, 12)
    frames["offences"] = frames["offences"].iloc[:5].iloc[::-1].reset_index(drop=True)     # not in key order
    frames["victims"] = frames["victims"].iloc[:0]
    result = _load(conn, feed, frames)
    assert result.rows == {f"{feed.db_schema}.{f.table}": {"offences": 5, "offenders": 12, "victims": 0}[f.name]
                           for f in feed.files}
    with conn.cursor() as cur:
        for f in feed.files:
            parts = _partitions(conn, feed, f.table)
            assert len(parts) == (0 if f.name == "victims" else 1)
            for part in parts:
                assert _partition_indexes(cur, feed, part) == [
                    (f"{part}_geom_gist", f"{f.table}_geom_gist"), (f"{part}_pkey", f"{f.table}_pkey"),
                    (f"{part}_supply_key", None)]
        key = feed.file("offences").table_key[0]
        cur.execute(psycopg2.sql.SQL("SELECT {} FROM {} ORDER BY fid").format(
            psycopg2.sql.Identifier(key), psycopg2.sql.Identifier(feed.db_schema, feed.file("offences").table)))
        keys = [r[0] for r in cur.fetchall()]
        assert keys == sorted(keys) and len(keys) == 5
    conn.rollback()
    dup = {k: v.copy() for k, v in _frames(feed, 12).items()}
    dup["offenders"].loc[3, ["crime_reference", "offender_reference"]] = dup["offenders"].loc[
        2, ["crime_reference", "offender_reference"]].to_list()
    with pytest.raises(psycopg2.errors.UniqueViolation, match=r'unique index "\S+_f\d+_supply_key"') as refused:
        _load(conn, feed, dup)
    assert "Key (supply_id, crime_reference, offender_reference)=" in str(refused.value)
    assert _count(conn, feed)[feed.file("offenders").table] == 12          # the earlier load stays, whole
