"""The quality stamp in PostGIS (issue 10, guidance Box 3), on the real services: a partner's SFTP drop through the
feed's DAG, then the dq schema, the graded views, the tables' comments and the DAG docs read back, as the loader and
as the analyst's own login.

Each test uses its own months, apart from the demo's and the other tests'.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from contextlib import closing
from datetime import date, datetime
from types import SimpleNamespace

import psycopg2
import pytest
from psycopg2 import errors, sql

from csp_observatory import (demo, demo_data, graded_views, metadata_docs, postcodes_sources, stamp, stamp_data,
                             stamp_text)
from csp_observatory.grading import GRADES, quality_grade, worst
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}
AMBER, RED = "202301", "202302"
DQ_TABLES = ("supplies", "qualities", "file_qualities", "checks", "set_aside_rows")


@pytest.fixture(scope="module")
def schema():
    return schema_for(FEED)


def _forget_dq(db, period: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('dq.supplies') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("DELETE FROM dq.supplies WHERE supply_id = %s", (f"{FEED}/{period}",))
    db.commit()


@pytest.fixture()
def months(db, clean_partner_folders, reference_loaded, forget_supply, schema):
    """This module's months, forgotten (with their stamps) before and after."""
    db.autocommit = True  # like an analyst's session: reads must not hold locks across the DAG's run
    for period in (AMBER, RED):
        forget_supply(db, schema, period)
        _forget_dq(db, period)
    yield
    for period in (AMBER, RED):
        forget_supply(db, schema, period)
        _forget_dq(db, period)
    stamp.stamp_comments(db, schema)       # the comments name the feed's latest loaded supply still stamped
    db.commit()


def _supply(period: str, n: int = 60):
    reference = postcodes_sources.shipped_reference()
    return demo_data.make_police_recorded_crime(period, reference[~reference["terminated"]], n_offences=n)


def _report(settings, period: str) -> dict:
    path = demo.latest_report(settings, FEED, period)
    assert path is not None, "no report was written"
    return json.loads(path.read_text())


def _rows(cur, query: str, *args) -> list[dict]:
    cur.execute(query, args)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _dq(db, period: str) -> dict[str, list[dict]]:
    with db.cursor() as cur:
        out = {t: _rows(cur, f"SELECT * FROM dq.{t} WHERE supply_id = %s", f"{FEED}/{period}") for t in DQ_TABLES}
    db.rollback()
    return out


def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(float(a) - float(b)) < 1e-9)


def _assert_stamp_is_the_report(dq: dict[str, list[dict]], report: dict) -> None:
    """Every dq figure of a supply equals its report's: scores, grades, checks, rows set aside, level and reasons."""
    [supply] = dq["supplies"]
    assert supply["status"] == report["supply"]["status"]
    assert supply["level"] == report["outcome"]["level"] and supply["level_text"] == report["outcome"]["text"]
    assert supply["reasons"] == report["outcome"]["reasons"]
    s = report["summary"]
    assert (supply["rows_loaded"], supply["rows_set_aside"], supply["rows_loaded_with_problems"],
            supply["rows_withheld"], supply["files_refused"], supply["rows_in_files"]) == (
        s["rows_loaded"], s["rows_need_attention"], s["rows_loaded_with_problems"], s["rows_withheld"],
        s["files_refused"], s["rows_in_files"])

    # Per file and quality: the report's score and counts, and the grade grading.py gives them.
    files = {(r["file_name"], r["quality"]): r for r in dq["file_qualities"]}
    expected = {(f, q): x for f, v in report["validation"].items() for q, x in v["qualities"].items()}
    assert set(files) == set(expected)
    for key, x in expected.items():
        row = files[key]
        assert _close(row["score"], x["score"]) and (row["passed"], row["failed"]) == (x["passed"], x["failed"]), key
        assert row["grade"] == x.get("grade", quality_grade(x["score"], x["failed"])), key
    # Per quality over the supply: the worst file's grade, the lowest score, the checks summed.
    by_quality = {r["quality"]: r for r in dq["qualities"]}
    assert set(by_quality) == {"completeness", "accuracy", "precision", "currency"}
    for q, row in by_quality.items():
        mine = [x for (f, qq), x in expected.items() if qq == q]
        grades = [x.get("grade", quality_grade(x["score"], x["failed"])) for x in mine]
        assert row["grade"] == worst(grades) == supply[q] and row["grade"] in GRADES
        scores = [x["score"] for x in mine if x["score"] is not None]
        assert _close(row["score"], min(scores) if scores else None)
        assert (row["passed"], row["failed"]) == (sum(x["passed"] for x in mine), sum(x["failed"] for x in mine))
        assert len(row["caveats"]) == row["failed"]
        if "qualities" in report:       # the report's own figures for the supply
            given = report["qualities"][q]
            assert (row["grade"], row["passed"], row["failed"]) == (given["grade"], given["passed"], given["failed"])
            assert _close(row["score"], given["score"])

    # Per check, as listed.
    checks = sorted((r["file_name"], r["quality"], r["expectation"], r["column_name"] or "", r["description"] or "",
                     r["success"], r["unexpected_count"]) for r in dq["checks"])
    listed = sorted((f, q, e["expectation"], e["column"] or "", e["describe"] or "", e["success"],
                     e["unexpected_count"]) for (f, q), x in expected.items() for e in x["expectations"])
    assert checks == listed

    # Rows set aside (and loaded with a problem): file, row, stage and reason, as the report has them.
    aside = sorted((r["file_name"], r["source_row"], r["stage"], r["reason"], r["loaded"])
                   for r in dq["set_aside_rows"])
    assert aside == sorted([(r["file"], r["row"], r["stage"], r["reason"], False) for r in report["rejected_rows"]]
                           + [(r["file"], r["row"], r["stage"], r["reason"], True) for r in report["flagged_rows"]])


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_a_loaded_supply_is_stamped_as_its_report_says_and_a_rerun_replaces_the_stamp(settings, db, schema, months,
                                                                                       demo_config):
    made = _supply(AMBER)
    demo.drop_demo_supply(settings, schema, AMBER, files=made.files)
    demo.run_feed_dag(FEED)
    report = _report(settings, AMBER)
    # Loaded with its problems: rows set aside, checks of accuracy or completeness failed (the demo's bad rows; a
    # month in the past also arrives late, which currency counts).
    assert report["supply"]["status"] == "loaded" and report["outcome"]["level"] == "amber"
    failed = [(f, q) for f, v in report["validation"].items() for q, x in v["qualities"].items() if x["failed"]]
    assert {q for _, q in failed} & {"accuracy", "completeness"}, failed

    dq = _dq(db, AMBER)
    _assert_stamp_is_the_report(dq, report)
    caveats = [c for r in dq["qualities"] for c in r["caveats"]]
    assert caveats and all(" failed" in c for c in caveats)
    assert any(r["fields"] for r in dq["set_aside_rows"]), "the field names a reason mentions are kept"
    [supply] = dq["supplies"]
    assert supply["partner"] == schema.partner.id and supply["collected_at"] is not None
    if (report.get("arrival") or {}).get("arrived_at"):
        assert supply["arrived_at"] == datetime.fromisoformat(report["arrival"]["arrived_at"])
        assert supply["days_late"] == report["arrival"]["days_late"]

    # Nothing from the rows themselves: no cell of a row set aside appears anywhere in dq. The observatory's own
    # timestamps (collected, arrived, stamped) are left out of the text searched: a row's time of day such as
    # "21:54" is otherwise found in them whenever the test runs in that minute.
    text = json.dumps(dq, default=lambda o: "<timestamp>" if isinstance(o, (date, datetime)) else str(o))
    known = {d.name for f in schema.files for d in f.datafields} | set(schema.source_path.read_text().split())
    for name, csv_text in made.files.items():
        cells = _cells(csv_text)
        for r in (r for r in dq["set_aside_rows"] if r["file_name"] == name and r["source_row"]):
            values = {v.strip() for v in cells[r["source_row"]] if len(v.strip()) >= 4} - known
            assert not [v for v in values if v in text], (name, r["source_row"])
    for bad in ("999Z", "HX1 1A", f"31/02/{AMBER[:4]}"):       # the demo's bad values
        assert bad not in text

    # The report itself is kept with the supply, for the engineers.
    with db.cursor() as cur:
        cur.execute("SELECT status, report FROM observatory.supplies WHERE supply_id = %s", (f"{FEED}/{AMBER}",))
        status, stored = cur.fetchone()
        assert status == "loaded" and stored == report
        # The tables' comments end with the latest loaded supply's stamp (assuming no later month of the feed).
        cur.execute("SELECT max(period) FROM dq.supplies WHERE feed = %s AND status = 'loaded'", (FEED,))
        latest = cur.fetchone()[0]
        for table in TABLES.values():
            cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f"depersonalised.{table}",))
            comment = cur.fetchone()[0]
            assert comment.count(stamp_text.COMMENT_MARK) == 1 and comment.startswith(schema.title)
            if latest == AMBER:
                assert f"latest supply {AMBER} is amber" in comment and stamp_text.grades_text(supply) in comment
        # Each record in the graded view carries its supply's level and grades; fid is the key and comes first.
        for table in TABLES.values():
            cur.execute(sql.SQL("SELECT count(*), count(DISTINCT fid), min(dq_level), max(dq_level), "
                                "min(dq_accuracy), max(dq_accuracy) FROM {} WHERE supply_id = %s").format(
                sql.Identifier("depersonalised", graded_views.view_name(table))), (f"{FEED}/{AMBER}",))
            n, fids, lo, hi, acc_lo, acc_hi = cur.fetchone()
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(
                sql.Identifier("depersonalised", table)), (f"{FEED}/{AMBER}",))
            assert n == fids == cur.fetchone()[0] > 0
            assert lo == hi == "amber" and acc_lo == acc_hi == supply["accuracy"]
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum = 1",
                        (f"depersonalised.{graded_views.view_name(table)}",))
            assert cur.fetchone()[0] == "fid"
            cur.execute("SELECT type, srid FROM geometry_columns WHERE f_table_schema = 'depersonalised' "
                        "AND f_table_name = %s", (graded_views.view_name(table),))
            assert cur.fetchone() == ("POINT", 27700)
    db.rollback()
    # The Airflow UI: the feed's DAG docs show the latest supply's level and grades.
    doc = metadata_docs.dag_doc(FEED, settings.reports_dir)
    assert "Latest quality stamp" in doc and "**Outcome: AMBER**" in doc
    assert f"| accuracy | {supply['accuracy']} |" in doc

    # A corrected re-send (one offence fewer) is loaded again: its stamp replaces the first, never adds to it.
    lines = made.files["offences"].splitlines(keepends=True)
    resent = dict(made.files, offences="".join(lines[:-1]))
    demo.drop_demo_supply(settings, schema, AMBER, files=resent)
    demo.run_feed_dag(FEED)
    again = _report(settings, AMBER)
    assert again["report"]["generated_at"] >= report["report"]["generated_at"]
    assert again["summary"]["rows_in_files"] == report["summary"]["rows_in_files"] - 1
    dq = _dq(db, AMBER)
    _assert_stamp_is_the_report(dq, again)
    assert str(dq["supplies"][0]["reported_at"].isoformat()).startswith(again["report"]["generated_at"][:19])
    _the_analyst_reads_the_stamp_and_nothing_else(db, demo_config)


def test_a_refused_supply_is_stamped_red(settings, db, schema, months, monkeypatch):
    import gnupg

    from csp_observatory import partner

    # Encrypted but not signed: refused, nothing loaded.
    def unsigned(home, plain, enc, recipient_fingerprint, signer_fingerprint, passphrase=None):
        with open(plain, "rb") as fh:
            result = gnupg.GPG(gnupghome=str(home)).encrypt_file(fh, [recipient_fingerprint], always_trust=True,
                                                                 armor=False, output=str(enc))
        assert result.ok, result.status
        return enc

    monkeypatch.setattr(partner, "encrypt_and_sign", unsigned)
    demo.drop_demo_supply(settings, schema, RED, files=_supply(RED, 30).files)
    demo.run_feed_dag(FEED)
    report = _report(settings, RED)
    assert report["supply"]["status"] == "refused" and report["outcome"]["level"] == "red"
    dq = _dq(db, RED)
    [supply] = dq["supplies"]
    assert (supply["status"], supply["level"], supply["rows_loaded"]) == ("refused", "red", 0)
    assert supply["reasons"] == report["outcome"]["reasons"] and supply["files_refused"] > 0
    # Nothing was validated: every quality is there, with nothing to grade.
    assert sorted((r["quality"], r["grade"]) for r in dq["qualities"]) == sorted(
        (q, "n/a") for q in stamp_data.QUALITIES)
    with db.cursor() as cur:
        cur.execute("SELECT status, report -> 'outcome' ->> 'level' FROM observatory.supplies WHERE supply_id = %s",
                    (f"{FEED}/{RED}",))
        assert cur.fetchone() == ("refused", "red")
        # Records of other months are untouched by it in the graded view: nobody's record is of this supply.
        cur.execute("SELECT count(*) FROM depersonalised.prc_offences_graded WHERE supply_id = %s", (f"{FEED}/{RED}",))
        assert cur.fetchone()[0] == 0
    db.rollback()


def _the_analyst_reads_the_stamp_and_nothing_else(db, demo_config) -> None:
    """The analyst's login reads dq, the graded view and the comments of a loaded supply (AMBER), and nothing in
    the restricted schemas; every write is refused. (Called by the first test once its supply is loaded, so that
    the module runs the DAG once fewer.)"""
    sid = f"{FEED}/{AMBER}"
    with closing(psycopg2.connect(demo_config["analyst_url"], connect_timeout=10)) as analyst:
        with analyst.cursor() as cur:
            for table in DQ_TABLES:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(
                    sql.Identifier("dq", table)), (sid,))
                assert cur.fetchone()[0] >= (1 if table in ("supplies", "qualities") else 0), table
            cur.execute("SELECT count(*), min(dq_level) FROM depersonalised.prc_offences_graded WHERE supply_id = %s",
                        (sid,))
            n, level = cur.fetchone()
            assert n > 0 and level == "amber"
            cur.execute("SELECT obj_description('depersonalised.prc_offences'::regclass, 'pg_class')")
            assert stamp_text.COMMENT_MARK in cur.fetchone()[0]
        refused = [
            "SELECT count(*) FROM observatory.supplies",
            "SELECT count(*) FROM observatory.rejected_rows",
            "SELECT count(*) FROM personal.anything",
            "INSERT INTO dq.supplies (supply_id, feed, period, partner, status, level, reported_at) "
            "VALUES ('x', 'x', 'x', 'x', 'x', 'red', now())",
            f"DELETE FROM dq.qualities WHERE supply_id = '{sid}'",
            f"UPDATE dq.set_aside_rows SET reason = 'x' WHERE supply_id = '{sid}'",
            "CREATE TABLE dq.mine (x int)",
            "COMMENT ON TABLE dq.supplies IS 'x'",
            "DROP VIEW depersonalised.prc_offences_graded",
            "UPDATE depersonalised.prc_offences_graded SET dq_level = 'green'",
        ]
        for statement in refused:
            with analyst.cursor() as cur:
                with pytest.raises(psycopg2.Error) as caught:
                    cur.execute(statement)
                # a view that is not updatable says so before any privilege is looked at
                assert isinstance(caught.value, (errors.InsufficientPrivilege, errors.ObjectNotInPrerequisiteState)), (
                    statement, caught.value)
            analyst.rollback()
        with analyst.cursor() as cur:
            for relation in [*(f"dq.{t}" for t in DQ_TABLES), "depersonalised.prc_offences_graded"]:
                cur.execute("SELECT has_table_privilege(%s, 'SELECT'), has_table_privilege(%s, 'INSERT, UPDATE, "
                            "DELETE, TRUNCATE')", (relation, relation))
                assert cur.fetchone() == (True, False), relation
    # Still there, unchanged.
    assert _dq(db, AMBER)["supplies"][0]["level"] == "amber"
    # GDAL reads the view as the analyst: points in EPSG:27700, fid as the FID when told (PGSQL_OGR_FID).
    if shutil.which("ogrinfo") is None:
        return
    env = {**os.environ, "PGPASSWORD": demo_config["analyst_password"]}
    source = (f"PG:host={demo_config['analyst_host']} port={demo_config['analyst_port']} "
              f"dbname={demo_config['analyst_database']} user={demo_config['analyst_user']}")
    out = subprocess.run(["ogrinfo", "-ro", "-so", "--config", "PGSQL_OGR_FID", "fid", source,
                          "depersonalised.prc_offences_graded"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Geometry: Point" in out.stdout and 'ID["EPSG",27700]' in out.stdout
    fields = [line.split(":")[0] for line in out.stdout.splitlines() if ": " in line]
    assert "dq_level" in fields and "fid" not in fields, out.stdout      # fid is the FID, not a field


def _probe_schema(db_schema: str, table: str) -> SimpleNamespace:
    """Enough of a FeedSchema for graded_views.ensure_views: one file, one table."""
    return SimpleNamespace(feed="dq_probe", title="Probe", db_schema=db_schema,
                           files=[SimpleNamespace(name="things", table=table, title="Things")])


def test_a_graded_view_follows_its_table_and_never_holds_it(db):
    """The view takes a column the table gains, uses the table's spatial index, and never stops a DROP TABLE."""
    probe = _probe_schema("zz_dq_view_probe", "things")
    db.autocommit = False
    with db.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS zz_dq_view_probe CASCADE")
        cur.execute("CREATE SCHEMA zz_dq_view_probe")
        cur.execute("""CREATE TABLE zz_dq_view_probe.things (kind text, supply_id text NOT NULL,
                       geom geometry(Point,27700), fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)""")
        cur.execute("CREATE INDEX ON zz_dq_view_probe.things USING gist (geom)")
        cur.execute("INSERT INTO zz_dq_view_probe.things (kind, supply_id, geom) SELECT 'a', 'dq_probe/1', "
                    "ST_SetSRID(ST_MakePoint(400000 + g, 400000), 27700) FROM generate_series(1, 5000) g")
        cur.execute("ANALYZE zz_dq_view_probe.things")
    stamp.ensure_dq(db)
    try:
        assert graded_views.ensure_views(db, probe) == {"zz_dq_view_probe.things_graded": "created"}
        assert graded_views.ensure_views(db, probe) == {"zz_dq_view_probe.things_graded": "unchanged"}
        with db.cursor() as cur:
            cur.execute("ALTER TABLE zz_dq_view_probe.things ADD COLUMN note text")
            assert graded_views.ensure_views(db, probe) == {"zz_dq_view_probe.things_graded": "created"}
            cur.execute("SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
                        "WHERE attrelid = 'zz_dq_view_probe.things_graded'::regclass AND attnum > 0")
            assert cur.fetchone()[0] == ["fid", "kind", "supply_id", "geom", "note",
                                         *(n for n, _ in graded_views.VIEW_COLUMNS)]
            # A map's bounding box reaches the table's GiST index through the view (the function is inlined).
            cur.execute("EXPLAIN SELECT * FROM zz_dq_view_probe.things_graded "
                        "WHERE geom && ST_MakeEnvelope(400010, 399990, 400020, 400010, 27700)")
            plan = "\n".join(r[0] for r in cur.fetchall())
            assert "things_geom_idx" in plan and "Function Scan" not in plan, plan
            # The table can be dropped without CASCADE: the view does not hold it.
            cur.execute("DROP TABLE zz_dq_view_probe.things")
            cur.execute("SELECT to_regclass('zz_dq_view_probe.things_graded') IS NOT NULL")
            assert cur.fetchone()[0]
        db.commit()
    finally:
        db.rollback()
        with db.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS zz_dq_view_probe CASCADE")
        db.commit()
