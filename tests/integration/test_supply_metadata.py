"""Supply metadata (guidance section 3.4, issue 7) on the real services: SFTP, gpg, PostGIS and the feed's DAG.

A supply's metadata file travels with its data: the feed's first supply is not loaded without one; with one, it is
catalogued with the rows and its caveats and explanations reach the tables' comments (what QGIS shows), the quality
report and the DAG's docs; a file that does not match the data makes the supply amber; one not signed by the
partner is refused like any file. Each test has its own month, apart from the demo's and the other tests'.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import gnupg
import psycopg2
import pytest

from csp_observatory import (demo, demo_data, fixtures, metadata_catalogue, metadata_docs, metadata_file, partner,
                             postcodes_sources, sftp)
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}
PERIODS = ("202401", "202402", "202403", "202404", "202405", "202406", "202407", "202408")


@pytest.fixture(scope="module")
def schema():
    return schema_for(FEED)


@pytest.fixture()
def fresh(settings, db, clean_partner_folders, reference_loaded, forget_supply, schema):
    """This module's months forgotten (rows, ledger, catalogue, reports) before and after each test."""
    db.autocommit = True   # like an analyst's session: reads must not hold locks across the DAG's run

    def forget() -> None:
        for period in PERIODS:
            forget_supply(db, schema, period)
            shutil.rmtree(Path(settings.reports_dir) / FEED / period, ignore_errors=True)

    forget()
    yield
    forget()


@pytest.fixture()
def first_supply(fresh, db):
    """The feed as if none of its supplies had ever carried metadata: its next supply is its first."""
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supply_metadata') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("DELETE FROM observatory.supply_metadata WHERE feed = %s", (FEED,))


def _know_feed(db, schema) -> None:
    """The feed as the observatory knows it after a first supply with metadata (catalogued for PERIODS[-1])."""
    from csp_observatory import database

    example = fixtures.EXAMPLES_DIR / f"{FEED}_metadata.yaml"
    db.autocommit = False
    database.ensure_database(db)
    metadata_catalogue.ensure_catalogue(db)
    metadata_catalogue.record(db, f"{FEED}/{PERIODS[-1]}", metadata_file.parse_metadata(example.read_text(), schema),
                              [])
    db.commit()
    db.autocommit = True


@pytest.fixture()
def known_feed(fresh, db, schema):
    """A feed whose first supply has been: metadata is optional from now on."""
    _know_feed(db, schema)


def _files(period: str, n: int = 40) -> dict[str, str]:
    reference = postcodes_sources.shipped_reference()
    return demo_data.make_police_recorded_crime(period, reference[~reference["terminated"]], n_offences=n).files


def _count(db, query: str, *args: Any) -> int:
    with db.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()[0]


def _loaded(db, period: str) -> int:
    return sum(_count(db, f"SELECT count(*) FROM depersonalised.{t} WHERE supply_id = %s", f"{FEED}/{period}")
               for t in TABLES.values())


def _catalogued(db, period: str) -> int:
    return _count(db, "SELECT count(*) FROM observatory.supply_metadata WHERE supply_id = %s", f"{FEED}/{period}")


def _run(settings, period: str) -> tuple[Any, dict[str, Any]]:
    """One run of the feed's DAG, and the report it wrote for the period."""
    started = time.time()
    run = demo.run_feed_dag(FEED)
    path = demo.latest_report(settings, FEED, period, since=started - 1)
    assert path is not None, "the run wrote no report for the period"
    return run, json.loads(path.read_text())


def _partner_copy(observatory_sftp, period: str) -> tuple[dict[str, Any], str]:
    """The partner's own copy of the latest report of a period, from its reports/ folder: (JSON, HTML)."""
    names = sorted(n for n in observatory_sftp.listdir("/police/reports") if f"_{period}_quality_" in n)
    assert names, "the partner got no report"
    stem = names[-1].rsplit(".", 1)[0]
    with observatory_sftp.open(f"/police/reports/{stem}.json") as fh:
        copy = json.loads(fh.read().decode())
    with observatory_sftp.open(f"/police/reports/{stem}.html") as fh:
        return copy, fh.read().decode()


def _upload(settings, name: str, text: str, tmp_path: Path, sign_home: str | None = None,
            sign_fpr: str | None = None, signed: bool = True) -> None:
    """As the partner: encrypt one file to the observatory (signed by ``sign_fpr``, or the partner's key) and upload."""
    cfg = demo.demo_config()
    plain, enc = tmp_path / name.removesuffix(".gpg"), tmp_path / name
    plain.write_text(text, encoding="utf-8")
    if signed and sign_home is None:
        partner.encrypt_and_sign(cfg["partner_gnupg_home"], plain, enc, cfg["observatory_fingerprint"],
                                 cfg["partner_fingerprint"])
    else:
        gpg = gnupg.GPG(gnupghome=sign_home or cfg["partner_gnupg_home"])
        with open(plain, "rb") as fh:
            result = gpg.encrypt_file(fh, [cfg["observatory_fingerprint"]], sign=sign_fpr if signed else None,
                                      always_trust=True, armor=False, output=str(enc))
        assert result.ok, result.status
    with sftp.connect(settings.sftp_host, settings.sftp_port, cfg["partner_sftp_user"], Path(cfg["partner_ssh_key"]),
                      settings.sftp_host_key) as client:
        partner.upload(client, enc, "/inbox", name)


def _rogue_key(tmp_path: Path) -> tuple[str, str]:
    """A keyring with a signing key the observatory does not know, and the observatory's public key."""
    cfg = demo.demo_config()
    home = tmp_path / "rogue"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "Rogue <rogue@example.invalid>", "ed25519", "sign", "0"], check=True, capture_output=True)
    gpg = gnupg.GPG(gnupghome=str(home))
    gpg.import_keys(gnupg.GPG(gnupghome=cfg["partner_gnupg_home"]).export_keys(cfg["observatory_fingerprint"]))
    return str(home), gpg.list_keys(True)[0]["fingerprint"]


def _reason(observatory_sftp, name: str) -> str:
    with observatory_sftp.open(f"/police/quarantine/{name}.reason.txt") as fh:
        return fh.read().decode()


def test_a_first_supply_without_metadata_is_red_kept_and_names_the_file_to_send(
        settings, db, schema, observatory_sftp, first_supply, tmp_path):
    period = "202401"
    expected = f"prc_metadata_{period}.yaml.gpg"
    files = _files(period)
    names = demo.drop_demo_supply(settings, schema, period, files=files, metadata=False)
    run, report = _run(settings, period)
    assert report["supply"]["status"] == "needs_metadata" and report["outcome"]["level"] == "red"
    assert any(f"Send {expected}" in r for r in report["outcome"]["reasons"]), report["outcome"]
    partner_md = report["metadata"]["partner"]
    assert partner_md["required"] is True and partner_md["supplied"] is False
    # nothing loaded, nothing catalogued, every file kept in the inbox for the metadata file to join
    assert _loaded(db, period) == 0 and _catalogued(db, period) == 0
    assert sorted(observatory_sftp.listdir("/police/inbox")) == sorted(names)
    assert observatory_sftp.listdir("/police/quarantine") == []
    copy, page = _partner_copy(observatory_sftp, period)
    assert copy["outcome"]["level"] == "red" and expected in json.dumps(copy["quarantined"])
    assert "What to send" in page and expected in page
    assert str(run.state) == "failed"

    # The partner sends the metadata file alone: the supply waiting in the inbox is taken again, and loads.
    _upload(settings, expected, fixtures.make_metadata(schema, period, files), tmp_path)
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "loaded" and report["metadata"]["partner"]["matches"]
    assert _loaded(db, period) > 0 and _catalogued(db, period) == 1
    assert observatory_sftp.listdir("/police/inbox") == []
    assert expected in observatory_sftp.listdir("/police/processed")


def test_metadata_is_catalogued_and_its_caveats_shown_where_people_meet_the_data(
        settings, db, schema, observatory_sftp, demo_config, first_supply):
    period = "202402"
    caveat = f"Test caveat {uuid.uuid4().hex[:8]}: points in the Northgate sector are approximate."
    files = _files(period)
    demo.drop_demo_supply(settings, schema, period, files=files,
                          metadata=fixtures.make_metadata(schema, period, files, caveats=[caveat]))
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "loaded"
    p = report["metadata"]["partner"]
    assert p["caveats"] == [caveat] and p["matches"] and p["catalogued"] and p["required"] is True
    assert not any("metadata" in r for r in report["outcome"]["reasons"])
    # one catalogue row, with the partner's document (its supplier's contact kept for engineers only)
    with db.cursor() as cur:
        cur.execute("SELECT document, mismatches FROM observatory.supply_metadata WHERE supply_id = %s",
                    (f"{FEED}/{period}",))
        [(document, mismatches)] = cur.fetchall()
    assert document["caveats"] == [caveat] and mismatches == [] and document["supplier"]["contact"]
    assert document["supplier"]["contact"] not in json.dumps(report)
    # QGIS: what the analyst's own login reads from pg_catalog
    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as analyst, analyst.cursor() as cur:
        cur.execute("SELECT obj_description('depersonalised.prc_offences'::regclass, 'pg_class')")
        table = cur.fetchone()[0]
        cur.execute("SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                    "WHERE a.attrelid = 'depersonalised.prc_offenders'::regclass AND a.attname = 'ethnicity'")
        column = cur.fetchone()[0]
        cur.execute("SELECT caveats FROM reference.feed_caveats WHERE feed = %s", (FEED,))
        caveats = cur.fetchone()[0]
    analyst.close()
    assert f"Partner caveats: {caveat}" in table and f"period {period}" in table
    assert "Partner's coordinates: Offence locations are placed by the recording officer" in table
    assert column.startswith("Ethnicity") and "Partner: Officer-defined ethnicity" in column
    assert "Coding: IC1 = White - North European" in column
    assert caveats == caveat
    # the quality report, the partner's copy of it and the DAG's docs
    copy, page = _partner_copy(observatory_sftp, period)
    assert copy["metadata"]["partner"]["caveats"] == [caveat] and caveat in page
    assert caveat in metadata_docs.dag_doc(FEED, settings.reports_dir)
    # the settings' reports_dir
    assert metadata_docs.dag_doc(FEED) == metadata_docs.dag_doc(FEED, settings.reports_dir)


def test_a_count_that_does_not_match_makes_the_supply_amber_with_the_difference_listed(
        settings, db, schema, observatory_sftp, known_feed):
    period = "202403"
    files = _files(period)
    rows = len(files["offenders"].strip().splitlines()) - 1
    demo.drop_demo_supply(settings, schema, period, files=files,
                          metadata=fixtures.make_metadata(schema, period, files, records={"offenders": rows + 5}))
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "loaded" and report["outcome"]["level"] == "amber"
    said = f"The metadata says the offenders file has {rows + 5:,} records; it has {rows:,} rows of data."
    assert any("does not match the supply in 1 way" in r and said in r for r in report["outcome"]["reasons"])
    p = report["metadata"]["partner"]
    assert p["mismatches"] == [{"kind": "record_count", "message": said, "file": "offenders", "datafield": None}]
    copy, page = _partner_copy(observatory_sftp, period)
    assert copy["metadata"]["partner"]["messages"] == [said] and "It does not match the supply" in page
    with db.cursor() as cur:
        cur.execute("SELECT mismatches FROM observatory.supply_metadata WHERE supply_id = %s", (f"{FEED}/{period}",))
        assert [m["kind"] for m in cur.fetchone()[0]] == ["record_count"]
    assert _loaded(db, period) > 0


def test_a_re_run_of_the_same_supply_never_duplicates_its_catalogue_row(
        settings, db, schema, observatory_sftp, known_feed):
    period = "202404"
    files = _files(period)
    names = demo.drop_demo_supply(settings, schema, period, files=files)
    _run(settings, period)
    assert _catalogued(db, period) == 1
    loaded = _loaded(db, period)
    # re-sent (new bytes: a new encryption), with other caveats: the row is replaced, never added to
    demo.drop_demo_supply(settings, schema, period, files=files,
                          metadata=fixtures.make_metadata(schema, period, files, caveats=["Re-sent."]))
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "loaded"
    assert _catalogued(db, period) == 1 and _loaded(db, period) == loaded
    assert _count(db, "SELECT count(*) FROM observatory.supply_metadata WHERE supply_id = %s AND "
                      "document->'caveats' = '[\"Re-sent.\"]'::jsonb", f"{FEED}/{period}") == 1
    # the very same bytes again: a duplicate delivery, not loaded, nothing catalogued twice
    for n in names:
        observatory_sftp.posix_rename(f"/police/processed/{n}", f"/police/inbox/{n}")
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "duplicate"
    assert _catalogued(db, period) == 1 and _loaded(db, period) == loaded


def test_a_load_that_fails_leaves_no_catalogue_row_and_no_comment(
        settings, db, schema, known_feed, monkeypatch):
    from csp_observatory import ledger

    period = "202405"
    caveat = f"Never shown {uuid.uuid4().hex[:8]}."
    with db.cursor() as cur:
        cur.execute("SELECT obj_description(to_regclass('depersonalised.prc_offences'), 'pg_class')")
        before = cur.fetchone()[0]
    files = _files(period)
    demo.drop_demo_supply(settings, schema, period, files=files,
                          metadata=fixtures.make_metadata(schema, period, files, caveats=[caveat]))

    def broken(conn, shas, supply_id):       # the last write of the load's transaction fails
        raise RuntimeError("simulated failure at the end of the load")

    monkeypatch.setattr(ledger, "mark_loaded", broken)
    run = demo.run_feed_dag(FEED, check=False)
    assert {ti.task_id: str(ti.state) for ti in run.get_task_instances()}["load"] == "failed"
    assert _catalogued(db, period) == 0 and _loaded(db, period) == 0
    with db.cursor() as cur:
        cur.execute("SELECT obj_description(to_regclass('depersonalised.prc_offences'), 'pg_class')")
        assert cur.fetchone()[0] == before
    assert caveat not in metadata_docs.dag_doc(FEED, settings.reports_dir)


@pytest.mark.parametrize("case", ["unsigned", "unknown_key"])
def test_a_metadata_file_not_signed_by_the_partner_is_quarantined_with_a_reason(
        case, settings, db, schema, observatory_sftp, known_feed, tmp_path):
    period = "202406"
    name = f"prc_metadata_{period}.yaml.gpg"
    files = _files(period)
    names = demo.drop_demo_supply(settings, schema, period, files=files, metadata=False)
    text = fixtures.make_metadata(schema, period, files)
    if case == "unsigned":
        _upload(settings, name, text, tmp_path, signed=False)
        words = "not signed"
    else:
        home, fpr = _rogue_key(tmp_path)
        _upload(settings, name, text, tmp_path, sign_home=home, sign_fpr=fpr)
        words = "key the observatory does not know"
    _, report = _run(settings, period)
    assert name in observatory_sftp.listdir("/police/quarantine")
    assert words in _reason(observatory_sftp, name)
    assert report["supply"]["status"] == "refused" and report["outcome"]["level"] == "red"
    assert any(q["remote_name"] == name for q in report["quarantined"])
    # as for any refused file: nothing loaded or catalogued, the data files wait in the inbox
    assert _loaded(db, period) == 0 and _catalogued(db, period) == 0
    assert sorted(observatory_sftp.listdir("/police/inbox")) == sorted(names)


def test_an_unreadable_metadata_file_is_returned_and_the_supply_loads_unless_it_is_the_first(
        settings, db, schema, observatory_sftp, first_supply, tmp_path):
    period = "202407"
    name = f"prc_metadata_{period}.yaml.gpg"
    files = _files(period)
    broken = "agency: Local police force\ndataset: police_recorded_crime\n"
    names = demo.drop_demo_supply(settings, schema, period, files=files, metadata=broken)
    # the feed's first supply: not loaded without metadata it can read
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "refused" and report["outcome"]["level"] == "red"
    reason = _reason(observatory_sftp, name)
    assert "supplier is missing" in reason and "first supply" in reason
    assert "Local police force" not in reason          # keys are named, never the values the partner wrote
    assert sorted(observatory_sftp.listdir("/police/inbox")) == sorted(n for n in names if n != name)
    assert _loaded(db, period) == 0

    # once the feed is known, the same file sent again is returned, but the data load: amber
    _know_feed(db, schema)
    _upload(settings, name, broken, tmp_path)
    _, report = _run(settings, period)
    assert report["supply"]["status"] == "loaded" and report["outcome"]["level"] == "amber"
    assert any("could not be read and was returned to you" in r for r in report["outcome"]["reasons"])
    assert report["metadata"]["partner"]["refused"] and not report["metadata"]["partner"]["catalogued"]
    assert "were loaded without it" in _reason(observatory_sftp, name)
    assert _loaded(db, period) > 0 and _catalogued(db, period) == 0
    assert name not in observatory_sftp.listdir("/police/processed")

