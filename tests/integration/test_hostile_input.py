"""Hostile or clumsy partner input on the real services (issue 6, section 8): SFTP, gpg, PostGIS, the DAG.

Each case drops its files in the partner's real inbox with a period of its own, beside a good supply, and
checks the outcome: the hostile file is refused with a reason the partner can act on (never quoting a value),
the good supply beside it loads, and nothing else is blocked.
"""
from __future__ import annotations

import csv
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from csp_observatory import (demo, demo_data, fixtures, intake, intake_quarantine, metadata, partner, pipeline,
                             postcodes_sources, sftp)
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}
ARABIC_INDIC = "\u0662\u0660\u0669\u0667\u0660\u0662"      # 209702 in Arabic-Indic digits, which \d accepts
# Every period these tests use (each case its own), and the bad ones the names carry.
PERIODS = ("209701", "209702", "209703", "209704", "209705", "209706", "209707", "209708", "201113", ARABIC_INDIC)


def _name(file: str, period: str) -> str:
    return f"prc_{file}_{period}.csv.gpg"


@pytest.fixture(scope="module")
def reference():
    ref = postcodes_sources.shipped_reference()
    return ref[~ref["terminated"]]


@pytest.fixture(scope="module")
def reference_loaded(settings):
    return demo.ensure_reference(settings)


def _supply(reference, period: str, n_offences: int = 40) -> dict[str, str]:
    return demo_data.make_police_recorded_crime(period, reference, n_offences=n_offences).files


def _count(conn, sql: str, *args: Any) -> int:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _exists(conn, table: str) -> bool:
    return bool(_count(conn, "SELECT count(*) FROM (SELECT to_regclass(%s) AS t) x WHERE t IS NOT NULL", table))


def _forget(conn, settings, forget_supply) -> None:
    """Nothing of these periods in PostGIS, staging or the observatory's reports."""
    schema = schema_for(FEED)
    for period in PERIODS:
        forget_supply(conn, schema, period)
        for root in (settings.staging_dir, settings.reports_dir):
            shutil.rmtree(Path(root) / FEED / period, ignore_errors=True)


@pytest.fixture()
def fresh(settings, db, clean_partner_folders, reference_loaded, forget_supply):
    """A clean slate for these periods before, and nothing of them left after (clean_partner_folders empties
    the partner's folders on both sides). The test's reads commit at once: a transaction left open on a feed table
    would hold up a re-send's swap of its partition (loading takes the table's lock for that)."""
    db.autocommit = True
    _forget(db, settings, forget_supply)
    yield
    _forget(db, settings, forget_supply)


def _drop(settings, files: dict[str, str | bytes]) -> None:
    """As the partner: encrypt and sign each text (or bytes) to the observatory, upload it under the name given."""
    cfg = demo.demo_config()
    with tempfile.TemporaryDirectory() as tmp, sftp.connect(
            settings.sftp_host, settings.sftp_port, cfg["partner_sftp_user"], Path(cfg["partner_ssh_key"]),
            settings.sftp_host_key) as client:
        for i, (remote, content) in enumerate(files.items()):
            plain = Path(tmp) / f"{i}.csv"
            plain.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
            enc = partner.encrypt_and_sign(cfg["partner_gnupg_home"], plain, Path(tmp) / f"{i}.gpg",
                                           recipient_fingerprint=cfg["observatory_fingerprint"],
                                           signer_fingerprint=cfg["partner_fingerprint"])
            partner.upload(client, enc, "/inbox", remote)


def _drop_supply(settings, period: str, files: dict[str, str]) -> None:
    """A supply's files and its metadata file (so that none of these is ever the feed's first without one)."""
    schema = schema_for(FEED)
    _drop(settings, {**{_name(f, period): text for f, text in files.items()},
                     metadata.metadata_file_name(schema, period): fixtures.make_metadata(schema, period, files)})


def _run_dag() -> None:
    """One run of the feed's DAG. A run that refused a file may end red by design: the checks below judge it."""
    try:
        demo.run_feed_dag(FEED)
    except RuntimeError as exc:
        if "ended" not in str(exc):
            raise


def _loaded(db, period: str) -> dict[str, int]:
    return {f: _count(db, f"SELECT count(*) FROM depersonalised.{t} WHERE supply_id = %s", f"{FEED}/{period}")
            for f, t in TABLES.items() if _exists(db, f"depersonalised.{t}")}


def _rows(text: str) -> int:
    return sum(1 for line in text.splitlines()[1:] if line.strip())


def _assert_good_supply_loaded(db, observatory_sftp, settings, period: str, files: dict[str, str]) -> None:
    loaded = _loaded(db, period)
    for f in TABLES:
        rejected = _count(db, "SELECT count(*) FROM observatory.rejected_rows WHERE supply_id = %s AND "
                              "file_name = %s", f"{FEED}/{period}", f)
        assert loaded.get(f, 0) > 0 and loaded[f] + rejected == _rows(files[f]), (period, f, loaded, rejected)
    processed = observatory_sftp.listdir(settings.partner_folder("police", "processed"))
    assert {_name(f, period) for f in TABLES} | {f"prc_metadata_{period}.yaml.gpg"} <= set(processed)


def _reason(observatory_sftp, settings, name: str) -> str:
    folder = settings.partner_folder("police", "quarantine")
    with observatory_sftp.open(f"{folder}/{intake.shown_name(name)}{intake_quarantine.REASON_SUFFIX}") as fh:
        return fh.read().decode("utf-8")


def _quarantined(observatory_sftp, settings) -> list[str]:
    return observatory_sftp.listdir(settings.partner_folder("police", "quarantine"))


def _inbox(observatory_sftp, settings) -> list[str]:
    return observatory_sftp.listdir(settings.inbox("police"))


def test_a_name_ending_in_a_newline_is_quarantined_and_the_right_file_loads(
        settings, db, observatory_sftp, reference, fresh):
    period = "209701"
    good = _supply(reference, period)
    _drop_supply(settings, period, good)
    # Another offences file under the same name plus a line break: it sorted after the right one and replaced it.
    evil = _name("offences", period) + "\n"
    impostor = _supply(reference, period, n_offences=25)["offences"]
    _drop(settings, {evil: impostor})
    _run_dag()
    _assert_good_supply_loaded(db, observatory_sftp, settings, period, good)
    assert intake.shown_name(evil) in _quarantined(observatory_sftp, settings)
    assert "cannot be shown" in _reason(observatory_sftp, settings, evil)
    assert _inbox(observatory_sftp, settings) == []


@pytest.mark.parametrize("bad_period", ["201113", ARABIC_INDIC])
def test_a_period_that_is_not_a_month_is_refused_and_blocks_no_other_supply(
        settings, db, observatory_sftp, reference, fresh, bad_period):
    good_period = "209703"
    good = _supply(reference, good_period)
    _drop_supply(settings, good_period, good)
    _drop_supply(settings, bad_period, _supply(reference, "209702"))
    _run_dag()
    _assert_good_supply_loaded(db, observatory_sftp, settings, good_period, good)
    for f in TABLES:
        reason = _reason(observatory_sftp, settings, _name(f, bad_period))
        assert "YYYYMM" in reason and ("not a valid period" in reason or "digits 0 to 9" in reason), reason
    assert _inbox(observatory_sftp, settings) == []
    assert sum(_loaded(db, bad_period).values()) == 0
    # A later run is not blocked either: the next supply loads.
    later = _supply(reference, "209708")
    _drop_supply(settings, "209708", later)
    _run_dag()
    _assert_good_supply_loaded(db, observatory_sftp, settings, "209708", later)


def test_when_every_file_is_misnamed_the_partner_still_hears_about_each(
        settings, partner_sftp, observatory_sftp, reference, fresh, tmp_path):
    _drop(settings, {"offences september.csv.gpg": "crime_reference\nCR1\n",
                     _name("offenders", "201113"): "crime_reference\nCR1\n"})
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    partner.upload(partner_sftp, empty, "/inbox", _name("victims", "209704"))
    partner_sftp.mkdir("/inbox/september")
    partner_sftp.symlink("/processed", "/inbox/" + _name("offences", "209704"))
    strays = ["offences september.csv.gpg", _name("offenders", "201113"), _name("victims", "209704"), "september",
              _name("offences", "209704")]
    # What the DAG's sensor calls every five minutes: nothing is ready, so no run would start.
    assert pipeline.ready_periods(FEED, settings) == []
    assert _inbox(observatory_sftp, settings) == []
    quarantined = _quarantined(observatory_sftp, settings)
    for name in strays:
        assert name in quarantined and name + intake_quarantine.REASON_SUFFIX in quarantined, name
    assert "match any file" in _reason(observatory_sftp, settings, strays[0])
    assert "not a valid period" in _reason(observatory_sftp, settings, strays[1])
    assert "empty" in _reason(observatory_sftp, settings, strays[2])
    assert "folder" in _reason(observatory_sftp, settings, strays[3])
    assert "symbolic link" in _reason(observatory_sftp, settings, strays[4])
    # The link was moved, never followed: what it pointed at is untouched.
    assert stat.S_ISLNK(observatory_sftp.lstat(
        f"{settings.partner_folder('police', 'quarantine')}/{strays[4]}").st_mode)


def _refused_beside_a_good_supply(settings, db, observatory_sftp, reference, bad_period: str, good_period: str,
                                  bad: dict[str, str]) -> str:
    """Drop a bad supply and a good one, run the DAG once; the good one must load. Returns why the bad supply's
    offences file was refused, as the partner reads it."""
    good = _supply(reference, good_period)
    _drop_supply(settings, bad_period, bad)
    _drop_supply(settings, good_period, good)
    _run_dag()
    _assert_good_supply_loaded(db, observatory_sftp, settings, good_period, good)
    return _reason(observatory_sftp, settings, _name("offences", bad_period))


def _with_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[line - 1] = new
    return "".join(lines)


def test_a_nul_byte_past_64_kib_is_refused_with_its_line_before_anything_loads(
        settings, db, observatory_sftp, reference, fresh):
    bad_period, good_period = "209705", "209706"
    bad = _supply(reference, bad_period, n_offences=600)
    lines = bad["offences"].splitlines(keepends=True)
    line = len(lines) - 3
    assert len("".join(lines[: line - 1]).encode()) > 65536
    bad["offences"] = "".join(lines[: line - 1]) + lines[line - 1][:20] + "\x00" + lines[line - 1][20:] \
        + "".join(lines[line:])
    reason = _refused_beside_a_good_supply(settings, db, observatory_sftp, reference, bad_period, good_period, bad)
    assert f"line {line}" in reason and "NUL" in reason, reason
    assert sum(_loaded(db, bad_period).values()) == 0
    # The supply's other files wait in the inbox for a corrected offences file; nothing is stuck retrying.
    assert sorted(_inbox(observatory_sftp, settings)) == sorted(
        [_name(f, bad_period) for f in ("offenders", "victims")] + [f"prc_metadata_{bad_period}.yaml.gpg"])


def test_an_unbalanced_quote_is_refused_with_its_line_and_what_is_wrong(
        settings, db, observatory_sftp, reference, fresh):
    bad_period, good_period = "209707", "209708"
    bad = _supply(reference, bad_period, n_offences=60)
    (fields,) = csv.reader([bad["offences"].splitlines()[56]])
    plain = [f.replace(",", " ").replace('"', "") for f in fields]
    # Line 57 opens a quote it never closes (the address keeps its secret: it must not appear in the reason).
    bad["offences"] = _with_line(bad["offences"], 57, ",".join(plain[:6]) + ',"Flat 9 Secret Street,'
                                 + ",".join(plain[7:]) + "\n")
    reason = _refused_beside_a_good_supply(settings, db, observatory_sftp, reference, bad_period, good_period, bad)
    assert "line 57: a quoted field is never closed" in reason, reason
    assert "Secret" not in reason and "withheld" not in reason
    assert sum(_loaded(db, bad_period).values()) == 0
