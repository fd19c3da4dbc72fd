"""Secure transfer on the real services: the project's sshd (chrooted partner, pinned host key), PostGIS, gpg.

Each test uses its own period (far from the demo's and the end-to-end test's) and random bytes, so ledger rows
of earlier runs never make a file look like a duplicate by accident.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from csp_observatory import decryption, intake, intake_download, intake_quarantine, ledger, partner, sftp
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
PERIOD = "209912"
FILES = ("offences", "offenders", "victims")


def _name(file: str, period: str = PERIOD) -> str:
    return f"prc_{file}_{period}.csv.gpg"


@pytest.fixture(scope="module")
def schema():
    return schema_for(FEED)


@pytest.fixture()
def transfer(settings, db, clean_partner_folders):
    """A clean slate for the test period: no ledger rows, no staging, empty partner folders."""
    def forget() -> None:
        with db.cursor() as cur:
            cur.execute("SELECT to_regclass('observatory.deliveries') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("DELETE FROM observatory.deliveries WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))
        db.commit()
        shutil.rmtree(Path(settings.staging_dir) / FEED / PERIOD, ignore_errors=True)

    db.rollback()
    ledger.ensure_ledger(db)
    db.commit()
    forget()
    yield
    db.rollback()
    forget()


def _upload_supply(partner_sftp, tmp_path: Path, contents: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """As the partner: upload every file of the period (random bytes: intake does not decrypt)."""
    contents = contents or {f: os.urandom(2048 + i) for i, f in enumerate(FILES)}
    for f, data in contents.items():
        local = tmp_path / _name(f)
        local.write_bytes(data)
        partner.upload(partner_sftp, local, "/inbox", _name(f))
    return contents


def _ledger_rows(db) -> dict[str, tuple]:
    with db.cursor() as cur:
        cur.execute("SELECT file_name, sha256, size_bytes, status FROM observatory.deliveries WHERE supply_id = %s",
                    (f"{FEED}/{PERIOD}",))
        return {r[0]: r[1:] for r in cur.fetchall()}


def test_partner_upload_is_taken_only_after_the_rename(settings, schema, partner_sftp, observatory_sftp, transfer,
                                                       tmp_path):
    _upload_supply(partner_sftp, tmp_path, {f: os.urandom(1000) for f in FILES[:2]})
    inbox = settings.inbox(schema.partner.id)
    # The third file is half written, under its .part name, and the partner's session still has it open.
    with partner_sftp.open("/inbox/" + _name("victims") + ".part", "wb") as fh:
        fh.write(b"x" * 500)
        fh.flush()
        listing = sftp.list_files(observatory_sftp, inbox)
        ready = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing})
        assert _name("victims") + ".part" in {f.name for f in listing}
        assert ready.supplies == [] and ready.unrecognised == []
        assert "victims" in ready.waiting[PERIOD]
        fh.write(b"y" * 500)
    partner_sftp.posix_rename("/inbox/" + _name("victims") + ".part", "/inbox/" + _name("victims"))
    ready = intake.find_ready_supplies(observatory_sftp, schema, settings)
    assert [s.period for s in ready.supplies] == [PERIOD]
    assert {f.remote_name: f.size for f in ready.supplies[0].files}[_name("victims")] == 1000
    assert sorted(partner_sftp.listdir("/inbox")) == sorted(_name(f) for f in FILES)


def test_collect_downloads_hashes_and_records_then_a_second_delivery_is_a_duplicate(
        settings, db, schema, partner_sftp, observatory_sftp, transfer, tmp_path):
    contents = _upload_supply(partner_sftp, tmp_path)
    ready = intake.find_ready_supplies(observatory_sftp, schema, settings)
    (pending,) = [s for s in ready.supplies if s.period == PERIOD]
    collected = intake_download.collect(observatory_sftp, db, schema, settings, pending)
    db.commit()

    shas = {f: hashlib.sha256(data).hexdigest() for f, data in contents.items()}
    assert collected.duplicates == []
    for cf in collected.files.values():
        local = Path(cf.encrypted_path)
        assert local.read_bytes() == contents[cf.name]
        assert cf.sha256 == shas[cf.name]
        assert stat.S_IMODE(local.stat().st_mode) == 0o600
        assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700
    assert _ledger_rows(db) == {_name(f): (shas[f], len(contents[f]), "received") for f in FILES}

    # The loader marks them loaded in its transaction; the pipeline then archives the originals.
    ledger.mark_loaded(db, shas.values(), f"{FEED}/{PERIOD}")
    db.commit()
    for f in FILES:
        intake_quarantine.archive(observatory_sftp, settings, schema.partner.id, _name(f))
    assert sorted(partner_sftp.listdir("/processed")) == sorted(_name(f) for f in FILES)
    assert partner_sftp.listdir("/inbox") == []

    # The partner sends the very same bytes again: never loaded twice, and the ledger keeps the first load.
    _upload_supply(partner_sftp, tmp_path, contents)
    (pending,) = [s for s in intake.find_ready_supplies(observatory_sftp, schema, settings).supplies
                  if s.period == PERIOD]
    again = intake_download.collect(observatory_sftp, db, schema, settings, pending)
    db.commit()
    assert sorted(f.name for f in again.duplicates) == sorted(FILES)
    assert {f.duplicate_of for f in again.files.values()} == {f"{FEED}/{PERIOD}"}
    assert {v[2] for v in _ledger_rows(db).values()} == {"loaded"}


def test_changed_bytes_under_the_same_name_are_a_new_delivery(settings, db, schema, partner_sftp, observatory_sftp,
                                                             transfer, tmp_path):
    first = _upload_supply(partner_sftp, tmp_path)
    (pending,) = intake.find_ready_supplies(observatory_sftp, schema, settings).supplies
    collected = intake_download.collect(observatory_sftp, db, schema, settings, pending)
    ledger.mark_loaded(db, [f.sha256 for f in collected.files.values()], f"{FEED}/{PERIOD}")
    db.commit()
    # A corrected offences file replaces the old one in the inbox (posix-rename overwrites atomically).
    _upload_supply(partner_sftp, tmp_path, {"offences": first["offences"] + b"corrected"})
    (pending,) = intake.find_ready_supplies(observatory_sftp, schema, settings).supplies
    again = intake_download.collect(observatory_sftp, db, schema, settings, pending)
    db.commit()
    assert sorted(f.name for f in again.duplicates) == ["offenders", "victims"]
    with db.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM observatory.deliveries WHERE supply_id = %s GROUP BY status",
                    (f"{FEED}/{PERIOD}",))
        assert dict(cur.fetchall()) == {"loaded": 3, "received": 1}
        cur.execute("SELECT status FROM observatory.deliveries WHERE sha256 = %s",
                    (hashlib.sha256(first["offences"] + b"corrected").hexdigest(),))
        assert cur.fetchone() == ("received",)


def test_quarantine_moves_the_file_and_leaves_a_reason_the_partner_can_read(
        settings, schema, partner_sftp, observatory_sftp, transfer, tmp_path):
    stray = tmp_path / "crimes september.csv"
    stray.write_text("crime_reference\nCR1\n")
    partner.upload(partner_sftp, stray, "/inbox", stray.name)
    ready = intake.find_ready_supplies(observatory_sftp, schema, settings)
    assert ready.unrecognised == [stray.name]
    intake_quarantine.quarantine(observatory_sftp, settings, schema.partner.id, stray.name,
                                 "The file name does not match any file of the feed. Expected names matching: "
                                 + ", ".join(f.pattern for f in schema.files))
    assert partner_sftp.listdir("/inbox") == []
    assert sorted(partner_sftp.listdir("/quarantine")) == sorted([stray.name, stray.name + ".reason.txt"])
    with partner_sftp.open(f"/quarantine/{stray.name}.reason.txt") as fh:
        note = fh.read().decode("utf-8")
    assert stray.name in note and "prc_offences_" in note and "inbox/" in note
    with partner_sftp.open(f"/quarantine/{stray.name}") as fh:
        assert fh.read() == stray.read_bytes()


def test_an_encrypted_signed_upload_survives_transfer_and_verifies(settings, demo_config, db, schema, partner_sftp,
                                                                   observatory_sftp, transfer, tmp_path):
    cfg = demo_config
    contents = {}
    for f in FILES:
        plain = tmp_path / _name(f).removesuffix(".gpg")
        plain.write_text(f"crime_reference\nCR{f.upper()}1\n", encoding="utf-8")
        enc = partner.encrypt_and_sign(cfg["partner_gnupg_home"], plain, tmp_path / _name(f),
                                       cfg["observatory_fingerprint"], cfg["partner_fingerprint"])
        contents[f] = enc.read_bytes()
        partner.upload(partner_sftp, enc, "/inbox", _name(f))
    (pending,) = intake.find_ready_supplies(observatory_sftp, schema, settings).supplies
    collected = intake_download.collect(observatory_sftp, db, schema, settings, pending)
    db.commit()
    offences = collected.files["offences"]
    out = Path(offences.encrypted_path).parent / "offences.csv"
    verified = decryption.decrypt_and_verify(settings.gnupg_home, Path(offences.encrypted_path), out,
                                             settings.partner("police").signing_fingerprint, settings.gpg_passphrase)
    assert out.read_text(encoding="utf-8") == "crime_reference\nCROFFENCES1\n"
    assert verified.signer_fingerprint == decryption.normalise_fingerprint(cfg["partner_fingerprint"])


def test_a_server_with_another_host_key_is_refused(settings, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().strip()
    assert other.split()[1] != settings.sftp_host_key.split()[1]
    with pytest.raises(sftp.HostKeyMismatch, match="pinned"):
        with sftp.connect(settings.sftp_host, settings.sftp_port, settings.sftp_user, settings.sftp_key_file, other):
            pass
    # A pin of another key type is no better: the server cannot prove it holds that key.
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ecdsa")], check=True)
    with pytest.raises(sftp.HostKeyMismatch):
        with sftp.connect(settings.sftp_host, settings.sftp_port, settings.sftp_user, settings.sftp_key_file,
                          (tmp_path / "ecdsa.pub").read_text()):
            pass
    # And the right pin connects.
    with sftp.connect_observatory(settings) as client:
        assert client.listdir(settings.partner_folder("police", "inbox")) is not None


def test_reports_arrive_whole_and_the_partner_can_read_them(settings, partner_sftp, observatory_sftp, transfer,
                                                             tmp_path):
    reports = settings.partner_folder("police", "reports")
    local = tmp_path / "report.html"
    local.write_text("<html>" + "quality " * 5000 + "</html>")
    sftp.put_file(observatory_sftp, local, f"{reports}/{PERIOD}_report.html")
    sftp.put_text(observatory_sftp, f"{reports}/{PERIOD}_report.json", '{"period": "%s"}' % PERIOD)
    assert sorted(n for n in partner_sftp.listdir("/reports") if PERIOD in n) == [
        f"{PERIOD}_report.html", f"{PERIOD}_report.json"]            # no .part left behind
    with partner_sftp.open(f"/reports/{PERIOD}_report.html") as fh:
        assert fh.read() == local.read_bytes()
    with partner_sftp.open(f"/reports/{PERIOD}_report.json") as fh:
        assert fh.read().decode() == '{"period": "%s"}' % PERIOD
