"""Onboarding's checks refuse what must never be pinned or installed, before anything changes; the config merges the
partner registry into the settings; and the partner guide's gpg commands work from a brand-new keyring.

Keys are real (ssh-keygen, gpg: ed25519 keys take milliseconds), made in temporary folders; nothing here needs root
or touches the machine's accounts, registry or keyrings.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from csp_observatory import (decryption, onboarding, onboarding_accounts, onboarding_airflow, onboarding_checks,
                             onboarding_site)
from csp_observatory.config import PartnerKeys, Settings, read_registry, settings_from_dict
from csp_observatory.onboarding_site import OnboardingError
from csp_observatory.schema import REPO_ROOT

pytestmark = pytest.mark.unit

PARTNERS_GUIDE = REPO_ROOT / "docs" / "PARTNERS.md"


def _gpg(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                           "", *args], check=True, capture_output=True, **kw)


def _keyring(root: Path, name: str, *, usage: str = "sign", subkey: str | None = None) -> tuple[Path, str]:
    home = root / name
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", usage, "0")
    fpr = next(ln.split(":")[9] for ln in _gpg(home, "--with-colons", "--list-keys").stdout.decode().splitlines()
               if ln.startswith("fpr:"))
    if subkey:
        _gpg(home, "--quick-add-key", fpr, "cv25519", subkey, "0")
    return home, fpr


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Public and secret key files of a signing key, a key that can only certify, and two keys in one file."""
    root = tmp_path_factory.mktemp("keys")
    signer, signer_fpr = _keyring(root, "signer", subkey="encr")
    certify_only, _ = _keyring(root, "certonly", usage="cert", subkey="encr")
    other, _ = _keyring(root, "other")
    files = {
        "public": _gpg(signer, "--armor", "--export", signer_fpr).stdout,
        "secret": _gpg(signer, "--armor", "--export-secret-keys", signer_fpr).stdout,
        "secret_binary": _gpg(signer, "--export-secret-keys", signer_fpr).stdout,
        "cannot_sign": _gpg(certify_only, "--armor", "--export").stdout,
        "two": _gpg(signer, "--armor", "--export").stdout + _gpg(other, "--armor", "--export").stdout,
        "not_a_key": b"hello, I am not a key\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.asc"
        paths[name].write_bytes(data)
    ssh = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "partner@example.org", "-f", str(ssh)],
                   check=True)
    paths["ssh_private"], paths["ssh_public"] = ssh, ssh.with_suffix(".pub")
    rsa = root / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    paths["ssh_rsa_2048"] = rsa.with_suffix(".pub")
    yield paths, signer_fpr
    for home in root.iterdir():
        if home.is_dir():
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


# ------------------------------------------------------------------ the partner id and its feeds

@pytest.mark.parametrize("bad", ["", "Police", "root;rm", "../etc", "-police", "9police", "p", "a" * 32,
                                 "police force", "police-force", "pólice"])
def test_a_bad_partner_id_is_refused(bad):
    with pytest.raises(OnboardingError, match="not allowed"):
        onboarding_checks.check_partner_id(bad)


def test_every_schema_partner_id_is_a_good_partner_id():
    ids = set(onboarding_checks.feed_partners().values())
    assert "police" in ids and len(ids) >= 2
    for pid in ids:
        assert onboarding_checks.check_partner_id(pid) == pid


def test_feeds_must_be_schemas_that_no_other_active_partner_supplies():
    assert onboarding_checks.check_feeds("police", ["police_recorded_crime", " police_recorded_crime"]) == (
        "police_recorded_crime",)
    with pytest.raises(OnboardingError, match="unknown feed.*no_such_feed"):
        onboarding_checks.check_feeds("police", ["police_recorded_crime", "no_such_feed"])
    # one partner may supply several feeds, whatever partner id their schemas name by default
    assert onboarding_checks.check_feeds("police", ["stop_and_search", "police_recorded_crime"]) == (
        "police_recorded_crime", "stop_and_search")
    # but a feed has one supplier: another active partner's feed is refused, naming it
    with pytest.raises(OnboardingError, match="fire_incidents is already supplied by the active partner 'fire'"):
        onboarding_checks.check_feeds("police", ["fire_incidents"], supplied_by_others={"fire_incidents": "fire"})
    assert onboarding_checks.check_feeds("fire", ["fire_incidents"], supplied_by_others={"fire_incidents": "fire"}) == (
        "fire_incidents",)
    with pytest.raises(OnboardingError, match="name the feeds"):
        onboarding_checks.check_feeds("police", [""])


def test_the_observatory_s_own_accounts_cannot_be_partners(tmp_path):
    site = _site(tmp_path)
    for name in ("cspobs", "csp-partners", "root"):
        with pytest.raises(OnboardingError):
            onboarding_accounts.check_account(site, name)


def test_an_existing_account_that_is_not_a_partner_is_refused(tmp_path):
    # 'daemon' exists on every Debian/Ubuntu machine and is nobody's partner account
    with pytest.raises(OnboardingError, match="already exists and is not an observatory partner"):
        onboarding_accounts.check_account(_site(tmp_path), "daemon")


# ------------------------------------------------------------------ SSH keys

def test_an_ssh_public_key_is_read_and_restricted(keys):
    paths, _ = keys
    key = onboarding_checks.read_ssh_public_key(paths["ssh_public"])
    assert key.kind == "ssh-ed25519" and key.fingerprint.startswith("SHA256:") and key.bits == 256
    line = key.authorized_line()
    assert line.startswith("restrict ssh-ed25519 AAAA") and line.endswith("partner@example.org")


def test_a_private_ssh_key_is_refused(keys):
    paths, _ = keys
    with pytest.raises(OnboardingError, match="PRIVATE key"):
        onboarding_checks.read_ssh_public_key(paths["ssh_private"])


def test_ssh_keys_with_options_several_keys_or_weak_rsa_are_refused(keys, tmp_path):
    paths, _ = keys
    line = paths["ssh_public"].read_text().strip()
    for name, text, match in (("options", f'command="/bin/sh" {line}\n', "not an SSH public key"),
                              ("two", f"{line}\n{line}\n", "exactly one"),
                              ("dsa", "ssh-dss AAAAB3NzaC1kc3MAAACBAP\n", "not an SSH public key"),
                              ("garbage", "ssh-ed25519 not-base64!!\n", "base64"),
                              ("mislabelled", line.replace("ssh-ed25519", "ssh-rsa", 1) + "\n", "does not match")):
        f = tmp_path / f"{name}.pub"
        f.write_text(text)
        with pytest.raises(OnboardingError, match=match):
            onboarding_checks.read_ssh_public_key(f)
    with pytest.raises(OnboardingError, match="at least 3072 bits"):
        onboarding_checks.read_ssh_public_key(paths["ssh_rsa_2048"])
    with pytest.raises(OnboardingError, match="does not exist"):
        onboarding_checks.read_ssh_public_key(tmp_path / "missing.pub")


# ------------------------------------------------------------------ OpenPGP keys

def test_an_openpgp_public_signing_key_is_read(keys):
    paths, fpr = keys
    key = onboarding_checks.read_openpgp_public_key(paths["public"])
    assert key.fingerprint == fpr
    assert key.uids == ("signer <signer@example.org>",)


@pytest.mark.parametrize("name", ["secret", "secret_binary"])
def test_secret_key_material_is_refused(keys, name, tmp_path):
    paths, _ = keys
    with pytest.raises(OnboardingError, match="SECRET key material"):
        onboarding_checks.read_openpgp_public_key(paths[name])


def test_a_key_that_cannot_sign_is_refused(keys):
    paths, _ = keys
    with pytest.raises(OnboardingError, match="cannot sign"):
        onboarding_checks.read_openpgp_public_key(paths["cannot_sign"])


def test_several_keys_or_no_key_are_refused(keys):
    paths, _ = keys
    with pytest.raises(OnboardingError, match="holds 2 keys"):
        onboarding_checks.read_openpgp_public_key(paths["two"])
    with pytest.raises(OnboardingError, match="not an OpenPGP public key"):
        onboarding_checks.read_openpgp_public_key(paths["not_a_key"])


def test_checking_keys_starts_no_gpg_agent(keys):
    # the checks run in a throw-away home with --no-autostart: a secret key file must not reach an agent
    paths, _ = keys
    before = set(subprocess.run(["pgrep", "-f", "gpg-agent"], capture_output=True, text=True).stdout.split())
    for name in ("public", "secret", "secret_binary"):
        try:
            onboarding_checks.read_openpgp_public_key(paths[name])
        except OnboardingError:
            pass
    after = set(subprocess.run(["pgrep", "-f", "gpg-agent"], capture_output=True, text=True).stdout.split())
    assert after <= before


def test_a_request_is_checked_whole_before_anything_changes(keys, tmp_path):
    paths, _ = keys
    # a partner id no account on this machine has, and a feed schema that names it
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "unit_feed.yaml").write_text("feed: unit_feed\npartner: {id: csp_unit_nobody}\n")
    site = _site(tmp_path, schemas_dir=str(schemas))
    R = onboarding.Request
    good = R("csp_unit_nobody", paths["ssh_public"], paths["public"], ("unit_feed",))
    checked = onboarding.check_request(site, good)
    assert checked.pgp.fingerprint == keys[1] and checked.feeds == ("unit_feed",)
    for bad, match in ((R(good.partner_id, paths["ssh_private"], paths["public"], good.feeds), "PRIVATE"),
                       (R(good.partner_id, paths["ssh_public"], paths["secret"], good.feeds), "SECRET"),
                       (R(good.partner_id, paths["ssh_public"], paths["cannot_sign"], good.feeds), "cannot sign"),
                       (R(good.partner_id, paths["ssh_public"], paths["public"], ("nope",)), "unknown feed"),
                       (R("Csp_unit_nobody", paths["ssh_public"], paths["public"], good.feeds), "not allowed")):
        with pytest.raises(OnboardingError, match=match):
            onboarding.check_request(site, bad)
    assert not site.registry_dir.exists() and not site.authorized_keys_dir.exists()


# ------------------------------------------------------------------ the site file

def _site(tmp_path: Path, **extra) -> onboarding_site.Site:
    doc = {
        "accounts": "system",
        "registry_dir": str(tmp_path / "partners"),
        "authorized_keys_dir": str(tmp_path / "authorized_keys"),
        "observatory_gnupg_home": str(tmp_path / "gnupg"),
        "observatory_fingerprint": "0" * 40,
        "observatory_public_key": str(tmp_path / "observatory.asc"),
        "sftp_trees": [{"root": str(tmp_path / "sftp"), "port": 2222}],
        "sftp_host": "sftp.example.org", "sftp_port": 2222,
        "host_key": str(tmp_path / "host.pub"),
        **extra,
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return onboarding_site.load_site(path)


def test_the_site_file_is_read_and_checked(tmp_path):
    site = _site(tmp_path)
    assert site.trees == (onboarding_site.Tree(tmp_path / "sftp", 2222),)
    assert site.folders == ("inbox", "quarantine", "processed", "reports")
    assert site.partner_group == "csp-partners" and not site.external
    with pytest.raises(OnboardingError, match="observatory_gid"):
        _site(tmp_path, accounts="external")
    with pytest.raises(OnboardingError, match="does not exist"):
        onboarding_site.load_site(tmp_path / "nowhere.yaml")
    (tmp_path / "broken.yaml").write_text("registry_dir: /x\n")
    with pytest.raises(OnboardingError, match="not a valid site file"):
        onboarding_site.load_site(tmp_path / "broken.yaml")


def test_the_setup_site_file_names_what_onboarding_needs():
    # scripts/setup.sh writes the site file from a heredoc: it must carry every field Site requires
    text = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    heredoc = text[text.index('replace_if_changed "$SITE"'):]
    heredoc = heredoc[heredoc.index("\n") + 1:heredoc.index("\nEOF\n")]
    keys_written = {ln.split(":")[0] for ln in heredoc.splitlines() if re.match(r"^[a-z_]+:", ln)}
    required = {"registry_dir", "authorized_keys_dir", "observatory_gnupg_home", "observatory_fingerprint",
                "observatory_public_key", "sftp_trees", "sftp_host", "sftp_port", "host_key"}
    assert required <= keys_written
    assert not re.search(r"PARTNERS=\(\w", text), "partners are onboarded with scripts/partner, not listed in set-up"


# ------------------------------------------------------------------ the settings and the registry

BASE = {"database_url": "postgresql://x@localhost/db", "sftp_host": "127.0.0.1", "sftp_port": 2222,
        "sftp_user": "cspobs", "sftp_key_file": "/k", "sftp_host_key": "ssh-ed25519 AAAA", "sftp_root": "",
        "gnupg_home": "/g", "staging_dir": "/s", "reports_dir": "/r"}


def _entry(folder: Path, pid: str, status: str = "active", **extra) -> None:
    folder.mkdir(exist_ok=True)
    doc = {"id": pid, "status": status, "sftp_user": pid, "signing_fingerprint": f"{pid.upper():A<40}"[:40],
           "feeds": [f"{pid}_feed"], "contact": f"{pid}@example.org", "onboarded_at": "2026-11-01T00:00:00Z",
           "removed_at": "2026-11-20T10:00:00Z" if status == "removed" else None, **extra}
    (folder / f"{pid}.yaml").write_text(yaml.safe_dump(doc))


def test_the_registry_s_active_partners_join_the_config_s_and_win(tmp_path):
    reg = tmp_path / "partners"
    _entry(reg, "police", feeds=["police_recorded_crime"])
    _entry(reg, "fire", feeds=["fire_incidents"])
    raw = {**BASE, "partners_dir": str(reg),
           "partners": {"police": {"sftp_user": "police", "signing_fingerprint": "OLD" * 13 + "X"},
                        "council": {"sftp_user": "council", "signing_fingerprint": "C" * 40}}}
    s = settings_from_dict(raw)
    assert set(s.partners) == {"police", "fire", "council"}
    assert s.partner("police").signing_fingerprint == "POLICE".ljust(40, "A")     # the registry's pin wins
    assert s.partner("police").feeds == ("police_recorded_crime",)
    assert s.partner("council").feeds == ()
    assert s.suppliers("police_recorded_crime") == ["police"]
    assert s.feed_enabled("fire_incidents") and not s.feed_enabled("council_asb")
    assert s.inbox("fire") == "/fire/inbox"


def test_a_removed_partner_is_absent_and_says_so(tmp_path):
    reg = tmp_path / "partners"
    _entry(reg, "police", status="removed", feeds=["police_recorded_crime"])
    raw = {**BASE, "partners_dir": str(reg),
           "partners": {"police": {"sftp_user": "police", "signing_fingerprint": "P" * 40}}}
    s = settings_from_dict(raw)
    assert "police" not in s.partners                                   # even though the config file names it
    assert s.suppliers("police_recorded_crime") == [] and not s.feed_enabled("police_recorded_crime")
    with pytest.raises(KeyError, match="was removed from the observatory on 2026-11-20T10:00:00Z"):
        s.partner("police")
    with pytest.raises(KeyError, match="no keys are registered for partner 'fire'.*partner registry"):
        s.partner("fire")


def test_without_a_registry_the_config_file_alone_counts(tmp_path):
    s = settings_from_dict({**BASE, "partners": {"police": {"sftp_user": "police", "signing_fingerprint": "P" * 40,
                                                            "feeds": ["police_recorded_crime"]}}})
    assert s.partners_dir is None and s.suppliers("police_recorded_crime") == ["police"]
    assert settings_from_dict({**BASE, "partners_dir": str(tmp_path / "none")}).partners == {}   # none onboarded yet
    # a Settings made in code (tests, tools) is unchanged by the registry's arrival
    assert Settings(**{k: v for k, v in BASE.items()},
                    partners={"p": PartnerKeys("p", "F" * 40)}).partner("p").feeds == ()


def test_a_broken_registry_entry_is_an_error_not_a_missing_partner(tmp_path):
    reg = tmp_path / "partners"
    reg.mkdir()
    (reg / "police.yaml").write_text("id: fire\nstatus: active\nsftp_user: fire\nsigning_fingerprint: X\n")
    with pytest.raises(ValueError, match="does not describe partner 'police'"):
        read_registry(reg)
    (reg / "police.yaml").write_text("id: police\nstatus: maybe\nsftp_user: police\nsigning_fingerprint: X\n")
    with pytest.raises(ValueError, match="valid status"):
        settings_from_dict({**BASE, "partners_dir": str(reg)})
    (reg / "police.yaml").write_text("id: [unclosed\n")
    with pytest.raises(ValueError, match="cannot be read"):
        read_registry(reg)


# ------------------------------------------------------------------ Airflow's environment

def test_airflow_is_found_from_the_environment_or_said_why_not(tmp_path):
    airflow, why = onboarding_airflow.Airflow.find({"PATH": "/usr/bin", "AIRFLOW_HOME": str(tmp_path / "nowhere")})
    assert airflow is None and "no airflow.cfg" in why
    (tmp_path / "airflow.cfg").write_text("[core]\n")
    airflow, why = onboarding_airflow.Airflow.find({"PATH": "/usr/bin", "AIRFLOW_HOME": str(tmp_path)})
    assert airflow is not None and airflow.home == tmp_path, why
    assert str(REPO_ROOT / "plugins") in airflow.env["PYTHONPATH"].split(":")
    assert airflow.enabled_here() == set()
    airflow.note_enabled(["police_recorded_crime", "fire_incidents"], True)
    airflow.note_enabled(["fire_incidents"], False)
    assert airflow.enabled_here() == {"police_recorded_crime"}


def test_unreachable_airflow_is_reported_with_what_to_run():
    lines = onboarding_airflow._airflow_report(None, "AIRFLOW_HOME is not set", ["fire_incidents"], False, None)
    assert len(lines) == 1
    assert "not reached (AIRFLOW_HOME is not set)" in lines[0]
    assert "airflow dags unpause" in lines[0] and "feed_fire_incidents" in lines[0]
    assert "scripts/partner airflow-sync" in lines[0]


# ------------------------------------------------------------------ the partner guide, from a fresh keyring

def guide_commands(guide: Path = PARTNERS_GUIDE) -> list[str]:
    """The partner guide's gpg commands for a partner's first supply: the shell block after the marker comment."""
    text = guide.read_text(encoding="utf-8")
    marker = "<!-- gpg-commands: tests/unit/test_partner_onboarding.py runs this block -->"
    assert marker in text, f"{guide} lost its marked gpg commands"
    block = text[text.index(marker):]
    block = block[block.index("```bash\n") + len("```bash\n"):]
    return [ln for ln in block[:block.index("```")].splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def run_guide(partner_home: Path, work: Path, observatory_key: Path, observatory_fpr: str) -> str:
    """Run the guide's commands as a partner would, in ``work`` with GNUPGHOME=``partner_home``; the partner's
    fingerprint. Only what a script cannot type is added: no prompts (batch, an empty passphrase)."""
    script = []
    for line in guide_commands():
        line = line.replace("observatory.asc", shlex.quote(str(observatory_key)))
        line = line.replace("OBSERVATORY_FINGERPRINT", observatory_fpr)
        # a person answers gpg's prompts; a test cannot
        line = re.sub(r"(^|\$\(|\| )gpg ", r"\1gpg --batch --pinentry-mode loopback --passphrase '' ", line)
        script.append(line)
    script.append('echo "MY_FINGERPRINT=$ME"')
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=work, capture_output=True,
                          text=True, env={"GNUPGHOME": str(partner_home), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, f"the guide's commands failed:\n{done.stdout}\n{done.stderr}"
    return re.search(r"MY_FINGERPRINT=([0-9A-F]{40})", done.stdout).group(1)


def test_the_guide_works_from_a_fresh_keyring(tmp_path):
    # the observatory: a key that decrypts, as scripts/setup.sh makes it
    obs_home, obs_fpr = _keyring(tmp_path, "observatory", subkey="encr")
    observatory_key = tmp_path / "observatory.asc"
    observatory_key.write_bytes(_gpg(obs_home, "--armor", "--export", obs_fpr).stdout)
    # the partner: a brand-new GNUPGHOME, the guide's commands, a CSV to send
    partner_home = tmp_path / "partner-gnupg"
    partner_home.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    (work / "prc_offences_202609.csv").write_text("crime_reference,ho_offence_code\nCR000001,028\n")
    try:
        # without the guide's trust step gpg refuses to encrypt to the key: the problem the guide solves
        _gpg(partner_home, "--import", str(observatory_key))
        refused = subprocess.run(["gpg", "--homedir", str(partner_home), "--batch", "--encrypt", "--recipient",
                                  obs_fpr, "-o", "-", str(work / "prc_offences_202609.csv")], capture_output=True)
        assert refused.returncode != 0 and b"Unusable public key" in refused.stderr
        partner_fpr = run_guide(partner_home, work, observatory_key, obs_fpr)
        encrypted = work / "prc_offences_202609.csv.gpg"
        assert encrypted.exists()
        # the observatory pins what the partner sent: its exported public key, checked as onboarding checks it
        sent = work / "our-public-key.asc"
        assert sent.exists(), "the guide has the partner export its public key to send it"
        key = onboarding_checks.read_openpgp_public_key(sent)
        assert key.fingerprint == partner_fpr
        assert onboarding_accounts.import_key(obs_home, key)
        verified = decryption.decrypt_and_verify(obs_home, encrypted, tmp_path / "plain.csv", key.fingerprint)
        assert verified.signer_fingerprint == partner_fpr
        assert (tmp_path / "plain.csv").read_text().startswith("crime_reference,")
    finally:
        for home in (obs_home, partner_home):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


# ------------------------------------------------------------------ onboard and remove, in a sandbox

@pytest.mark.skipif(os.geteuid() != 0, reason="making partners' folders sets their owners: root only")
def test_onboard_and_remove_in_a_sandbox_with_external_accounts(keys, tmp_path):
    """The compose deployment's mode (accounts made by the SFTP container): everything but the system accounts,
    in temporary folders, including a feed that two partners supply (the registry allows it; intake does not yet)."""
    paths, fpr = keys
    obs_home, obs_fpr = _keyring(tmp_path, "observatory", subkey="encr")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host")], check=True)
    (tmp_path / "sftp").mkdir()
    site = _site(tmp_path, accounts="external", observatory_gid=2000, first_uid=3001,
                 observatory_gnupg_home=str(obs_home), observatory_fingerprint=obs_fpr,
                 host_key=str(tmp_path / "host.pub"))
    site.authorized_keys_dir.mkdir()
    ssh = onboarding_checks.read_ssh_public_key(paths["ssh_public"])
    pgp = onboarding_checks.read_openpgp_public_key(paths["public"])
    try:
        first = onboarding.onboard(site, onboarding.Checked("alpha", ssh, pgp, ("shared_feed", "alpha_feed"), "a@x"))
        second = onboarding.onboard(site, onboarding.Checked("beta", ssh, pgp, ("shared_feed",), None))
        assert first.enable == ["shared_feed", "alpha_feed"] and second.enable == ["shared_feed"]
        assert "csp-sftp-accounts" in " ".join(first.notes)
        registry = read_registry(site.registry_dir)
        assert (registry["alpha"]["uid"], registry["beta"]["uid"]) == (3001, 3002)
        for sub in site.folders:
            st = (tmp_path / "sftp" / "alpha" / sub).stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (3001, 2000, 0o2770)
        assert (tmp_path / "sftp" / "alpha").stat().st_uid == 0
        assert site.observatory_public_key.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        assert onboarding.onboard(site, onboarding.Checked("alpha", ssh, pgp, ("shared_feed", "alpha_feed"),
                                                           "a@x")).changes == []
        # removing alpha pauses only the feed nobody else supplies; its folders and entry stay
        gone = onboarding.remove(site, "alpha")
        assert gone.disable == ["alpha_feed"]
        assert any("shared_feed" in n for n in gone.notes)
        assert not (site.authorized_keys_dir / "alpha").exists() and (site.authorized_keys_dir / "beta").exists()
        assert {p.name for p in (tmp_path / "sftp" / "alpha").iterdir()} == set(site.folders)
        assert read_registry(site.registry_dir)["alpha"]["status"] == "removed"
        assert onboarding.remove(site, "alpha").changes == []            # removing twice changes nothing
        s = settings_from_dict({**BASE, "partners_dir": str(site.registry_dir)})
        assert s.suppliers("shared_feed") == ["beta"] and not s.feed_enabled("alpha_feed")
        # onboarding again restores it, with the uid it had
        back = onboarding.onboard(site, onboarding.Checked("alpha", ssh, pgp, ("alpha_feed",), None))
        assert back.enable == ["alpha_feed"]
        entry = read_registry(site.registry_dir)["alpha"]
        assert entry["status"] == "active" and entry["uid"] == 3001 and entry["contact"] == "a@x"
        assert [h["event"] for h in entry["history"]] == ["onboarded", "removed", "onboarded again"]
        with pytest.raises(OnboardingError, match="not in the registry"):
            onboarding.remove(site, "gamma")
        assert "alpha" in onboarding.list_partners(site) and "beta" in onboarding.list_partners(site)

        # scripts/partner apply --keep-removed (what set-up runs) leaves a removed partner removed
        onboarding.remove(site, "beta")
        (tmp_path / "schemas").mkdir()
        for pid in ("alpha", "beta"):
            (tmp_path / "schemas" / f"{pid}_feed.yaml").write_text(f"feed: {pid}_feed\npartner: {{id: {pid}}}\n")
        doc = yaml.safe_load((tmp_path / "site.yaml").read_text())
        (tmp_path / "site.yaml").write_text(yaml.safe_dump({**doc, "schemas_dir": str(tmp_path / "schemas")}))
        (tmp_path / "apply.yaml").write_text(yaml.safe_dump([
            {"id": pid, "ssh_key": str(paths["ssh_public"]), "gpg_key": str(paths["public"]), "feeds": [f"{pid}_feed"]}
            for pid in ("alpha", "beta")]))
        argv = ["--site", str(tmp_path / "site.yaml"), "apply", "--keep-removed", "--no-airflow",
                str(tmp_path / "apply.yaml")]
        assert onboarding.main(argv) == 0
        registry = read_registry(site.registry_dir)
        assert registry["beta"]["status"] == "removed" and registry["alpha"]["feeds"] == ["alpha_feed"]
    finally:
        subprocess.run(["gpgconf", "--homedir", str(obs_home), "--kill", "all"], capture_output=True)
