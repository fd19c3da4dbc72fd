"""Every feed of section 3.2 from its partner's SFTP drop to PostGIS, through the feed's own DAG (issue 7, "Tests").

For each feed, a fixture supply (csp_observatory.fixtures: realistic rows on real Calderdale postcodes, with bad rows
among the good, and a metadata file that matches them) is encrypted and signed with the feed's demo partner's key
and uploaded to that partner's inbox on the real sshd (the tests' tree); then the feed's DAG runs (Airflow's
dag.test(): collect, decrypt and verify, parse and validate, clean, geocode, sanitise, load, report). Against the
database and the report:

- every input row is loaded or set aside with a reason (the bad rows among the latter, at their stage);
- a depersonalised feed's every point is the centroid of a live postcode with at least four households, every
  postcode of every location is such a postcode, no address column holds a house or flat number, and nothing
  that sanitising drops has a column;
- a personalised feed is in the schema ``personal``, never ``depersonalised``, and a real login holding only
  csp_personal_reader reads it while the analyst's login cannot.
"""
from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from csp_observatory import demo, fixtures, postcodes_sources, sftp
from csp_observatory.addresses import ADDRESS_LEAK
from csp_observatory.schema import DROPPED_ON_SANITISING, FeedSchema
from csp_observatory.schema_loading import load_schemas

pytestmark = pytest.mark.integration

PERIOD = "202607"           # this module's own month: no other test loads it
SEED = 3_2_0
MOVED_OR_OWN = ("own_postcode", "next_nearest", "same_ward", "same_district", "anywhere")
SCHEMAS = load_schemas()


@pytest.fixture(scope="module")
def reference(settings):
    # Loaded afresh: other tests may have put their own frames in the reference tables.
    demo.ensure_reference(settings, force=True)
    return postcodes_sources.shipped_reference()


@pytest.fixture(scope="module")
def reader_url(demo_config):
    """A real login that holds csp_personal_reader and nothing else, made for this module and dropped after it."""
    name = f"csp_test_reader_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(16)
    admin = psycopg2.connect(demo_config["admin_url"], connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s "
                                "IN ROLE csp_personal_reader").format(sql.Identifier(name)), (password,))
        yield (f"postgresql://{name}:{quote(password)}@{demo_config['analyst_host']}:{demo_config['analyst_port']}"
               f"/{demo_config['analyst_database']}")
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


def _exists(cur, db_schema: str, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{db_schema}.{table}",))
    return cur.fetchone()[0]


def _drop_made_tables(db, schema: FeedSchema, made: list[str]) -> None:
    """Tables this test made (the feed had none before): gone again, so a later run starts as this one did."""
    db.rollback()
    with db.cursor() as cur:
        for table in made:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema.db_schema, table)))
    db.commit()


@pytest.mark.usefixtures("clean_partner_folders")
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.feed)
def test_a_feed_runs_from_an_sftp_drop_to_postgis(schema, settings, db, reference, reader_url, demo_config,
                                                   forget_supply):
    supply = fixtures.make_supply(schema, PERIOD, reference, n=60, seed=SEED)
    supply_id = f"{schema.feed}/{PERIOD}"
    forget_supply(db, schema, PERIOD)
    with db.cursor() as cur:
        made = [f.table for f in schema.files if not _exists(cur, schema.db_schema, f.table)]
    db.rollback()
    since = time.time()
    try:
        demo.drop_demo_supply(settings, schema, PERIOD, files=supply.files, metadata=supply.metadata)
        run = demo.run_feed_dag(schema.feed)      # raises if any stage failed; the verdict judges the data
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert states["load"] == "success" and states["report_and_archive"] == "success", states
        path = demo.latest_report(settings, schema.feed, PERIOD, since)
        assert path is not None, "the run wrote no report"
        report = json.loads(path.read_text(encoding="utf-8"))
        # Bad rows among the good: loaded, and amber, never a plain success.
        assert report["outcome"]["level"] == "amber", report["outcome"]
        assert states["verdict"] == "failed"
        # The metadata made for the supply matches it, and is catalogued with the rows.
        with db.cursor() as cur:
            cur.execute("SELECT status FROM observatory.supplies WHERE supply_id = %s", (supply_id,))
            assert cur.fetchone()[0] == "loaded"
            cur.execute("SELECT count(*) FROM observatory.supply_metadata WHERE supply_id = %s", (supply_id,))
            assert cur.fetchone()[0] == 1
        db.rollback()
        # The partner's files were taken: the inbox is empty and the originals are in processed/.
        inbox = settings.inbox(schema.partner.id)
        with sftp.connect_observatory(settings) as client:
            assert client.listdir(inbox) == []
            assert sorted(client.listdir(settings.partner_folder(schema.partner.id, "processed"))) == sorted(
                [fixtures.remote_name(f, PERIOD) for f in schema.files] + [supply.metadata_name])
        files = {f["name"]: f for f in report["files"]}
        for f in schema.files:
            _rows_are_accounted_for(db, schema, f, supply, supply_id, files[f.name])
            if schema.personalised:
                _kept_apart_for_its_reader_only(db, schema, f, supply_id, reader_url, demo_config)
            else:
                _sanitised_by_appendix_1(db, schema, f, supply_id, demo_config)
    finally:
        forget_supply(db, schema, PERIOD)
        _drop_made_tables(db, schema, made)


def _rows_are_accounted_for(db, schema, f, supply, supply_id, reported) -> None:
    """Every input row is in the table or in observatory.rejected_rows with its reason; the bad ones set aside."""
    total = supply.rows[f.name]
    assert reported["rows_in_file"] == total
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT source_row FROM {} WHERE supply_id = %s").format(
            sql.Identifier(schema.db_schema, f.table)), (supply_id,))
        loaded = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT source_row, stage, reason FROM observatory.rejected_rows WHERE supply_id = %s "
                    "AND file_name = %s", (supply_id, f.name))
        rejected = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    assert len(loaded) == len(set(loaded))
    assert set(loaded).isdisjoint(rejected)
    assert set(loaded) | set(rejected) == set(range(1, total + 1)), f"{f.name}: rows neither loaded nor set aside"
    assert all(reason.strip() for _, reason in rejected.values())
    assert {row: stage for row, (stage, _) in rejected.items()} == supply.rejected(f.name)
    assert reported["rows_loaded"] == len(loaded)


def _columns(cur, db_schema: str, table: str) -> set[str]:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (db_schema, table))
    return {r[0] for r in cur.fetchall()}


def _sanitised_by_appendix_1(db, schema, f, supply_id, demo_config) -> None:
    table = sql.Identifier("depersonalised", f.table)
    with db.cursor() as cur:
        assert not _exists(cur, "personal", f.table)
        columns = _columns(cur, "depersonalised", f.table)
        dropped = {d.name for d in f.datafields if d.role in DROPPED_ON_SANITISING or d.free_text == "drop"}
        assert not columns & dropped, f"{f.table} has columns sanitising drops: {sorted(columns & dropped)}"
        assert not columns & {"geo_easting", "geo_northing", "geo_postcode", "geocode_note"}
        # Every point is the centroid of a live postcode with at least four households (the gazetteer's
        # non-addressable places aside: Appendix 1 places them at the place's centre).
        cur.execute(sql.SQL("""
            SELECT t.sanitise_rule, count(*),
                   count(*) FILTER (WHERE p.postcode IS NOT NULL AND p.households >= 4 AND NOT p.terminated
                                    AND ST_X(t.geom) = p.easting AND ST_Y(t.geom) = p.northing
                                    AND t.sanitised_easting = p.easting AND t.sanitised_northing = p.northing),
                   count(*) FILTER (WHERE t.geom IS NULL AND t.sanitised_postcode IS NULL)
              FROM {} t LEFT JOIN reference.postcodes p ON p.postcode = t.sanitised_postcode
             WHERE t.supply_id = %s GROUP BY 1""").format(table), (supply_id,))
        by_rule = {rule: (n, on_centroid, empty) for rule, n, on_centroid, empty in cur.fetchall()}
        for rule, (n, on_centroid, empty) in by_rule.items():
            if rule in MOVED_OR_OWN:
                assert on_centroid == n, f"{f.table}: {n - on_centroid} {rule} point(s) off a safe centroid"
            elif rule == "not_geocoded":
                assert empty == n
            else:
                assert rule == "non_addressable", rule
        if f.location.columns:
            placed = sum(n for rule, (n, _, _) in by_rule.items() if rule in MOVED_OR_OWN)
            assert placed >= 0.8 * sum(n for n, _, _ in by_rule.values()), f"{f.table}: too few placed"
        # Every postcode of every location is such a postcode (or empty).
        places = [("location", f.location), *f.other_locations]
        for _, loc in places:
            if loc.postcode:
                cur.execute(sql.SQL("""
                    SELECT count(*) FROM {} t LEFT JOIN reference.postcodes p ON p.postcode = t.{}
                     WHERE t.supply_id = %s AND t.{} IS NOT NULL
                       AND (p.postcode IS NULL OR p.households < 4 OR p.terminated)""").format(
                    table, sql.Identifier(loc.postcode), sql.Identifier(loc.postcode)), (supply_id,))
                assert cur.fetchone()[0] == 0, f"{f.table}.{loc.postcode} holds an unsafe postcode"
        # No address keeps a house or flat number (non-addressable places keep their own words).
        for label, loc in places:
            if loc.address:
                cur.execute(sql.SQL("SELECT {} FROM {} WHERE supply_id = %s AND {} IS NOT NULL AND "
                                    "sanitise_rule IS DISTINCT FROM 'non_addressable'").format(
                    sql.Identifier(loc.address), table, sql.Identifier(loc.address)) if label == "location" else
                    sql.SQL("SELECT {} FROM {} WHERE supply_id = %s AND {} IS NOT NULL").format(
                    sql.Identifier(loc.address), table, sql.Identifier(loc.address)), (supply_id,))
                texts = [r[0] for r in cur.fetchall()]
                assert texts, f"{f.table}.{loc.address} is empty: nothing was checked"
                leaks = [t for t in texts if re.search(ADDRESS_LEAK, t)]
                assert not leaks, f"{f.table}.{loc.address}: {len(leaks)} address(es) keep a number"
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(table), (supply_id,))
        loaded = cur.fetchone()[0]
    db.rollback()
    # The analyst's own login reads it.
    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(table), (supply_id,))
        assert cur.fetchone()[0] == loaded > 0
    conn.close()


def _kept_apart_for_its_reader_only(db, schema, f, supply_id, reader_url, demo_config) -> None:
    table = sql.Identifier("personal", f.table)
    with db.cursor() as cur:
        assert not _exists(cur, "depersonalised", f.table)
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'depersonalised' "
                    "AND table_name = %s", (f.table,))
        assert cur.fetchone()[0] == 0
        # Kept whole: the exact point where one was supplied, every datafield a column.
        assert {d.name for d in f.datafields} <= _columns(cur, "personal", f.table)
        cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE geocode_method = 'supplied' AND "
                            "ST_X(geom) = geo_easting AND ST_Y(geom) = geo_northing) FROM {} "
                            "WHERE supply_id = %s").format(table), (supply_id,))
        loaded, exact = cur.fetchone()
        assert loaded > 0 and exact > 0
    db.rollback()
    names = [d.name for d in f.datafields if d.role == "name"]
    with psycopg2.connect(reader_url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, pg_has_role('csp_personal_reader', 'MEMBER'), "
                    "pg_has_role('csp_analyst', 'MEMBER')")
        assert cur.fetchone()[1:] == (True, False)
        cur.execute(sql.SQL("SELECT count(*){} FROM {} WHERE supply_id = %s").format(
            sql.SQL("").join(sql.SQL(", count({})").format(sql.Identifier(n)) for n in names), table), (supply_id,))
        got = cur.fetchone()
        assert got[0] == loaded and all(c > 0 for c in got[1:])
    conn.close()
    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
    conn.close()
