"""The services scripts/setup.sh starts: PostGIS, the project's sshd (chroots, key-only, pinned host key), gpg;
the machine's secrets it keeps once for every clone, and the tests' own database and SFTP tree.
"""
from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import gnupg
import paramiko
import psycopg2
import pytest

from csp_observatory.schema import REPO_ROOT


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


def test_database_roles_are_as_the_architecture_says(db, demo_config):
    person = demo_config["analyst_user"]
    groups = {"csp_analyst", "csp_engineer", "csp_personal_reader"}
    with db.cursor() as cur:
        cur.execute("""SELECT rolname, rolcanlogin, rolsuper FROM pg_roles
                        WHERE rolname = ANY(%s)""", (["csp_loader", *groups, "analyst", person],))
        roles = {name: (login, sup) for name, login, sup in cur.fetchall()}
        cur.execute("SELECT pg_has_role(%s, 'csp_analyst', 'MEMBER'), pg_has_role(%s, 'csp_personal_reader', "
                    "'MEMBER'), current_user, pg_get_userbyid(datdba) FROM pg_database "
                    "WHERE datname = current_database()", (person, person))
        analyst_member, personal_member, me, owner = cur.fetchone()
    assert roles.keys() >= {"csp_loader", *groups, person}
    assert not any(sup for _, sup in roles.values())
    # no shared login: the old "analyst" role is gone, or can no longer log in; the demo's analyst is a person
    assert person != "analyst" and not roles.get("analyst", (False, False))[0]
    assert {r for r, (login, _) in roles.items() if login} == {"csp_loader", person}
    assert analyst_member and not personal_member
    if me == "csp_loader":                         # the project's own cluster (not CSP_DATABASE_URL)
        assert owner == "csp_loader"


def test_the_demo_analyst_is_a_registered_person_and_logs_in_over_tls(demo_config):
    with psycopg2.connect(demo_config["analyst_url"], connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, pg_has_role('csp_analyst', 'MEMBER'), s.ssl FROM pg_stat_ssl s "
                    "WHERE s.pid = pg_backend_pid()")
        user, member, ssl = cur.fetchone()
    conn.close()
    assert (user, member) == (demo_config["analyst_user"], True)
    if demo_config.get("analyst_sslmode") == "verify-full":       # the project's cluster: TLS, verified
        assert ssl and "sslmode=verify-full" in demo_config["analyst_url"]
        assert f"sslrootcert={demo_config['analyst_sslrootcert']}" in demo_config["analyst_url"]
    if os.geteuid() == 0:
        with psycopg2.connect(demo_config["admin_url"], connect_timeout=10) as admin, admin.cursor() as cur:
            cur.execute("SELECT name, profile, disabled_at FROM governance.people WHERE login = %s", (user,))
            assert cur.fetchone() == ("Demo Analyst", "analyst", None)
        admin.close()


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


# ------------------------------------------------------------------ one set of secrets per machine, tests apart

def _secrets(store: Path) -> dict[str, tuple[int, int, str]]:
    """(inode, mtime, sha256) of every secret in the machine's store: passwords, SSH keys, gpg keys and keyrings
    (not gpg's own bookkeeping: trustdb, random_seed, sockets)."""
    files = [*store.glob("db/*"), *store.glob("ssh/*"), *store.glob("tls/*"),
             *store.glob("gnupg/*/private-keys-v1.d/*"), *store.glob("gnupg/*/pubring.kbx")]
    out = {}
    for f in files:
        st = f.stat()
        out[str(f.relative_to(store))] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def _analyst_url(database_url: str, user: str, password: str) -> str:
    """The analyst's TCP URL for the database a (loader's or admin's, maybe socket) URL names, with its TLS
    settings."""
    u = urlsplit(database_url)
    query = parse_qs(u.query)
    port = u.port or (query.get("port") or [5432])[0]
    tls = "&".join(f"{k}={query[k][0]}" for k in ("sslmode", "sslrootcert") if k in query)
    return f"postgresql://{user}:{password}@{u.hostname or '127.0.0.1'}:{port}{u.path}" + (f"?{tls}" if tls else "")


def _sftp_logs_in(ssh_helpers, settings, user: str, key_file) -> bool:
    try:
        client, sftp = ssh_helpers.open_sftp(settings.sftp_host, settings.sftp_port, settings.sftp_host_key, user,
                                             key_file)
    except (paramiko.SSHException, OSError):
        return False
    sftp.close()
    client.close()
    return True


def test_the_secrets_live_once_per_machine_root_only(settings, demo_settings, demo_config):
    store = Path(demo_config["secrets_dir"])
    assert store.is_absolute() and REPO_ROOT not in store.parents, "the secrets must live outside any clone"
    # the demo's config and the tests' name the same keys: one set per machine
    for s in (settings, demo_settings):
        assert store in Path(s.sftp_key_file).parents and store in Path(s.gnupg_home).parents
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for path in store.rglob("*"):
        st = path.lstat()
        assert st.st_uid == 0, path
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o700, path
        elif path.parent.name in ("db", "ssh", "tls", "private-keys-v1.d"):
            assert stat.S_IMODE(st.st_mode) == 0o600, path
    assert _secrets(store).keys() >= {"db/csp_loader.password", f"db/{demo_config['analyst_user']}.password",
                                      "ssh/cspobs_ed25519", f"ssh/{demo_config['partner_sftp_user']}_ed25519"}
    assert not (store / "db" / "analyst.password").exists(), "the shared analyst login's password must be gone"
    if demo_config.get("analyst_sslmode") == "verify-full":       # the project's cluster: its CA and server key
        assert {"tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} <= _secrets(store).keys()


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/setup.sh runs as root")
def test_setup_run_again_keeps_the_secrets_and_every_config_working(settings, demo_settings, demo_config, setup_env,
                                                                    ssh_helpers):
    """What another clone's set-up does to this one: it must make no new key or password. The settings were read
    before the run, and must still log in after it, to both databases and both SFTP trees."""
    store = Path(demo_config["secrets_dir"])
    before = _secrets(store)
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh")], env=setup_env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""                                  # quiet: the details go to its log
    assert _secrets(store) == before                          # not one secret made anew, rewritten or touched

    partner_user, partner_key = demo_config["partner_sftp_user"], demo_config["partner_ssh_key"]
    for s in (settings, demo_settings):
        analyst = demo_config["analyst_user"]
        for url, user in ((s.database_url, None),
                          (_analyst_url(s.database_url, analyst, demo_config["analyst_password"]), analyst)):
            with psycopg2.connect(url, connect_timeout=10) as conn, conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert user is None or cur.fetchone() == (user,)
            conn.close()
        assert _sftp_logs_in(ssh_helpers, s, s.sftp_user, s.sftp_key_file), (s.sftp_port, s.sftp_user)
        assert _sftp_logs_in(ssh_helpers, s, partner_user, partner_key), (s.sftp_port, partner_user)


def test_the_tests_use_their_own_sftp_tree_and_database(settings, demo_settings, setup_env, partner_sftp,
                                                        ssh_helpers, clean_partner_folders):
    # the same sshd and accounts, another port, whose chroots are the tests' own tree
    assert settings.sftp_port != demo_settings.sftp_port
    name = f"isolation-{uuid.uuid4().hex}.csv.gpg"
    partner_sftp.putfo(io.BytesIO(b"x"), f"/inbox/{name}")
    client, demo_sftp = ssh_helpers.open_sftp(demo_settings.sftp_host, demo_settings.sftp_port,
                                              demo_settings.sftp_host_key, demo_settings.sftp_user,
                                              demo_settings.sftp_key_file)
    try:
        assert name not in demo_sftp.listdir(demo_settings.inbox("police"))
    finally:
        demo_sftp.close()
        client.close()
    if setup_env.get("CSP_DATABASE_URL") and not setup_env.get("CSP_TEST_DATABASE_URL"):
        pytest.skip("CSP_DATABASE_URL without CSP_TEST_DATABASE_URL: the tests share that database")
    with psycopg2.connect(settings.database_url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        (ours,) = cur.fetchone()
    conn.close()
    assert ours != urlsplit(demo_settings.database_url).path.lstrip("/")
