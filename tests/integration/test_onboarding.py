"""scripts/partner on the real machine: a throwaway partner is onboarded, removed and onboarded again.

The partner is made here (a unique id, a fresh SSH key, and an OpenPGP key made by running the partner guide's own
gpg commands in a brand-new GNUPGHOME), with a feed schema of its own (the site file's ``schemas_dir`` points at a
temporary folder, so no real feed's DAG or partner is touched; Airflow is left alone with --no-airflow, and tested
on a copy of the clone's Airflow database). Its SFTP login is tried on the tests' port against the real sshd, its
files are decrypted with the observatory's real keyring. The module removes everything it made at the end: the
system account, the registry entry, the authorized key, its folders in both SFTP trees and its key in the
observatory's keyring (a test-only teardown: ``scripts/partner remove`` keeps all of these on purpose).
"""
from __future__ import annotations

import base64
import configparser
import io
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
import yaml

from csp_observatory import (decryption, onboarding, onboarding_accounts, onboarding_airflow, onboarding_checks,
                             onboarding_site)
from csp_observatory.config import load_settings
from csp_observatory.schema import REPO_ROOT
from tests.unit.test_partner_onboarding import run_guide

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="scripts/partner makes system accounts: root only")]

COMMAND = REPO_ROOT / "scripts" / "partner"
FOLDERS = {"inbox", "quarantine", "processed", "reports"}


def _partner(site_file: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(COMMAND), "--site", str(site_file), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"scripts/partner {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def partner(tmp_path_factory, settings):
    """A throwaway partner's id, keys, site file and feed; everything it leaves on the machine is removed after."""
    if not onboarding_site.SITE_FILE.exists():
        pytest.fail(f"{onboarding_site.SITE_FILE} is missing: run scripts/setup.sh", pytrace=False)
    real = onboarding_site.load_site()
    pid = f"zz_onb_{uuid.uuid4().hex[:8]}"
    feed = f"onboarding_test_{pid}"
    root = tmp_path_factory.mktemp("onboarding")
    schemas = root / "schemas"
    schemas.mkdir()
    (schemas / f"{feed}.yaml").write_text(f"feed: {feed}\npartner: {{id: {pid}}}\n")
    # a feed naming an existing system account that is nobody's partner, to see onboarding refuse it
    (schemas / "onboarding_daemon_feed.yaml").write_text("feed: onboarding_daemon_feed\npartner: {id: daemon}\n")
    site_doc = yaml.safe_load(onboarding_site.SITE_FILE.read_text())
    site_doc["schemas_dir"] = str(schemas)
    site_file = root / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_doc))
    site = onboarding_site.load_site(site_file)

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{pid}@example.org", "-f",
                    str(root / "id_ed25519")], check=True)
    gnupg_home = root / "gnupg"
    gnupg_home.mkdir(mode=0o700)
    work = root / "work"
    work.mkdir()
    csv = "crime_reference,ho_offence_code\nCR000001,028\n"
    (work / "prc_offences_202609.csv").write_text(csv)
    fingerprint = run_guide(gnupg_home, work, real.observatory_public_key, real.observatory_fingerprint)
    p = SimpleNamespace(id=pid, feed=feed, site=site, site_file=site_file, root=root, fingerprint=fingerprint,
                        ssh_key=root / "id_ed25519", ssh_pub=root / "id_ed25519.pub", gpg_key=work / "our-public-key.asc",
                        encrypted=work / "prc_offences_202609.csv.gpg", csv=csv, gnupg_home=gnupg_home,
                        settings=settings)
    try:
        yield p
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg_home), "--kill", "all"], capture_output=True)
        if onboarding_accounts._user(pid) is not None:
            subprocess.run(["userdel", pid], capture_output=True)
        (site.registry_dir / f"{pid}.yaml").unlink(missing_ok=True)
        (site.authorized_keys_dir / pid).unlink(missing_ok=True)
        for tree in site.trees:
            if (tree.root / pid).is_dir():
                shutil.rmtree(tree.root / pid)
        for fpr in {fingerprint, *getattr(p, "more_fingerprints", ())}:
            subprocess.run(["gpg", "--homedir", str(site.observatory_gnupg_home), "--batch", "--yes",
                            "--no-autostart", "--delete-keys", fpr], capture_output=True)


def _login(p, key_file: Path | None = None):
    """(client, sftp) as the partner on the tests' port, host key pinned."""
    s = p.settings
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_b64 = s.sftp_host_key.split()[:2]
    client.get_host_keys().add(f"[{s.sftp_host}]:{s.sftp_port}", key_type,
                               paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64)))
    client.connect(s.sftp_host, port=s.sftp_port, username=p.id, key_filename=str(key_file or p.ssh_key),
                   allow_agent=False, look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client, client.open_sftp()


def _snapshot(p) -> dict[str, object]:
    """What a repeated onboarding must leave exactly as it was."""
    site = p.site
    paths = [site.registry_dir / f"{p.id}.yaml", site.authorized_keys_dir / p.id,
             site.observatory_gnupg_home / "pubring.kbx", site.observatory_public_key,
             *(t.root / p.id for t in site.trees), *(t.root / p.id / f for t in site.trees for f in FOLDERS)]
    out: dict[str, object] = {}
    for path in paths:
        st = path.stat()
        out[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid,
                          path.read_bytes() if path.is_file() else None)
    out["shadow"] = onboarding_accounts._password_field(p.id)
    out["groups"] = sorted(onboarding_accounts._groups_of(pwd.getpwnam(p.id)))
    return out


def _onboard(p, gpg_key: Path | None = None) -> subprocess.CompletedProcess:
    return _partner(p.site_file, "onboard", "--id", p.id, "--ssh-key", str(p.ssh_pub), "--gpg-key",
                    str(gpg_key or p.gpg_key), "--feeds", p.feed, "--contact", f"data@{p.id}.example", "--no-airflow")


def test_onboarding_makes_a_jailed_sftp_login(partner):
    done = _onboard(partner)
    out = done.stdout
    # what to send the partner: host, port, user, the host key's fingerprint, folders, the observatory's key
    host_fpr = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(partner.site.host_key)],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    for expected in (f"SFTP host            {partner.site.sftp_host}", f"SFTP port            {partner.site.sftp_port}",
                     f"SFTP user            {partner.id}", host_fpr, "/inbox (upload here)",
                     onboarding._spaced(partner.site.observatory_fingerprint), str(partner.site.observatory_public_key),
                     onboarding._spaced(partner.fingerprint)):
        assert expected in out, f"{expected!r} is not in what onboarding printed:\n{out}"
    assert "Airflow: left alone (--no-airflow)" in out

    client, sftp = _login(partner)
    try:
        # jailed in its own folder: it sees its four folders and nothing else, not even by climbing
        assert set(sftp.listdir("/")) == FOLDERS
        assert set(sftp.listdir("/..")) == FOLDERS
        for other in ("/police", "/../police", "/srv", "/etc/passwd"):
            with pytest.raises(IOError):
                sftp.stat(other)
        sftp.putfo(io.BytesIO(b"hello"), "/inbox/hello.txt")
    finally:
        sftp.close()
        client.close()
    # the observatory's account reaches it in the partner's folder, and the folders are as set-up makes them
    test_tree = next(t for t in partner.site.trees if t.port == partner.settings.sftp_port)
    chroot = test_tree.root / partner.id
    assert (chroot / "inbox" / "hello.txt").read_bytes() == b"hello"
    st = chroot.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    for sub in FOLDERS:
        st = (chroot / sub).stat()
        assert st.st_uid == pwd.getpwnam(partner.id).pw_uid and stat.S_IMODE(st.st_mode) == 0o2770
    # the authorized key is restricted whatever sshd allows
    assert (partner.site.authorized_keys_dir / partner.id).read_text().startswith("restrict ssh-ed25519 ")


def test_the_registry_pins_the_key_and_the_settings_see_an_active_supplier(partner, tmp_path):
    entry = yaml.safe_load((partner.site.registry_dir / f"{partner.id}.yaml").read_text())
    assert entry["status"] == "active" and entry["removed_at"] is None
    assert entry["signing_fingerprint"] == partner.fingerprint
    assert entry["feeds"] == [partner.feed] and entry["sftp_user"] == partner.id
    assert [h["event"] for h in entry["history"]] == ["onboarded"]
    settings = load_settings(os.environ["CSP_CONFIG"])            # the tests' config, read afresh
    assert settings.partner(partner.id).signing_fingerprint == partner.fingerprint
    assert settings.suppliers(partner.feed) == [partner.id] and settings.feed_enabled(partner.feed)
    # the file the partner made with the guide's commands is accepted against the pin, by the real keyring
    verified = decryption.decrypt_and_verify(settings.gnupg_home, partner.encrypted, tmp_path / "plain.csv",
                                             settings.partner(partner.id).signing_fingerprint,
                                             settings.gpg_passphrase)
    assert verified.signer_fingerprint == partner.fingerprint
    assert (tmp_path / "plain.csv").read_text() == partner.csv


def test_onboarding_the_same_partner_again_changes_nothing(partner):
    before = _snapshot(partner)
    done = _onboard(partner)
    assert f"{partner.id}: nothing to change" in done.stdout, done.stdout
    assert _snapshot(partner) == before


def test_removing_revokes_the_login_but_keeps_folders_files_and_history(partner):
    client, sftp = _login(partner)
    try:
        sftp.putfo(io.BytesIO(b"left behind"), "/inbox/left.csv.gpg")
    finally:
        sftp.close()
        client.close()
    done = _partner(partner.site_file, "remove", "--id", partner.id, "--no-airflow")
    assert "can no longer log in" in done.stdout and "kept:" in done.stdout

    with pytest.raises(paramiko.AuthenticationException):
        _login(partner)
    assert onboarding_accounts._password_field(partner.id).startswith("!")        # locked, besides its key being gone
    assert not (partner.site.authorized_keys_dir / partner.id).exists()
    for tree in partner.site.trees:
        assert {p.name for p in (tree.root / partner.id).iterdir()} == FOLDERS
    test_tree = next(t for t in partner.site.trees if t.port == partner.settings.sftp_port)
    assert (test_tree.root / partner.id / "inbox" / "left.csv.gpg").read_bytes() == b"left behind"
    entry = yaml.safe_load((partner.site.registry_dir / f"{partner.id}.yaml").read_text())
    assert entry["status"] == "removed" and entry["removed_at"]
    assert [h["event"] for h in entry["history"]] == ["onboarded", "removed"]
    assert entry["signing_fingerprint"] == partner.fingerprint
    # the pipeline cannot collect for it any more, and says why
    settings = load_settings(os.environ["CSP_CONFIG"])
    assert partner.id not in settings.partners and settings.suppliers(partner.feed) == []
    with pytest.raises(KeyError, match="was removed"):
        settings.partner(partner.id)
    listed = subprocess.run(["gpg", "--homedir", str(partner.site.observatory_gnupg_home), "--batch",
                             "--no-autostart", "--list-keys", partner.fingerprint], capture_output=True)
    assert listed.returncode == 0, "the partner's key stays in the observatory's keyring"


def test_onboarding_a_removed_partner_again_restores_it(partner):
    done = _onboard(partner)
    assert "restored partner" in done.stdout, done.stdout
    client, sftp = _login(partner)
    try:
        assert "left.csv.gpg" in sftp.listdir("/inbox")
    finally:
        sftp.close()
        client.close()
    entry = yaml.safe_load((partner.site.registry_dir / f"{partner.id}.yaml").read_text())
    assert entry["status"] == "active" and entry["removed_at"] is None
    assert [h["event"] for h in entry["history"]] == ["onboarded", "removed", "onboarded again"]
    assert load_settings(os.environ["CSP_CONFIG"]).suppliers(partner.feed) == [partner.id]


def test_a_new_signing_key_replaces_the_pin_and_says_so(partner):
    home = partner.root / "gnupg-new"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", f"{partner.id} new <new@{partner.id}.example>", "ed25519", "sign",
                        "1y"], check=True, capture_output=True)
        new_key = partner.root / "new.asc"
        new_key.write_bytes(subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout)
        new_fpr = onboarding_checks.read_openpgp_public_key(new_key).fingerprint
        partner.more_fingerprints = (new_fpr,)
        done = _onboard(partner, gpg_key=new_key)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert f"REPLACED: {partner.fingerprint} -> {new_fpr}" in done.stdout, done.stdout
    settings = load_settings(os.environ["CSP_CONFIG"])
    assert settings.partner(partner.id).signing_fingerprint == new_fpr
    entry = yaml.safe_load((partner.site.registry_dir / f"{partner.id}.yaml").read_text())
    assert entry["history"][-1]["event"] == "signing key replaced"
    # a file signed with the old key is refused now
    with pytest.raises(decryption.RefusedFile) as refused:
        decryption.decrypt_and_verify(settings.gnupg_home, partner.encrypted, partner.root / "plain.csv", new_fpr,
                                      settings.gpg_passphrase)
    assert refused.value.kind == "wrong_signer"


def test_bad_requests_change_nothing(partner):
    before = _snapshot(partner)
    for args, message in (
            (["--ssh-key", str(partner.ssh_key)], "PRIVATE key"),
            (["--gpg-key", str(partner.ssh_pub)], "not an OpenPGP public key"),
            (["--feeds", "police_recorded_crime"], "unknown feed"),      # not a schema of this site's schemas_dir
            (["--id", "daemon", "--feeds", "onboarding_daemon_feed"], "is not an observatory partner"),
            (["--id", "police", "--feeds", partner.feed], "already supplied by the active partner")):
        argv = {"--id": partner.id, "--ssh-key": str(partner.ssh_pub), "--gpg-key": str(partner.gpg_key),
                "--feeds": partner.feed}
        argv.update(dict(zip(args[::2], args[1::2])))
        done = subprocess.run([str(COMMAND), "--site", str(partner.site_file), "onboard", "--no-airflow",
                               *[x for kv in argv.items() for x in kv]], capture_output=True, text=True)
        assert done.returncode == 2, done.stdout + done.stderr
        assert re.search(message, done.stderr), done.stderr
    assert _snapshot(partner) == before


# ------------------------------------------------------------------ Airflow, on a copy of the clone's database

@pytest.fixture()
def airflow_copy(tmp_path):
    """An Airflow home whose metadata DB is a copy of this clone's (so the real one's pause states are untouched)."""
    found, why = onboarding_airflow.Airflow.find()
    if found is None:
        pytest.skip(f"no Airflow configured here: {why}")
    source = found.home / "airflow.db"
    if not source.exists():
        pytest.skip(f"{source} does not exist (not a SQLite metadata DB)")
    home = tmp_path / "airflow"
    home.mkdir()
    with sqlite3.connect(source) as src, sqlite3.connect(home / "airflow.db") as dst:
        src.backup(dst)                      # a consistent copy even while the clone's Airflow writes
    # the clone's Fernet key too: the copy holds values encrypted with it (asset triggers' arguments)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(found.home / "airflow.cfg")
    env = {**found.env, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__CORE__FERNET_KEY": cfg.get("core", "fernet_key", fallback=""),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    return onboarding_airflow.Airflow(home, found.cli, env)


def test_enabling_a_feed_unpauses_its_dag_and_removing_pauses_it(airflow_copy):
    dag = onboarding_airflow.dag_id("police_recorded_crime")
    with sqlite3.connect(airflow_copy.home / "airflow.db") as db:     # the copy: start paused, whatever the clone's
        db.execute("UPDATE dag SET is_paused = 1 WHERE dag_id = ?", (dag,))
    lines = onboarding_airflow._set_feeds(airflow_copy, "", ["police_recorded_crime"], paused=False)
    assert onboarding_airflow._airflow_ok(lines), lines
    assert airflow_copy._present()[dag] is False
    assert "police_recorded_crime" in airflow_copy.enabled_here()
    lines = onboarding_airflow._set_feeds(airflow_copy, "", ["police_recorded_crime"], paused=True)
    assert any(f"paused {dag}" in ln for ln in lines), lines
    assert airflow_copy._present()[dag] is True
    assert "police_recorded_crime" not in airflow_copy.enabled_here()
