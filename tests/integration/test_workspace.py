"""The analyst's workspace on the real services (issue 10): the feature id every table has, the counts by ward and
month each load refreshes, the QGIS project read back by GDAL's ogrinfo with the analyst's login, and the
GeoPackage export opened again.

Most tests use the real schemas under their own feed ids and table names (``_isolated``), dropped afterwards; the
scripts' test loads a month of its own (``PERIOD_REAL``) into police recorded crime's real tables of the tests'
database and forgets it after.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg2
import pytest
from psycopg2 import sql
from scipy.spatial import cKDTree

from csp_observatory import (database, ddl, demo, feed_tables, loading, postcodes_postgis, record_keys, stamp,
                             ward_month, workspace_connection, workspace_export, workspace_layers, workspace_project)
from csp_observatory.schema import REPO_ROOT, SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.integration

PERIOD = "202609"
PERIOD_REAL = "209803"          # this module's own month in the real tables: no other test loads it
SERVICE = "csp_workspace_test"
OGRINFO = "/usr/bin/ogrinfo"


# --- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(settings) -> pd.DataFrame:
    """The shipped reference, loaded afresh (other tests may have put their own frames in it), as PostGIS has it."""
    demo.ensure_reference(settings, force=True)
    with closing(psycopg2.connect(settings.database_url)) as conn:
        return postcodes_postgis.read_reference(conn)


@pytest.fixture()
def conn(db_url) -> Iterator[Any]:
    c = psycopg2.connect(db_url)
    yield c
    c.rollback()
    c.close()


def _isolated(name: str, personalised: bool = False) -> FeedSchema:
    """A real schema with its own feed id and table names, so the test never touches real tables."""
    schema = load_schema(SCHEMA_DIR / f"{name}.yaml")
    tag = uuid.uuid4().hex[:8]
    return dataclasses.replace(schema, feed=f"test_{tag}", files=tuple(
        dataclasses.replace(f, table=f"w{tag}_{f.table}") for f in schema.files),
        dataset_type="personalised" if personalised else schema.dataset_type)


@pytest.fixture()
def isolated(conn) -> Iterator[Any]:
    """``isolated(name, personalised=False)``: an isolated copy of a schema with its tables made; all dropped after."""
    made: list[FeedSchema] = []

    def make(name: str, personalised: bool = False) -> FeedSchema:
        schema = _isolated(name, personalised)
        database.ensure_database(conn)
        feed_tables.ensure_feed_tables(conn, schema)
        conn.commit()
        made.append(schema)
        return schema

    yield make
    conn.rollback()
    with conn.cursor() as cur:
        for schema in made:
            for f in schema.files:
                for table in (f.table, ward_month.ward_month_table(f)):
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema.db_schema, table)))
            for t in ("supplies", "rejected_rows", "validation_results"):
                cur.execute(f"DELETE FROM observatory.{t} WHERE supply_id LIKE %s", (f"{schema.feed}/%",))
    conn.commit()


@pytest.fixture()
def analyst_env(demo_config, tmp_path) -> dict[str, str]:
    """An environment in which libpq (psycopg2, ogrinfo) logs in as the analyst through the service SERVICE, with the
    password in a pgpass file of its own: what an analyst's ~/.pg_service.conf and ~/.pgpass hold."""
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[{SERVICE}]\nhost={demo_config['analyst_host']}\nport={demo_config['analyst_port']}\n"
                        f"dbname={demo_config['analyst_database']}\nuser={demo_config['analyst_user']}\n"
                        f"sslmode={demo_config['analyst_sslmode']}\n")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{demo_config['analyst_host']}:{demo_config['analyst_port']}:{demo_config['analyst_database']}:"
                      f"{demo_config['analyst_user']}:{demo_config['analyst_password']}\n")
    pgpass.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != workspace_connection.DSN_ENV}
    # the CA the server's certificate is checked against, as an analyst's ~/.postgresql/root.crt would be
    env.update(PGSERVICEFILE=str(services), PGPASSFILE=str(pgpass), PGSSLROOTCERT=demo_config["analyst_sslrootcert"])
    return env


# --- synthetic sanitised supplies ---------------------------------------------------------------------------------

def _lonely_postcodes(reference: pd.DataFrame) -> pd.DataFrame:
    """Postcodes with no other within 20 m: a point 1 m from one of them has it, unambiguously, as its nearest."""
    xy = reference[["easting", "northing"]].to_numpy(float)
    dist, _ = cKDTree(xy).query(xy, k=2)
    return reference[dist[:, 1] > 20].reset_index(drop=True)


def _frames(schema: FeedSchema, reference: pd.DataFrame, period: str, n: int) -> dict[str, pd.DataFrame]:
    """Frames as sanitising hands them to the load: every tenth record at a place with no postcode (1 m from a
    lonely postcode), every tenth without a point; events over this month and the next; categories cycled."""
    live = reference[(reference.households >= 4) & ~reference.terminated].reset_index(drop=True)
    lonely = _lonely_postcodes(reference)
    start = pd.Timestamp(f"{period[:4]}-{period[4:]}-01")
    out: dict[str, pd.DataFrame] = {}
    for f in schema.files:
        cols = [c for c in ddl.table_columns(schema, f) if c.name not in ddl.LOADER_COLUMNS]
        category = ward_month.category_field(schema, f)
        codes = sorted(category.allowed_codes) if category and category.allowed_codes else ["a", "b", "c"]
        rows = []
        for i in range(n):
            kind = "none" if i % 10 == 0 else "place" if i % 10 == 1 else "postcode"
            pc = live.iloc[(i * 37) % len(live)]
            place = lonely.iloc[(i * 11) % len(lonely)]
            x = None if kind == "none" else float(place.easting + 1) if kind == "place" else float(pc.easting)
            y = None if kind == "none" else float(place.northing) if kind == "place" else float(pc.northing)
            postcode = pc.postcode if kind == "postcode" else None
            row: dict[str, Any] = {}
            for c in cols:
                name, t = c.name, c.sql_type
                if name in f.key:
                    row[name] = f"{name[:3].upper()}{period}{i:05d}"
                elif category is not None and name == category.name:
                    row[name] = codes[i % len(codes)]
                elif name == f.event_date:
                    row[name] = start + pd.Timedelta(days=i % 45)
                elif name in ("sanitised_easting", "geo_easting"):
                    row[name] = x
                elif name in ("sanitised_northing", "geo_northing"):
                    row[name] = y
                elif name in ("sanitised_postcode", "geo_postcode") or name in f.location_columns and \
                        f.field(name).role == "postcode":
                    row[name] = postcode
                elif name == "sanitise_rule":
                    row[name] = {"none": "not_geocoded", "place": "non_addressable", "postcode": "own_postcode"}[kind]
                elif name == "source_row":
                    row[name] = i + 1
                elif name == ddl.CONTENT_KEY_COLUMN:
                    row[name] = None
                else:
                    row[name] = {"text": "High Street" if name in f.location_columns else f"v{i % 3}",
                                 "date": start, "integer": i % 50, "double precision": i / 7, "boolean": i % 2 == 0,
                                 "real": 1.5}[t]
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[c.name for c in cols])
        if f.content_key:
            fields = [c for c in f.field_names if c in frame.columns]
            frame[ddl.CONTENT_KEY_COLUMN] = record_keys.content_keys(frame, fields)
        out[f.name] = frame
    return out


def _load(conn, schema: FeedSchema, period: str, frames: dict[str, pd.DataFrame]) -> loading.LoadResult:
    """Load a supply, then recount its feed's counts as the refresh DAG its asset event starts does."""
    result = loading.load_supply(conn, schema, f"{schema.feed}/{period}", period, frames,
                                 lineage={name: uuid.uuid4().hex * 2 for name in frames})
    ward_month.refresh_ward_month(conn, schema)
    conn.commit()
    return result


def _expected_counts(schema: FeedSchema, f, supplies: list[tuple[str, pd.DataFrame]], reference: pd.DataFrame
                     ) -> Counter:
    """The counts by (ward, district, month, category), worked out here from the frames: the sanitised postcode's
    ward, or the nearest postcode's for a point without one; the event's month, else the period's."""
    by_postcode = reference.set_index("postcode")
    tree = cKDTree(reference[["easting", "northing"]].to_numpy(float))
    category = ward_month.category_field(schema, f)
    x_col, y_col = ddl.point_columns(schema)
    counts: Counter = Counter()
    for period, frame in supplies:
        for _, r in frame.iterrows():
            if pd.notna(r["sanitised_postcode"]):
                ward = by_postcode.loc[r["sanitised_postcode"], ["ward_code", "district_code"]].tolist()
            elif pd.notna(r[x_col]):
                ward = reference.iloc[tree.query([r[x_col], r[y_col]])[1]][["ward_code", "district_code"]].tolist()
            else:
                ward = [None, None]
            event = r[f.event_date] if f.event_date else None
            month = (pd.Timestamp(event).replace(day=1) if event is not None and pd.notna(event)
                     else pd.Timestamp(f"{period[:4]}-{period[4:]}-01")).date()
            counts[(*[None if pd.isna(w) else w for w in ward], month,
                    None if category is None else str(r[category.name]))] += 1
    return counts


def _counts(conn, schema: FeedSchema, f) -> Counter:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ward_code, district_code, month, category, records, fid FROM {} ORDER BY fid")
                    .format(sql.Identifier(schema.db_schema, ward_month.ward_month_table(f))))
        rows = cur.fetchall()
    conn.rollback()
    assert [r[5] for r in rows] == list(range(1, len(rows) + 1))       # fid numbers the rows
    return Counter({r[:4]: r[4] for r in rows})


def _count(conn, db_schema: str, table: str) -> int:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(db_schema, table)))
        n = cur.fetchone()[0]
    conn.rollback()
    return n


# --- the feature id -----------------------------------------------------------------------------------------------

def _keys(conn, db_schema: str, table: str) -> tuple[list[str], list[str]]:
    with conn.cursor() as cur:
        keys = feed_tables.primary_key(cur, db_schema, table), feed_tables.record_key(cur, db_schema, table)
    conn.rollback()
    return keys


def test_every_table_has_fid_as_its_primary_key_and_its_records_key_unique(conn, isolated, reference, db_url):
    feed, personal = isolated("police_recorded_crime"), isolated("police_recorded_crime", personalised=True)
    for schema in (feed, personal):
        for f in schema.files:
            # fid alone is the key QGIS and GDAL take; the records' key is each supply's partition's (test_loading)
            assert _keys(conn, schema.db_schema, f.table)[0] == ["fid"]
            qualified = f"{schema.db_schema}.{f.table}"
            with conn.cursor() as cur:
                cur.execute("SELECT data_type, is_nullable, column_default FROM information_schema.columns "
                            "WHERE table_schema = %s AND table_name = %s AND column_name = 'fid'",
                            (schema.db_schema, f.table))
                data_type, nullable, default = cur.fetchone()
                # PostgreSQL 15 has no identity on a partitioned table: fid comes from the table's own sequence
                assert (data_type, nullable) == ("bigint", "NO")
                assert default.startswith("nextval(") and f"{f.table}_fid_seq" in default, default
                cur.execute("SELECT pg_get_partkeydef(%s::regclass)", (qualified,))
                assert cur.fetchone()[0] == "RANGE (fid)"
            conn.rollback()
    # A second run is a no-op that waits for nobody: an analyst reading the table does not hold it up.
    with closing(psycopg2.connect(db_url)) as reader:
        with reader.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(feed.db_schema, feed.files[0].table)))
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '2s'")
        assert feed_tables.ensure_feed_tables(conn, feed) == []
        conn.commit()
        reader.rollback()
    # A record repeated within a supply is still refused, and nothing of the supply is loaded.
    frames = _frames(feed, reference, PERIOD, 6)
    frames["offenders"].loc[3, ["crime_reference", "offender_reference"]] = \
        frames["offenders"].loc[2, ["crime_reference", "offender_reference"]].to_list()
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _load(conn, feed, PERIOD, frames)
    assert _count(conn, feed.db_schema, feed.files[0].table) == 0


def test_an_older_table_is_migrated_in_place(conn, isolated, reference):
    """Tables made before fid (the record's key was the primary key; victims still keyed by their reference) take
    fid and the key their schema now declares, every row kept, and get their counts at once."""
    feed = isolated("police_recorded_crime")
    offences, victims = feed.file("offences"), feed.file("victims")
    old_victims = dataclasses.replace(victims, key=("crime_reference", "victim_reference"), content_key=False)
    pc = reference[(reference.households >= 4) & ~reference.terminated].iloc[0]
    with conn.cursor() as cur:
        for f in (offences, old_victims):
            table = sql.Identifier(feed.db_schema, f.table)
            cur.execute(sql.SQL("DROP TABLE {}").format(table))
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(feed.db_schema, ward_month.ward_month_table(f))))
            cols = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type))
                    for c in ddl.table_columns(feed, f)]
            cur.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(     # the layout before fid
                table, sql.SQL(", ").join(cols), sql.SQL(", ").join(map(sql.Identifier, ["supply_id", *f.key]))))
        cur.execute(sql.SQL("INSERT INTO {} (crime_reference, ho_offence_code, committed_from_date, sanitised_postcode, "
                            "supply_id, period, source_sha256, loaded_at) SELECT 'CR' || i, '28E', date '2026-08-03', "
                            "%s, 'x/202608', '202608', 's', now() FROM generate_series(1, 3) i").format(
            sql.Identifier(feed.db_schema, offences.table)), (pc.postcode,))
        cur.execute(sql.SQL("INSERT INTO {} (supply_id, period, source_sha256, crime_reference, victim_reference, "
                            "gender, loaded_at) VALUES ('x/202608', '202608', 's', 'CR1', 'V1', 'F', now()), "
                            "('x/202608', '202608', 's', 'CR1', 'V2', 'F', now())").format(
            sql.Identifier(feed.db_schema, victims.table)))
    conn.commit()
    feed_tables.ensure_feed_tables(conn, feed)
    conn.commit()
    assert _keys(conn, feed.db_schema, offences.table) == (["fid"], ["supply_id", "crime_reference"])
    assert _keys(conn, feed.db_schema, victims.table) == (["fid"], ["supply_id", "row_key"])
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT fid FROM {} ORDER BY fid").format(sql.Identifier(feed.db_schema, offences.table)))
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
        cur.execute(sql.SQL("SELECT count(DISTINCT row_key), count(fid) FROM {} WHERE row_key LIKE 'migrated-%%'")
                    .format(sql.Identifier(feed.db_schema, victims.table)))
        assert cur.fetchone() == (2, 2)
        cur.execute("SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = %s::regclass AND attname IN "
                    "('victim_reference', 'row_key')", (f"{feed.db_schema}.{victims.table}",))
        assert dict(cur.fetchall()) == {"victim_reference": False, "row_key": True}
        cur.execute("SELECT oid FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY oid",
                    (f"{feed.db_schema}.{offences.table}",))
        constraints = cur.fetchall()
    conn.rollback()
    ward = reference.set_index("postcode").loc[pc.postcode]
    assert _counts(conn, feed, offences) == Counter({(ward.ward_code, ward.district_code,
                                                      pd.Timestamp("2026-08-01").date(), "28E"): 3})
    # Run again: nothing to do, nothing changed.
    assert feed_tables.ensure_feed_tables(conn, feed) == []
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT oid FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY oid",
                    (f"{feed.db_schema}.{offences.table}",))
        assert cur.fetchall() == constraints
    conn.rollback()
    # and the migrated victims table loads a guidance-exact supply (no victim_reference)
    frames = _frames(feed, reference, PERIOD, 10)
    assert "victim_reference" in frames["victims"]
    frames["victims"]["victim_reference"] = None
    frames["victims"]["row_key"] = record_keys.content_keys(frames["victims"], [
        c for c in victims.field_names if c in frames["victims"]])
    assert sum(_load(conn, feed, PERIOD, frames).rows.values()) == 30


# --- the counts by ward and month ---------------------------------------------------------------------------------

def test_counts_by_ward_and_month_follow_every_load(conn, isolated, reference, demo_config):
    feed = isolated("police_recorded_crime")
    personal = isolated("police_recorded_crime", personalised=True)
    first, second = _frames(feed, reference, PERIOD, 40), _frames(feed, reference, "202610", 45)
    _load(conn, feed, PERIOD, first)
    for f in feed.files:
        assert _counts(conn, feed, f) == _expected_counts(feed, f, [(PERIOD, first[f.name])], reference), f.name
    _load(conn, feed, "202610", second)
    offences = feed.file("offences")
    both = _expected_counts(feed, offences, [(PERIOD, first["offences"]), ("202610", second["offences"])], reference)
    assert _counts(conn, feed, offences) == both
    assert any(k[0] is None for k in both)                                   # records with no point
    assert {k[2] for k in both} == {pd.Timestamp(m).date() for m in ("2026-09-01", "2026-10-01", "2026-11-01")}
    # A re-run of the first month replaces its records, and the counts with them.
    again = _frames(feed, reference, PERIOD, 20)
    _load(conn, feed, PERIOD, again)
    assert _counts(conn, feed, offences) == _expected_counts(
        feed, offences, [(PERIOD, again["offences"]), ("202610", second["offences"])], reference)
    # A load that fails leaves the counts as they were.
    before = _counts(conn, feed, offences)
    bad = _frames(feed, reference, "202611", 10)
    bad["victims"]["age"] = bad["victims"]["age"].astype(object)
    bad["victims"].loc[5, "age"] = "forty"
    with pytest.raises(ValueError):
        _load(conn, feed, "202611", bad)
    assert _counts(conn, feed, offences) == before
    # The analyst reads the counts; a personal feed has none, and the analyst cannot read its tables.
    _load(conn, personal, PERIOD, _frames(personal, reference, PERIOD, 5))
    with closing(psycopg2.connect(demo_config["analyst_url"])) as analyst, analyst.cursor() as cur:
        cur.execute(sql.SQL("SELECT sum(records) FROM {}").format(
            sql.Identifier(feed.db_schema, ward_month.ward_month_table(offences))))
        assert cur.fetchone()[0] == 65                                   # 20 re-sent + 45
        for f in personal.files:
            cur.execute("SELECT to_regclass(%s)", (f"depersonalised.{ward_month.ward_month_table(f)}",))
            assert cur.fetchone() == (None,)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("personal", f.table)))
            analyst.rollback()
    with conn.cursor() as cur:
        for f in personal.files:
            cur.execute("SELECT to_regclass(%s)", (f"personal.{ward_month.ward_month_table(f)}",))
            assert cur.fetchone() == (None,)              # never counts over personal tables
    conn.rollback()


# --- the QGIS project, read back by ogrinfo -----------------------------------------------------------------------

def _datasources(text: str) -> list[dict[str, str]]:
    """Each layer's data source in a project: its connection parameters, table and key."""
    root = ET.fromstring(text.split("\n", 1)[1])
    out = []
    for m in root.findall("projectlayers/maplayer"):
        source = m.find("datasource").text
        params = {k: v.strip("'") for k, v in re.findall(r"(\w+)=('(?:[^'\\]|\\.)*'|[^\s\"]+)", source)}
        schema_name, table = re.search(r'table="([^"]+)"\."([^"]+)"', source).groups()
        out.append({**params, "schema": schema_name, "table_name": table, "geometry": m.get("geometry"),
                    "name": m.find("layername").text})
    return out


def _ogrinfo(env: dict[str, str], connection: str, layer: str) -> subprocess.CompletedProcess:
    return subprocess.run([OGRINFO, "-ro", "-so", f"PG:{connection}", layer], env=env, capture_output=True,
                          text=True, timeout=120)


def _read_back(text: str, env: dict[str, str], conn) -> list[str]:
    """ogrinfo reads each layer the project names, with the connection the project gives (no password: libpq
    takes it from the pgpass file); checks the feature count, the FID column and the CRS. Returns the tables."""
    tables = []
    for ds in _datasources(text):
        connection = " ".join(f"{k}={ds[k]}" for k in ("service", "dbname", "host", "port", "user", "sslmode")
                              if k in ds)
        assert ds["key"] == "fid"
        done = _ogrinfo(env, connection, f"{ds['schema']}.{ds['table_name']}")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert f"Feature Count: {_count(conn, ds['schema'], ds['table_name'])}\n" in out, out
        assert "FID Column = fid\n" in out, out
        assert "Multi-column primary key" not in out and "Warning" not in out, out
        if ds["geometry"] == "Point":
            assert "Geometry: Point" in out and 'ID["EPSG",27700]' in out and ds["srid"] == "27700", out
        tables.append(f"{ds['schema']}.{ds['table_name']}")
    return tables


def _project(conn, isolated, reference, analyst_env,
             out: Path) -> tuple[list[FeedSchema], list[workspace_layers.Layer]]:
    """Police recorded crime and council ASB (and a personal feed) loaded under their own names, and the project
    over them written to ``out`` by a command that reads as the analyst, through the project's own service."""
    prc, asb = isolated("police_recorded_crime"), isolated("council_asb")
    stamp.ensure_dq(conn)          # the quality stamp's tables, which the project lists after the feeds' layers
    conn.commit()
    personal = isolated("police_recorded_crime", personalised=True)
    for schema, n in ((prc, 25), (asb, 15), (personal, 5)):
        _load(conn, schema, PERIOD, _frames(schema, reference, PERIOD, n))
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("PG") or k == workspace_connection.DSN_ENV]:
            mp.delenv(k)
        mp.setenv("PGSERVICEFILE", analyst_env["PGSERVICEFILE"])
        mp.setenv("PGPASSFILE", analyst_env["PGPASSFILE"])
        mp.setenv("PGSSLROOTCERT", analyst_env["PGSSLROOTCERT"])
        layers = workspace_project.write_project(out, "Test CSP", workspace_connection.Connection(service=SERVICE),
                                                 schemas=[prc, asb, personal])
    return [prc, asb, personal], layers


def test_the_qgis_project_reads_back_with_ogrinfo_as_the_analyst(conn, isolated, reference, demo_config,
                                                                 analyst_env, tmp_path):
    out = tmp_path / "csp.qgs"
    (prc, asb, personal), layers = _project(conn, isolated, reference, analyst_env, out)
    text = out.read_text(encoding="utf-8")
    assert demo_config["analyst_password"] not in text and not re.search(r"password|authcfg", text, re.I)
    tables = _read_back(text, analyst_env, conn)
    expected = [f"depersonalised.{t}" for s in (prc, asb) for f in s.files
                for t in (f.table, ward_month.ward_month_table(f))] + ["dq.supplies"]      # the quality stamp
    assert sorted(tables) == sorted(expected) and len(layers) == len(expected)
    assert not any(t.startswith("personal.") for t in tables)
    # The same login cannot open a personal table, by the project's connection or any other.
    denied = _ogrinfo(analyst_env, f"service={SERVICE}", f"personal.{personal.files[0].table}")
    said = denied.stdout + denied.stderr
    assert ("permission denied" in said or "FAILURE" in said) and not re.search(r"Feature Count: [1-9]", said), said
    # Styles from the data: council ASB by its incident types, offences by police.uk category.
    root = ET.fromstring(text.split("\n", 1)[1])
    renderers = {m.find("layername").text: m.find("renderer-v2") for m in root.findall("projectlayers/maplayer")}
    assert renderers[asb.files[0].title].get("attr") == "incident_type"
    assert "Burglary" in {c.get("value") for c in renderers[prc.file("offences").title].iter("category")}


# --- the scripts, on a real feed's tables -------------------------------------------------------------------------

def _script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / "scripts" / name), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_scripts_write_a_project_and_export_a_period_of_a_real_feed(conn, reference, demo_config, analyst_env,
                                                                       forget_supply, tmp_path):
    import geopandas as gpd
    import pyogrio

    schema = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    database.ensure_database(conn)
    feed_tables.ensure_feed_tables(conn, schema)            # the real tables of the tests' database, migrated if older
    stamp.ensure_dq(conn)                           # the quality stamp, which the project lists too
    conn.commit()
    forget_supply(conn, schema, PERIOD_REAL)
    frames = _frames(schema, reference, PERIOD_REAL, 30)
    try:
        _load(conn, schema, PERIOD_REAL, frames)
        demo_yaml = str(REPO_ROOT / ".run" / "test" / "demo.yaml")
        # the project, connecting with the analyst's host, port, database and user (password from pgpass)
        qgs = tmp_path / "csp.qgs"
        done = _script("qgis_project", "--out", str(qgs), "--title", "Test CSP", "--feeds", schema.feed,
                       "--demo-config", demo_yaml, env=analyst_env)
        assert done.returncode == 0, done.stderr
        text = qgs.read_text(encoding="utf-8")
        assert demo_config["analyst_password"] not in text
        assert f"dbname='{demo_config['analyst_database']}'" in text and f"user='{demo_config['analyst_user']}'" in text
        # QGIS checks the server's certificate: the project asks for verify-full, as set-up's PostGIS requires TLS
        assert f"sslmode={demo_config['analyst_sslmode']}" in text and "sslmode=verify-full" in text
        assert sorted(_read_back(text, analyst_env, conn)) == sorted(
            [f"depersonalised.{t}" for f in schema.files for t in (f.table, ward_month.ward_month_table(f))]
            + ["dq.supplies"])                                          # the quality stamp, after the feed's layers

        # the export, opened again with geopandas and ogrinfo
        gpkg = tmp_path / "prc.gpkg"
        done = _script("export_gpkg", "--feed", schema.feed, "--period", PERIOD_REAL, "--out", str(gpkg),
                       "--demo-config", demo_yaml, env=analyst_env)
        assert done.returncode == 0, done.stderr
        layers = {name for name, _ in pyogrio.list_layers(gpkg)}
        assert layers == {f.table for f in schema.files}
        for f in schema.files:
            gdf = gpd.read_file(gpkg, layer=f.table)
            assert len(gdf) == len(frames[f.name]) and gdf.crs.to_epsg() == 27700
            dropped = {d.name for d in f.datafields if d.dropped_on_sanitising}
            assert not dropped & set(gdf.columns), f"{f.table}: {sorted(dropped & set(gdf.columns))}"
            assert {"geo_easting", "geo_northing", "geo_postcode"}.isdisjoint(gdf.columns)
            assert set(gdf.columns) - {"geometry"} == set(workspace_export.export_columns(
                schema, f, {c.name for c in ddl.table_columns(schema, f)}))
            assert (gdf["supply_id"] == f"{schema.feed}/{PERIOD_REAL}").all()
            with_point = frames[f.name]["sanitised_easting"].notna()
            assert gdf.geometry.notna().sum() == with_point.sum()
            assert sorted(gdf.geometry.dropna().x) == sorted(frames[f.name].loc[with_point, "sanitised_easting"])
            info = subprocess.run([OGRINFO, "-ro", "-so", str(gpkg), f.table], capture_output=True, text=True,
                                  timeout=60)
            assert f"Feature Count: {len(frames[f.name])}" in info.stdout and 'ID["EPSG",27700]' in info.stdout
            assert not info.stderr.strip(), info.stderr          # Debian's GDAL reads it without a warning

        # refused: a personalised feed, an existing file, a period with nothing loaded
        for args in (["--feed", "environment_agency_crime", "--period", PERIOD_REAL, "--out", str(tmp_path / "p.gpkg")],
                     ["--feed", schema.feed, "--period", PERIOD_REAL, "--out", str(gpkg)],
                     ["--feed", schema.feed, "--period", "209812", "--out", str(tmp_path / "e.gpkg")]):
            done = _script("export_gpkg", *args, "--demo-config", demo_yaml, env=analyst_env)
            assert done.returncode == 2 and done.stderr.startswith("refused: "), done.stderr
        assert not (tmp_path / "p.gpkg").exists() and not (tmp_path / "e.gpkg").exists()
        assert "personalised" in _script("export_gpkg", "--feed", "environment_agency_crime", "--period", "209812",
                                         "--out", str(tmp_path / "p.gpkg"), env=analyst_env).stderr
    finally:
        forget_supply(conn, schema, PERIOD_REAL)
        ward_month.refresh_ward_month(conn, schema)       # the counts without this module's month
        conn.commit()


QGIS_PYTHON = "/usr/bin/python3"          # Debian's python3-qgis is for the system interpreter
QGIS_CHECK = """
import json, os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import QgsApplication, QgsProject
app = QgsApplication([], False)
app.initQgis()
project = QgsProject.instance()
read = project.read(sys.argv[1])
layers = {}
for layer in project.mapLayers().values():
    provider = layer.dataProvider()
    renderer = layer.renderer()
    layers[layer.name()] = {
        "valid": layer.isValid(), "features": layer.featureCount(), "crs": layer.crs().authid(),
        "key": [layer.fields()[i].name() for i in provider.pkAttributeIndexes()],
        "ids": sorted(f.id() for f in layer.getFeatures()), "fids": sorted(f["fid"] for f in layer.getFeatures()),
        "renderer": renderer.type() if renderer else None,
        "categories": len(renderer.categories()) if renderer and renderer.type() == "categorizedSymbol" else 0}
print(json.dumps({"read": read, "crs": project.crs().authid(), "layers": layers}))
app.exitQgis()
"""


def _qgis_available() -> bool:
    return subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _qgis_available(), reason="QGIS's Python bindings (Debian: python3-qgis qgis-providers) "
                                                  "are not installed; ogrinfo reads the project in the test above")
def test_qgis_itself_opens_the_project_with_fid_as_every_layers_feature_id(conn, isolated, reference, analyst_env,
                                                                          tmp_path):
    import json

    out = tmp_path / "csp.qgs"
    _, layers = _project(conn, isolated, reference, analyst_env, out)
    done = subprocess.run([QGIS_PYTHON, "-c", QGIS_CHECK, str(out)], env=analyst_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["read"] and seen["crs"] == "EPSG:27700"
    assert sorted(seen["layers"]) == sorted(layer.name for layer in layers)
    for layer in layers:
        got = seen["layers"][layer.name]
        n = _count(conn, layer.db_schema, layer.table)
        assert got["valid"] and got["features"] == n and got["key"] == ["fid"], (layer.name, got)
        assert got["ids"] == got["fids"] and len(got["ids"]) == n          # QGIS's feature ids are the fids
        if layer.geometry:
            assert got["crs"] == "EPSG:27700"
            assert got["renderer"] == ("categorizedSymbol" if layer.style else "singleSymbol"), (layer.name, got)
            if layer.style:
                assert got["categories"] == len(layer.style.categories) + 1      # and "other"
