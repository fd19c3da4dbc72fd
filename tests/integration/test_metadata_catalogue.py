"""The supply-metadata catalogue and comments on the real PostGIS: DDL, transactions, grants, what QGIS shows."""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from csp_observatory import database, feed_tables, metadata as M, metadata_catalogue, metadata_file
from csp_observatory.schema import REPO_ROOT, SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "include" / "examples" / "police_recorded_crime_metadata.yaml"


@pytest.fixture()
def conn(db: Any) -> Iterator[Any]:
    """The loader's connection with the database and the catalogue in place (committed)."""
    database.ensure_database(db)
    metadata_catalogue.ensure_catalogue(db)
    db.commit()
    yield db
    db.rollback()


@pytest.fixture()
def feed(conn: Any) -> Iterator[FeedSchema]:
    """The police schema under its own feed id and table names, so no test touches real feeds; removed after."""
    tag = uuid.uuid4().hex[:8]
    real = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    schema = dataclasses.replace(real, feed=f"test_{tag}", files=tuple(
        dataclasses.replace(f, table=f"t{tag}_{f.table}") for f in real.files))
    yield schema
    conn.rollback()
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema.db_schema, f.table)))
        cur.execute("DELETE FROM observatory.supply_metadata WHERE feed = %s", (schema.feed,))
    conn.commit()


def _metadata(schema: FeedSchema, **changes: Any) -> M.SupplyMetadata:
    """The example file, read as the metadata of ``schema``'s feed."""
    md = metadata_file.parse_metadata(EXAMPLE.read_text(encoding="utf-8"),
                                      load_schema(SCHEMA_DIR / "police_recorded_crime.yaml"))
    return dataclasses.replace(md, feed=schema.feed, dataset=schema.feed, **changes)


def _rows(conn: Any, feed: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute("SELECT supply_id, period, document, mismatches FROM observatory.supply_metadata "
                    "WHERE feed = %s ORDER BY supply_id", (feed,))
        return cur.fetchall()


def test_ensure_catalogue_twice_and_its_grants(conn):
    metadata_catalogue.ensure_catalogue(conn)          # up to date: the quick path
    conn.commit()
    with conn.cursor() as cur:
        # force the full path again inside a transaction: every statement must be safe to repeat
        cur.execute("COMMENT ON VIEW reference.feed_caveats IS 'stale'")
        metadata_catalogue.ensure_catalogue(conn)
        metadata_catalogue.ensure_catalogue(conn)
        cur.execute("SELECT obj_description('reference.feed_caveats'::regclass, 'pg_class')")
        assert metadata_catalogue.CATALOGUE_VERSION in cur.fetchone()[0]
        cur.execute("""SELECT column_name FROM information_schema.columns
                        WHERE table_schema = 'observatory' AND table_name = 'supply_metadata'
                        ORDER BY ordinal_position""")
        assert [r[0] for r in cur.fetchall()] == ["supply_id", "feed", "period", "received_at", "document",
                                                  "mismatches"]
        cur.execute("""SELECT a.attname FROM pg_index i JOIN pg_attribute a
                         ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                        WHERE i.indrelid = 'observatory.supply_metadata'::regclass AND i.indisprimary""")
        assert [r[0] for r in cur.fetchall()] == ["supply_id"]
        cur.execute("""SELECT has_table_privilege('csp_engineer', 'observatory.supply_metadata', 'SELECT'),
                              has_table_privilege('csp_analyst', 'observatory.supply_metadata', 'SELECT'),
                              has_table_privilege('csp_engineer', 'reference.feed_caveats', 'SELECT'),
                              has_table_privilege('csp_analyst', 'reference.feed_caveats', 'SELECT'),
                              has_table_privilege('csp_analyst', 'reference.feed_caveats', 'INSERT'),
                              has_schema_privilege('csp_analyst', 'observatory', 'USAGE')""")
        assert cur.fetchone() == (True, False, True, True, False, False)
    conn.rollback()


def test_record_rolled_back_leaves_nothing(conn, feed):
    md = _metadata(feed)
    metadata_catalogue.record(conn, f"{feed.feed}/202609", md, [])
    assert len(_rows(conn, feed.feed)) == 1          # seen inside the transaction
    assert not metadata_catalogue.first_supply_needs_metadata(conn, feed.feed)
    conn.rollback()                                   # the load failed
    assert _rows(conn, feed.feed) == []
    assert metadata_catalogue.first_supply_needs_metadata(conn, feed.feed)
    assert metadata_catalogue.latest(conn, feed.feed) is None


def test_record_committed_reads_back_and_a_resend_replaces_it(conn, feed):
    md = _metadata(feed)
    assert metadata_catalogue.first_supply_needs_metadata(conn, feed.feed)
    mismatch = M.Mismatch(M.RECORD_COUNT, "The metadata says the offences file has 1,240 records; it has 1,239 "
                                          "rows of data.", file="offences")
    metadata_catalogue.record(conn, f"{feed.feed}/202609", md, [mismatch])
    conn.commit()
    [(supply_id, period, document, mismatches)] = _rows(conn, feed.feed)
    assert (supply_id, period) == (f"{feed.feed}/202609", "202609")
    back = M.SupplyMetadata.from_document(document)
    assert back == md
    assert [f.file for f in back.files] == [f.file for f in md.files]
    assert list(back.coding_systems["ethnicity"]) == list(md.coding_systems["ethnicity"])
    assert mismatches == [mismatch.to_dict()]
    assert metadata_catalogue.latest(conn, feed.feed) == md
    assert not metadata_catalogue.first_supply_needs_metadata(conn, feed.feed)

    # the same month again: one row, the new document; the metadata's own period does not move the supply
    again = dataclasses.replace(md, caveats=("Re-sent with the Northgate sector's coordinates restored.",),
                                period="202608")
    metadata_catalogue.record(conn, f"{feed.feed}/202609", again, [])
    conn.commit()
    [(supply_id, period, document, mismatches)] = _rows(conn, feed.feed)
    assert period == "202609" and document["caveats"] == list(again.caveats) and mismatches == []

    # the caveats view shows the latest supply's, and no supplier details
    metadata_catalogue.record(conn, f"{feed.feed}/202610", dataclasses.replace(md, period="202610"), [])
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM reference.feed_caveats WHERE feed = %s", (feed.feed,))
        row = dict(zip([d.name for d in cur.description], cur.fetchone()))
    assert row["supply_id"] == f"{feed.feed}/202610" and row["period"] == "202610"
    assert row["caveats"] == "\n".join(md.caveats)
    ethnicity = next(c for c in row["coding_systems"] if c["datafield"] == "ethnicity")
    assert [c["code"] for c in ethnicity["codes"]][:3] == ["IC1", "IC2", "IC3"]      # the partner's order
    assert row["geographic_method"] == md.geographic_method and row["agency"] == md.agency
    assert md.supplier.contact not in str(row) and md.supplier.name not in str(row)


def test_analyst_reads_caveats_but_not_the_catalogue(conn, feed, demo_config):
    md = _metadata(feed)
    metadata_catalogue.record(conn, f"{feed.feed}/202609", md, [])
    conn.commit()
    # the analyst's own login (a member of csp_analyst), as QGIS connects
    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as analyst, analyst.cursor() as cur:
        cur.execute("SELECT current_user, pg_has_role('csp_analyst', 'MEMBER')")
        assert cur.fetchone() == (demo_config["analyst_user"], True)
        cur.execute("SELECT caveats, geographic_method FROM reference.feed_caveats WHERE feed = %s", (feed.feed,))
        assert cur.fetchone() == ("\n".join(md.caveats), md.geographic_method)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT document FROM observatory.supply_metadata")
    analyst.close()


def _comments(conn: Any, schema: FeedSchema) -> dict[str, tuple[str, dict[str, str]]]:
    """Each table's comment and its columns' comments, as QGIS reads them (obj_description, col_description)."""
    out = {}
    with conn.cursor() as cur:
        for f in schema.files:
            name = f"{schema.db_schema}.{f.table}"
            cur.execute("SELECT obj_description(%s::regclass, 'pg_class')", (name,))
            table = cur.fetchone()[0]
            cur.execute("SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
                        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (name,))
            out[f.name] = (table, dict(cur.fetchall()))
    return out


def test_comments_carry_the_partners_caveats_and_explanations(conn, feed):
    feed_tables.ensure_feed_tables(conn, feed)
    conn.commit()
    before = _comments(conn, feed)
    md = _metadata(feed)
    assert metadata_catalogue.apply_comments(conn, feed, md) == [f"{feed.db_schema}.{f.table}" for f in feed.files]
    conn.commit()
    after = _comments(conn, feed)
    for f in feed.files:
        table_before, cols_before = before[f.name]
        table_after, cols_after = after[f.name]
        assert table_after.startswith(table_before + ". Partner caveats: " + md.caveats[0])   # schema's label kept
        assert "Partner's coordinates: Offence locations" in table_after
        assert md.supplier.contact not in table_after
        for column, comment in cols_before.items():
            explanation = md.file(f.name).explanations.get(column)
            if explanation:
                assert cols_after[column].startswith(f"{comment}. Partner: {explanation}"), column
            else:
                assert cols_after[column] == comment, column      # lineage, sanitised point...: untouched
    offenders = after["offenders"][1]
    assert offenders["ethnicity"] == ("Ethnicity (officer-defined IC code). Partner: Officer-defined ethnicity (IC "
                                      "code, see coding_systems). Coding: IC1 = White - North European; IC2 = White - "
                                      "South European; IC3 = Black; IC4 = Asian; IC5 = Chinese, Japanese or other "
                                      "South East Asian; IC6 = Arab or North African; IC9 = Unknown; IC0 = Not "
                                      "recorded")
    assert "offender_name" not in offenders and "home_easting" not in offenders    # dropped on sanitising

    # applied again: the same comments, nothing stacked
    metadata_catalogue.apply_comments(conn, feed, md)
    conn.commit()
    assert _comments(conn, feed) == after

    # a later supply without explanations or caveats: back to the schema's labels (and its period named)
    bare = dataclasses.replace(md, caveats=(), geographic_method=None, coding_systems={}, period="202610",
                               files=tuple(dataclasses.replace(fm, datafields=tuple((n, None) for n in fm.field_names))
                                           for fm in md.files))
    metadata_catalogue.apply_comments(conn, feed, bare)
    conn.commit()
    latest = _comments(conn, feed)
    for f in feed.files:
        assert latest[f.name][1] == before[f.name][1]
        assert latest[f.name][0] == before[f.name][0] + ". (Supply metadata of period 202610, supplied 2026-10-12)"


def test_comments_roll_back_with_the_load(conn, feed):
    feed_tables.ensure_feed_tables(conn, feed)
    conn.commit()
    before = _comments(conn, feed)
    metadata_catalogue.apply_comments(conn, feed, _metadata(feed))
    conn.rollback()
    assert _comments(conn, feed) == before


def test_comments_skip_tables_not_made_yet(conn, feed):
    assert metadata_catalogue.apply_comments(conn, feed, _metadata(feed)) == []
    conn.rollback()
