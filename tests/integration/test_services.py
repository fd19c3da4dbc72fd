"""The services scripts/setup.sh starts: PostGIS, the project's sshd (chroots, key-only, pinned host key), gpg."""
from __future__ import annotations

import io
import socket
import uuid
from pathlib import Path

import gnupg
import paramiko
import pytest


pytestmark = pytest.mark.integration

PARTNER_FOLDERS = ("inbox", "quarantine", "processed", "reports")


# ------------------------------------------------------------------ PostGIS

def test_postgis_answers_and_knows_british_national_grid(db):
    with db.cursor() as cur:
        cur.execute("SELECT postgis_version()")
        (version,) = cur.fetchone()
        cur.execute("SELECT auth_name, srtext FROM spatial_ref_sys WHERE srid = 27700")
        row = cur.fetchone()
        # a BNG point to WGS84 and back: proj must be there and round-trip to the millimetre
        cur.execute("""SELECT ST_X(g), ST_Y(g), ST_X(w), ST_Y(w) FROM (
                           SELECT ST_Transform(w, 27700) AS g, w FROM (
                               SELECT ST_Transform(ST_SetSRID(ST_MakePoint(409000, 426000), 27700), 4326) AS w) a) b""")
        e, n, lon, lat = cur.fetchone()
    assert version.split()[0].startswith("3.")
    assert row is not None, "SRID 27700 is missing from spatial_ref_sys"
    assert row[0] == "EPSG" and "OSGB" in row[1]
    assert abs(e - 409000) < 0.001 and abs(n - 426000) < 0.001
    assert -3 < lon < -1 and 53 < lat < 54          # West Yorkshire, where this grid point is


def test_database_roles_are_as_the_architecture_says(db):
    with db.cursor() as cur:
        cur.execute("""SELECT rolname, rolcanlogin, rolsuper FROM pg_roles
                        WHERE rolname IN ('csp_loader', 'csp_analyst', 'csp_engineer', 'csp_personal_reader', 'analyst')""")
        roles = {name: (login, sup) for name, login, sup in cur.fetchall()}
        cur.execute("SELECT pg_has_role('analyst', 'csp_analyst', 'MEMBER'), current_user, "
                    "pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        analyst_member, me, owner = cur.fetchone()
    assert roles.keys() == {"csp_loader", "csp_analyst", "csp_engineer", "csp_personal_reader", "analyst"}
    assert not any(sup for _, sup in roles.values())
    assert {r for r, (login, _) in roles.items() if login} == {"csp_loader", "analyst"}
    assert analyst_member
    if me == "csp_loader":                         # the project's own cluster (not CSP_DATABASE_URL)
        assert owner == "csp_loader"


def test_the_analyst_can_log_in_over_tcp(demo_config):
    import psycopg2

    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, pg_has_role('csp_analyst', 'MEMBER')")
        assert cur.fetchone() == ("analyst", True)
    conn.close()


# ------------------------------------------------------------------ SFTP

def test_partner_sees_only_its_own_four_folders(partner_sftp):
    assert sorted(partner_sftp.listdir("/")) == sorted(PARTNER_FOLDERS)
    # ".." from the chroot root is the root again, not the observatory's tree
    assert sorted(partner_sftp.listdir("/..")) == sorted(PARTNER_FOLDERS)
    with pytest.raises(IOError):
        partner_sftp.stat("/etc/passwd")


def test_partner_can_upload_to_inbox_but_not_outside(partner_sftp, observatory_sftp, clean_partner_folders):
    name = f"upload-{uuid.uuid4().hex}.csv.gpg"
    partner_sftp.putfo(io.BytesIO(b"not really encrypted"), f"/inbox/{name}.part")
    partner_sftp.posix_rename(f"/inbox/{name}.part", f"/inbox/{name}")
    assert partner_sftp.listdir("/inbox") == [name]
    with pytest.raises(IOError):
        partner_sftp.putfo(io.BytesIO(b"x"), f"/{name}")
    with pytest.raises(IOError):
        partner_sftp.mkdir("/elsewhere")
    assert sorted(partner_sftp.listdir("/")) == sorted(PARTNER_FOLDERS)
    # the observatory sees the same file, in the partner's folder of its own tree
    assert observatory_sftp.listdir("/police/inbox") == [name]


def test_observatory_reads_and_renames_in_the_partner_inbox(settings, partner_sftp, observatory_sftp,
                                                            clean_partner_folders):
    payload = uuid.uuid4().bytes * 100
    partner_sftp.putfo(io.BytesIO(payload), "/inbox/supply.csv.gpg.part")
    inbox = settings.inbox("police")
    assert inbox == "/police/inbox"
    with observatory_sftp.open(f"{inbox}/supply.csv.gpg.part", "rb") as fh:
        assert fh.read() == payload
    # rename onto an existing name must be atomic (posix-rename), within the inbox and into processed/
    partner_sftp.putfo(io.BytesIO(b"older"), "/inbox/supply.csv.gpg")
    observatory_sftp.posix_rename(f"{inbox}/supply.csv.gpg.part", f"{inbox}/supply.csv.gpg")
    assert observatory_sftp.listdir(inbox) == ["supply.csv.gpg"]
    observatory_sftp.posix_rename(f"{inbox}/supply.csv.gpg", settings.partner_folder("police", "processed")
                                  + "/supply.csv.gpg")
    # the partner can read what the observatory moved (group cspobs, umask 0007)
    with partner_sftp.open("/processed/supply.csv.gpg", "rb") as fh:
        assert fh.read() == payload
    observatory_sftp.putfo(io.BytesIO(b"<html>report</html>"), "/police/reports/report.html")
    with partner_sftp.open("/reports/report.html", "rb") as fh:
        assert fh.read() == b"<html>report</html>"


def test_password_and_unknown_keys_are_refused(settings, demo_config, ssh_helpers):
    # the server offers publickey only
    with socket.create_connection((settings.sftp_host, settings.sftp_port), timeout=10) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            with pytest.raises(paramiko.BadAuthenticationType) as refused:
                transport.auth_password("police", "police")
            assert refused.value.allowed_types == ["publickey"]
        finally:
            transport.close()
    # a key that is not in the partner's authorized_keys: the observatory's key used as the partner
    client = ssh_helpers.pinned_ssh_client(settings.sftp_host, settings.sftp_port, settings.sftp_host_key)
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(settings.sftp_host, port=settings.sftp_port, username=demo_config["partner_sftp_user"],
                       key_filename=str(settings.sftp_key_file), allow_agent=False, look_for_keys=False, timeout=10)
    client.close()


def test_a_client_pinned_to_another_host_key_is_refused(settings, ssh_helpers):
    # a real ed25519 key that is not the server's: the observatory's own client key
    other = Path(f"{settings.sftp_key_file}.pub").read_text().split()[:2]
    assert " ".join(other) != settings.sftp_host_key
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_helpers.open_sftp(settings.sftp_host, settings.sftp_port, " ".join(other), settings.sftp_user, settings.sftp_key_file)


def test_a_client_that_knows_no_host_key_is_refused(settings):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(settings.sftp_host, port=settings.sftp_port, username=settings.sftp_user,
                       key_filename=str(settings.sftp_key_file), allow_agent=False, look_for_keys=False, timeout=10)
    client.close()


# ------------------------------------------------------------------ GnuPG

def test_observatory_keyring_pins_the_partner_key(settings):
    gpg = gnupg.GPG(gnupghome=str(settings.gnupg_home))
    public = {k["fingerprint"]: k for k in gpg.list_keys()}
    secret = gpg.list_keys(secret=True)
    pinned = settings.partner("police").signing_fingerprint
    assert pinned in public
    assert pinned not in {k["fingerprint"] for k in secret}     # the partner's secret stays with the partner
    assert len(secret) == 1 and "e" in secret[0]["cap"].lower()  # the observatory's own key can decrypt


def test_partner_encrypts_and_signs_and_the_observatory_verifies(settings, demo_config, tmp_path):
    partner = gnupg.GPG(gnupghome=demo_config["partner_gnupg_home"])
    observatory = gnupg.GPG(gnupghome=str(settings.gnupg_home))
    text = f"crime_ref,offence_code\nX{uuid.uuid4().hex[:8]},105A\n"
    # no always_trust: the observatory key must be certified in the partner keyring
    encrypted = partner.encrypt(text, demo_config["observatory_fingerprint"],
                                sign=demo_config["partner_fingerprint"], armor=False)
    assert encrypted.ok, encrypted.status
    out = tmp_path / "plain.csv"
    result = observatory.decrypt(encrypted.data, output=str(out))
    assert result.ok and result.valid
    assert result.pubkey_fingerprint == settings.partner("police").signing_fingerprint
    assert out.read_text() == text
