"""Every feed of section 3.2 through the pipeline's stages on the real PostGIS (issue 7, "Tests").

For each feed, a fixture supply (csp_observatory.fixtures: realistic rows on real Calderdale postcodes, with bad rows
among the good) is written into a fresh work folder as the decrypt stage leaves it, and the stage functions run
on it: parse_and_validate, clean, geocode, sanitise, load. Then, against the database:

- every input row is loaded or set aside with a reason (the bad rows among the latter, at their stage);
- a depersonalised feed's every point is the centroid of a live postcode with at least four households, every
  postcode of every location is such a postcode, no address column holds a house or flat number, and nothing
  that sanitising drops has a column;
- a personalised feed is in the schema ``personal``, never ``depersonalised``, and a real login holding only
  csp_personal_reader reads it while the analyst's login cannot.

Collecting and decrypting (SFTP, gpg) are tested end to end for police recorded crime in test_end_to_end.py; the
new feeds' partners have no SFTP accounts or keys until they are onboarded.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from csp_observatory import demo, fixtures, ledger, pipeline, postcodes
from csp_observatory.addresses import ADDRESS_LEAK
from csp_observatory.pipeline import Manifest, SupplyFile
from csp_observatory.schema import DROPPED_ON_SANITISING, FeedSchema, load_schemas

pytestmark = pytest.mark.integration

PERIOD = "202607"           # this module's own month: no other test loads it
SEED = 3_2_0
MOVED_OR_OWN = ("own_postcode", "next_nearest", "same_ward", "same_district", "anywhere")
SCHEMAS = load_schemas()


@pytest.fixture(scope="module")
def reference(settings):
    # Loaded afresh: other tests may have put their own frames in the reference tables.
    demo.ensure_reference(settings, force=True)
    return postcodes.shipped_reference()


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


def _work_dir(root: Path, schema: FeedSchema, supply: fixtures.FixtureSupply) -> tuple[str, list[str]]:
    """A work folder as decrypt_and_verify leaves it: plaintext CSVs, the metadata file and a manifest; the files'
    ledger hashes (the metadata file's last)."""
    work = root / "work"
    (work / "plain").mkdir(parents=True, mode=0o700)
    m = Manifest(feed=schema.feed, period=PERIOD, work_dir=str(work), files={}, run_id="test_feeds_pipeline")
    shas = []
    for f in schema.files:
        text = supply.files[f.name]
        plain = work / "plain" / f"{f.name}.csv"
        plain.write_text(text, encoding="utf-8")
        # A hash of these bytes and this run: the ledger holds each delivery once, and no other test's.
        sha = hashlib.sha256(text.encode() + uuid.uuid4().bytes).hexdigest()
        shas.append(sha)
        m.files[f.name] = SupplyFile(name=f.name, remote_name=fixtures.remote_name(f, PERIOD), sha256=sha,
                                     size=len(text.encode()), encrypted_path=str(work / f"{f.name}.gpg"),
                                     plaintext_path=str(plain))
    # Every supply carries its metadata file: the test database may or may not know the feed already.
    plain = work / "plain" / supply.metadata_name.removesuffix(".gpg")
    plain.write_text(supply.metadata, encoding="utf-8")
    sha = hashlib.sha256(supply.metadata.encode() + uuid.uuid4().bytes).hexdigest()
    shas.append(sha)
    m.metadata = SupplyFile(name="metadata", remote_name=supply.metadata_name, sha256=sha,
                            size=len(supply.metadata.encode()), encrypted_path=str(work / "metadata.gpg"),
                            plaintext_path=str(plain))
    m.save()
    return str(work), shas


def _exists(cur, db_schema: str, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{db_schema}.{table}",))
    return cur.fetchone()[0]


def _cleanup(db, schema: FeedSchema, supply_id: str, shas: list[str], made: list[str]) -> None:
    db.rollback()
    with db.cursor() as cur:
        for f in schema.files:
            table = sql.Identifier(schema.db_schema, f.table)
            if f.table in made:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            elif _exists(cur, schema.db_schema, f.table):
                cur.execute(sql.SQL("DELETE FROM {} WHERE supply_id = %s").format(table), (supply_id,))
        for t in ("supplies", "rejected_rows", "validation_results", "supply_metadata"):
            if not _exists(cur, "observatory", t):
                continue
            cur.execute(sql.SQL("DELETE FROM {} WHERE supply_id = %s").format(sql.Identifier("observatory", t)),
                        (supply_id,))
        cur.execute("DELETE FROM observatory.deliveries WHERE sha256 = ANY(%s)", (shas,))
    db.commit()


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.feed)
def test_a_feed_runs_from_its_files_to_postgis(schema, settings, db, reference, reader_url, demo_config, tmp_path):
    supply = fixtures.make_supply(schema, PERIOD, reference, n=60, seed=SEED)
    supply_id = f"{schema.feed}/{PERIOD}"
    work, shas = _work_dir(tmp_path, schema, supply)
    ledger.ensure_ledger(db)
    with db.cursor() as cur:
        made = [f.table for f in schema.files if not _exists(cur, schema.db_schema, f.table)]
    for f, sha in zip(schema.files, shas):
        ledger.record_received(db, sha, schema.feed, f.name, supply_id, len(supply.files[f.name].encode()))
    ledger.record_received(db, shas[-1], schema.feed, supply.metadata_name, supply_id, len(supply.metadata.encode()))
    db.commit()
    try:
        for stage in (pipeline.parse_and_validate, pipeline.clean, pipeline.geocode, pipeline.sanitise):
            stage([work], settings)
        pipeline.load([work], settings)
        m = Manifest.read(work)
        assert m.status == "loaded", m.problems
        # The metadata made for the supply matches it, and is catalogued with the rows.
        assert m.stages["metadata"]["mismatches"] == [] and m.stages["metadata"]["recorded"]
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM observatory.supply_metadata WHERE supply_id = %s", (supply_id,))
            assert cur.fetchone()[0] == 1
        db.rollback()
        for f in schema.files:
            _rows_are_accounted_for(db, schema, f, supply, supply_id, m)
            if schema.personalised:
                _kept_apart_for_its_reader_only(db, schema, f, supply_id, reader_url, demo_config)
            else:
                _sanitised_by_appendix_1(db, schema, f, supply_id, demo_config)
    finally:
        _cleanup(db, schema, supply_id, shas, made)


def _rows_are_accounted_for(db, schema, f, supply, supply_id, m) -> None:
    """Every input row is in the table or in observatory.rejected_rows with its reason; the bad ones set aside."""
    total = supply.rows[f.name]
    assert m.files[f.name].rows_in_file == total
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
