"""The whole path on real services: a partner's encrypted SFTP drop -> the feed's DAG -> PostGIS layers.

Real PostGIS, the project's sshd (chrooted partner, pinned host key), real gpg keys and Airflow's dag.test().
"""
from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

import gnupg
import pytest

from csp_observatory import demo, demo_data, fixtures, postcodes_sources
from csp_observatory.metadata import metadata_file_name
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
PERIOD = "202510"          # the tests' own month, apart from the demo's
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}
HOUSE_NUMBER_OR_FLAT = r"(^|[\s,])\d+[a-zA-Z]?([\s,-]|$)|\m(flat|apartment|apt|unit|room)\M"


@pytest.fixture(scope="module")
def schema():
    return schema_for(FEED)


@pytest.fixture(scope="module")
def supply_files():
    """One month of records, made once for the module, and the rows made bad on purpose."""
    reference = postcodes_sources.shipped_reference()
    made = demo_data.make_police_recorded_crime(PERIOD, reference[~reference["terminated"]], n_offences=150)
    return made


def _count(conn, sql: str, *args) -> int:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _rows_in(text: str) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(text))) - 1


def _loaded(conn, period: str = PERIOD) -> dict[str, int]:
    return {name: _count(conn, f"SELECT count(*) FROM depersonalised.{t} WHERE supply_id = %s", f"{FEED}/{period}")
            for name, t in TABLES.items()}


@pytest.fixture()
def fresh(db, clean_partner_folders, reference_loaded, forget_supply, schema):
    db.autocommit = True  # like an analyst's session: reads must not hold locks across the DAG's run
    forget_supply(db, schema, PERIOD)
    yield
    forget_supply(db, schema, PERIOD)


def test_a_supply_goes_from_sftp_to_sanitised_postgis_layers(settings, db, observatory_sftp, schema, fresh,
                                                             supply_files):
    names = demo.drop_demo_supply(settings, schema, PERIOD, files=supply_files.files)
    demo.run_feed_dag(FEED)

    loaded = _loaded(db)
    # Every input row is accounted for: loaded, or set aside with a reason.
    for name, text in supply_files.files.items():
        rejected = _count(db, "SELECT count(*) FROM observatory.rejected_rows WHERE supply_id = %s AND file_name = %s",
                          f"{FEED}/{PERIOD}", name)
        assert loaded[name] + rejected == _rows_in(text), name
        assert loaded[name] > 0, name
        no_reason = _count(db, "SELECT count(*) FROM observatory.rejected_rows WHERE supply_id = %s "
                               "AND coalesce(trim(reason), '') = ''", f"{FEED}/{PERIOD}")
        assert no_reason == 0
    # The rows made bad on purpose are the ones set aside.
    with db.cursor() as cur:
        cur.execute("SELECT file_name, source_row FROM observatory.rejected_rows WHERE supply_id = %s",
                    (f"{FEED}/{PERIOD}",))
        rejected_rows = set(cur.fetchall())
    for bad in supply_files.bad_rows:
        if bad.get("expect") == "rejected":
            assert (bad["file"], bad["row"]) in rejected_rows, bad

    for name, table in TABLES.items():
        # Every sanitised point is the centroid of a postcode with at least 4 households (Appendix 1),
        # except points on non-addressable places, which the appendix exempts.
        wrong = _count(db, f"""
            SELECT count(*) FROM depersonalised.{table} t
            WHERE t.supply_id = %s AND t.sanitise_rule NOT IN ('non_addressable', 'not_geocoded')
              AND NOT EXISTS (SELECT 1 FROM reference.postcodes p
                              WHERE p.postcode = t.sanitised_postcode AND p.households >= 4
                                AND ST_Equals(p.geom, t.geom))""", f"{FEED}/{PERIOD}")
        assert wrong == 0, table
        # No address string in a depersonalised table has a house number or a flat.
        addr = schema.file(name).location.address
        leaks = _count(db, f"SELECT count(*) FROM depersonalised.{table} WHERE supply_id = %s AND {addr} ~* %s",
                       f"{FEED}/{PERIOD}", HOUSE_NUMBER_OR_FLAT)
        assert leaks == 0, table
        # No name, date of birth or raw coordinate column exists in a depersonalised table.
        with db.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'depersonalised' "
                        "AND table_name = %s", (table,))
            columns = {r[0] for r in cur.fetchall()}
        assert not columns & {"offender_name", "victim_name", "date_of_birth", "easting", "northing",
                              "home_easting", "home_northing", "longitude", "latitude"}, table
        assert {"geom", "supply_id", "source_sha256", "loaded_at", "sanitise_rule"} <= columns
    # Homes are never "non-addressable places": every offender and victim address went through Appendix 1.
    for table in ("prc_offenders", "prc_victims"):
        assert _count(db, f"SELECT count(*) FROM depersonalised.{table} WHERE supply_id = %s "
                          "AND sanitise_rule = 'non_addressable'", f"{FEED}/{PERIOD}") == 0, table
    # Parks, car parks and towpaths the gazetteer knows sit at the place's point, exempt from the household rule.
    places = _count(db, "SELECT count(*) FROM depersonalised.prc_offences WHERE supply_id = %s "
                        "AND sanitise_rule = 'non_addressable' AND location_address ~* %s",
                    f"{FEED}/{PERIOD}", r"park|car park|towpath|footpath|station")
    assert places > 0
    # Some records really moved (the synthetic households include postcodes with 0-3 households).
    moved = _count(db, "SELECT count(*) FROM depersonalised.prc_offences WHERE supply_id = %s "
                       "AND sanitise_rule IN ('next_nearest', 'same_ward', 'same_district', 'anywhere')", f"{FEED}/{PERIOD}")
    assert moved > 0

    # The originals (the metadata file with them) are archived only now the load has committed; the partner has a
    # report.
    assert metadata_file_name(schema, PERIOD) in names
    assert sorted(observatory_sftp.listdir("/police/processed")) == sorted(names)
    assert observatory_sftp.listdir("/police/inbox") == []
    assert any(n.endswith(".html") for n in observatory_sftp.listdir("/police/reports"))
    assert _count(db, "SELECT count(*) FROM observatory.deliveries WHERE supply_id = %s AND status = 'loaded'",
                  f"{FEED}/{PERIOD}") == 4      # three data files and the metadata file
    # No plaintext outlives the run.
    staging = Path(settings.staging_dir)
    assert not [p for p in staging.rglob("*") if p.is_file() and p.suffix in (".csv", ".arrow", ".parquet")]

    # The same delivery dropped again is recognised and never loaded twice.
    for n in names:
        observatory_sftp.posix_rename(f"/police/processed/{n}", f"/police/inbox/{n}")
    demo.run_feed_dag(FEED)
    assert _loaded(db) == loaded

    # A corrected re-send of the same month (new bytes) replaces the month's rows; it never duplicates them.
    demo.drop_demo_supply(settings, schema, PERIOD, files=supply_files.files)
    demo.run_feed_dag(FEED)
    assert _loaded(db) == loaded
    assert _count(db, "SELECT count(DISTINCT source_sha256) FROM depersonalised.prc_offences WHERE supply_id = %s",
                  f"{FEED}/{PERIOD}") == 1


def _gpg_home_with_rogue_key(tmp_path: Path, observatory_pub: str) -> tuple[str, str]:
    home = tmp_path / "rogue"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "Rogue <rogue@example.invalid>", "ed25519", "sign", "0"], check=True, capture_output=True)
    gpg = gnupg.GPG(gnupghome=str(home))
    fpr = gpg.list_keys(True)[0]["fingerprint"]
    gpg.import_keys(observatory_pub)
    return str(home), fpr


def _assert_refused(db, observatory_sftp, remote: str, words: str) -> None:
    assert remote in observatory_sftp.listdir("/police/quarantine")
    with observatory_sftp.open(f"/police/quarantine/{remote}.reason.txt") as fh:
        reason = fh.read().decode()
    assert re.search(words, reason, re.I), reason
    assert sum(_loaded(db).values()) == 0
    assert _count(db, "SELECT count(*) FROM observatory.deliveries WHERE supply_id = %s AND status = 'loaded'",
                  f"{FEED}/{PERIOD}") == 0


def _encrypt(settings, demo_cfg, text: str, out: Path, *, sign_home: str | None, sign_fpr: str | None) -> None:
    home = sign_home or demo_cfg["partner_gnupg_home"]
    gpg = gnupg.GPG(gnupghome=home)
    result = gpg.encrypt(text, demo_cfg["observatory_fingerprint"], sign=sign_fpr, always_trust=True,
                         armor=False, output=str(out))
    assert result.ok, result.status


@pytest.mark.parametrize("case", ["unsigned", "unknown_key", "truncated"])
def test_bad_files_end_in_quarantine_and_nothing_is_loaded(case, settings, db, observatory_sftp, schema, fresh,
                                                           supply_files, tmp_path):
    from csp_observatory import partner, sftp

    demo_cfg = demo.demo_config()
    victims = "prc_victims_" + PERIOD + ".csv.gpg"
    bad = tmp_path / victims
    text = supply_files.files["victims"]
    if case == "unsigned":
        _encrypt(settings, demo_cfg, text, bad, sign_home=None, sign_fpr=None)
        words = "not signed"
    elif case == "unknown_key":
        pub = gnupg.GPG(gnupghome=demo_cfg["partner_gnupg_home"]).export_keys(demo_cfg["observatory_fingerprint"])
        home, fpr = _gpg_home_with_rogue_key(tmp_path, pub)
        _encrypt(settings, demo_cfg, text, bad, sign_home=home, sign_fpr=fpr)
        words = "key"
    else:
        _encrypt(settings, demo_cfg, text, bad, sign_home=demo_cfg["partner_gnupg_home"],
                 sign_fpr=demo_cfg["partner_fingerprint"])
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        words = "truncated|damaged|incomplete"
    good = {k: v for k, v in supply_files.files.items() if k != "victims"}
    demo.drop_demo_supply(settings, schema, PERIOD, files=good,
                          metadata=fixtures.make_metadata(schema, PERIOD, supply_files.files))
    with sftp.connect(settings.sftp_host, settings.sftp_port, demo_cfg["partner_sftp_user"],
                      Path(demo_cfg["partner_ssh_key"]), settings.sftp_host_key) as client:
        partner.upload(client, bad, "/inbox", victims)
    run = demo.run_feed_dag(FEED)
    _assert_refused(db, observatory_sftp, victims, words)
    # The engineer sees a supply set aside whole as a failed run, with the reason in the verdict's log.
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed" and states["verdict"] == "failed" and states["report_and_archive"] == "success"
    # The supply's good files are kept in the inbox (nothing is lost) until a good victims file arrives.
    assert sorted(observatory_sftp.listdir("/police/inbox")) == sorted(
        [f"prc_{n}_{PERIOD}.csv.gpg" for n in good] + [metadata_file_name(schema, PERIOD)])
    staging = Path(settings.staging_dir)
    assert not [p for p in staging.rglob("*") if p.is_file() and p.suffix in (".csv", ".arrow", ".parquet")]
