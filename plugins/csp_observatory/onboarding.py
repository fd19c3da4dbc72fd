"""Onboard and remove partners: one command each (``scripts/partner``, docs/ONBOARDING.md).

Onboarding a partner takes its id, its SSH public key, its OpenPGP public key and the feeds it supplies, and:

- checks all of them before changing anything (a safe id that is not some other account, feeds whose schema names
  this partner, one SSH *public* key, exactly one OpenPGP *public* key that can sign);
- makes its chrooted SFTP account (a system user in the partners' group, which the sshd config jails by group,
  so the sshd config is never rewritten) and its folders in every SFTP tree of the machine;
- imports its OpenPGP key into the observatory's keyring and pins the key's primary fingerprint in the partner
  registry (one YAML file per partner, ``config.read_registry`` reads it; the pipeline only accepts files signed
  by the pinned key);
- enables its feeds: records them in the registry, and unpauses their DAGs in this machine's Airflow;
- prints what to tell the partner: host, port, user, host key fingerprint, folders, the observatory's key.

Running it again with the same keys changes nothing. Removing a partner revokes its SFTP login (key removed,
account locked, open sessions ended), marks its registry entry removed and pauses the feeds nobody else supplies;
its folders, files, registry history, keyring entry and loaded data all stay.

What the command needs to know about the machine (SFTP trees, registry, keyring, group names, what to tell
partners) is in a small site file that ``scripts/setup.sh`` writes, ``/etc/csp-observatory/site.yaml``
(``CSP_SITE`` or ``--site`` for another). Changing accounts needs root; the checks do not.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import yaml

from csp_observatory.config import PARTNER_ID, read_registry
from csp_observatory.schema import REPO_ROOT, SCHEMA_DIR

SITE_FILE: Final = Path("/etc/csp-observatory/site.yaml")
NOLOGIN: Final = "/usr/sbin/nologin"
#: SSH key types a partner may use (no DSA: OpenSSH refuses it).
SSH_KEY_TYPES: Final = frozenset({"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                  "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
                                  "sk-ecdsa-sha2-nistp256@openssh.com"})
MIN_RSA_BITS: Final = 3072
MAX_KEY_FILE_BYTES: Final = 1 << 20
#: The Airflow home's note of the feeds this command has enabled there: after that, their pause state is the
#: engineers' own (``airflow-sync`` only enables feeds this Airflow has not had enabled yet).
ENABLED_STAMP: Final = "csp-observatory-enabled-feeds"
HEADER: Final = "# written by scripts/partner (docs/ONBOARDING.md); change it with that command, not by hand\n"


class OnboardingError(Exception):
    """Something the operator must fix before a partner can be onboarded or removed; nothing was changed."""


# ---------------------------------------------------------------------------------------------------- the site


@dataclass(frozen=True)
class Tree:
    """One SFTP tree: partners' folders under ``root``, served by sshd on ``port``."""

    root: Path
    port: int


@dataclass(frozen=True)
class Site:
    """What scripts/partner needs to know about this machine (the site file, written by scripts/setup.sh)."""

    registry_dir: Path
    authorized_keys_dir: Path
    observatory_gnupg_home: Path
    observatory_fingerprint: str
    observatory_public_key: Path            # the observatory's exported public key, to send partners
    trees: tuple[Tree, ...]
    sftp_host: str                          # what partners are told to connect to
    sftp_port: int
    host_key: Path                          # the SFTP server's host key (public, or private: only read by ssh-keygen)
    folders: tuple[str, ...] = ("inbox", "quarantine", "processed", "reports")
    partner_group: str = "csp-partners"     # sshd jails this group's members in <tree>/<user>
    observatory_user: str = "cspobs"
    observatory_group: str = "cspobs"       # owns partners' subfolders with them, so cspobs can move files
    # "system": accounts are made here (useradd); "external": an SFTP container makes them from the registry
    # (docker-compose.yaml), and the numbers below are the ones it uses
    accounts: str = "system"
    observatory_gid: int | None = None
    first_uid: int = 2001
    schemas_dir: Path = SCHEMA_DIR

    @property
    def external(self) -> bool:
        return self.accounts == "external"


def load_site(path: Path | str | None = None) -> Site:
    """The site file (``path``, else ``CSP_SITE``, else /etc/csp-observatory/site.yaml)."""
    path = Path(path or os.environ.get("CSP_SITE") or SITE_FILE)
    if not path.exists():
        raise OnboardingError(f"{path} does not exist: run scripts/setup.sh (it writes it), or pass --site")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    try:
        trees = tuple(Tree(Path(t["root"]), int(t["port"])) for t in raw.pop("sftp_trees"))
        paths = {k: Path(raw.pop(k)) for k in ("registry_dir", "authorized_keys_dir", "observatory_gnupg_home",
                                               "observatory_public_key", "host_key")}
        if "schemas_dir" in raw:
            paths["schemas_dir"] = Path(raw.pop("schemas_dir"))
        if "folders" in raw:
            raw["folders"] = tuple(raw["folders"])
        site = Site(trees=trees, **paths, **raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise OnboardingError(f"{path} is not a valid site file: {exc}") from None
    if site.accounts not in ("system", "external") or not site.trees:
        raise OnboardingError(f"{path}: accounts must be system or external, and sftp_trees must name a tree")
    if site.external and site.observatory_gid is None:
        raise OnboardingError(f"{path}: with accounts: external, observatory_gid must be given")
    return site


# ---------------------------------------------------------------------------------------------------- checks


def check_partner_id(partner_id: str) -> str:
    """The id, if it is a safe partner id (it is also the partner's SFTP user name)."""
    if not PARTNER_ID.fullmatch(partner_id or ""):
        raise OnboardingError(f"partner id {partner_id!r} is not allowed: use 2 to 31 lower-case letters, digits "
                              f"and underscores, starting with a letter (it becomes the SFTP user name)")
    return partner_id


@lru_cache(maxsize=8)
def feed_partners(schemas_dir: Path = SCHEMA_DIR) -> dict[str, str]:
    """Every feed schema's ``feed`` and the ``partner.id`` it names, read from the schema files alone."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[str, str] = {}
    for path in sorted(Path(schemas_dir).glob("*.yaml")):
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=loader) or {}
        if isinstance(raw, dict) and raw.get("feed"):
            out[str(raw["feed"])] = str((raw.get("partner") or {}).get("id") or "")
    return out


def check_feeds(partner_id: str, feeds: Iterable[str], schemas_dir: Path = SCHEMA_DIR,
                supplied_by_others: dict[str, str] | None = None) -> tuple[str, ...]:
    """The feeds, sorted and without repeats, if each is a schema in ``schemas_dir`` that no other active partner
    supplies (``supplied_by_others``: feed -> partner). One partner may supply several feeds (a police force's
    crime, incidents, stop and search...): their files share its inbox, and each feed's run takes its own."""
    wanted = sorted({f.strip() for f in feeds if f and f.strip()})
    if not wanted:
        raise OnboardingError("name the feeds the partner supplies (--feeds feed1,feed2)")
    known = feed_partners(Path(schemas_dir))
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise OnboardingError(f"unknown feed(s) {', '.join(unknown)}: a feed is a schema in {schemas_dir} "
                              f"(known: {', '.join(sorted(known))})")
    # A feed is collected from one inbox (its supplies are feed/period): a second supplier is refused, not merged.
    other = {f: p for f, p in (supplied_by_others or {}).items() if f in wanted and p != partner_id}
    if other:
        raise OnboardingError("; ".join(f"feed {f} is already supplied by the active partner {p!r}"
                                        for f, p in sorted(other.items()))
                              + ": remove that partner first (scripts/partner remove --id ...), or leave the feed out")
    return tuple(wanted)


@dataclass(frozen=True)
class SshPublicKey:
    """An SSH public key as a partner sent it, checked by ssh-keygen."""

    kind: str
    blob: str
    comment: str
    fingerprint: str        # SHA256:...
    bits: int

    def authorized_line(self) -> str:
        """Its authorized_keys line: ``restrict`` turns off forwarding, PTYs and rc files whatever sshd says."""
        return " ".join(p for p in ("restrict", self.kind, self.blob, self.comment) if p)


def read_ssh_public_key(path: Path | str) -> SshPublicKey:
    """The one SSH public key in ``path``; refuses a private key, several keys, options or an unknown type."""
    path = Path(path)
    text = _read_small(path, "SSH public key").decode("utf-8", "replace")
    if "PRIVATE KEY" in text:
        raise OnboardingError(f"{path} is an SSH PRIVATE key: the partner must keep it and send only the public "
                              f"half (the .pub file)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise OnboardingError(f"{path} must hold exactly one SSH public key line, not {len(lines)}")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise OnboardingError(f"{path} is not an SSH public key of a supported type ({', '.join(sorted(SSH_KEY_TYPES))}); "
                              f"authorized_keys options are not accepted")
    kind, blob = parts[0], parts[1]
    comment = re.sub(r"[^\w@.+-]", "_", parts[2].strip())[:80] if len(parts) > 2 else ""
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise OnboardingError(f"{path}: the key is not valid base64") from None
    if raw[4:4 + int.from_bytes(raw[:4], "big")].decode("ascii", "replace") != kind:
        raise OnboardingError(f"{path}: the key's data does not match its type {kind}")
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "key.pub"
        one.write_text(f"{kind} {blob}\n", encoding="ascii")
        done = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(one)], capture_output=True, text=True)
    match = re.match(r"(\d+) (SHA256:\S+)", done.stdout)
    if done.returncode != 0 or not match:
        raise OnboardingError(f"{path}: ssh-keygen cannot read the key: {done.stderr.strip() or done.stdout.strip()}")
    bits = int(match.group(1))
    if kind == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise OnboardingError(f"{path}: an RSA key must have at least {MIN_RSA_BITS} bits, not {bits} "
                              f"(an ed25519 key is better: ssh-keygen -t ed25519)")
    return SshPublicKey(kind, blob, comment, match.group(2), bits)


@dataclass(frozen=True)
class PgpPublicKey:
    """An OpenPGP public key as a partner sent it, checked by gpg without importing it."""

    fingerprint: str        # the primary key's: the value pinned
    uids: tuple[str, ...]
    path: Path


def _gpg(home: Path | str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # --no-autostart: nothing here needs a secret key, so no gpg-agent is started (and none is left behind in a
    # keyring that other processes use)
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-autostart", *args],
                          input=stdin, capture_output=True)


def read_openpgp_public_key(path: Path | str) -> PgpPublicKey:
    """The one OpenPGP public key in ``path``; refuses secret key material, several keys, and a key that cannot
    sign (or is revoked or expired)."""
    path = Path(path)
    _read_small(path, "OpenPGP public key")
    with tempfile.TemporaryDirectory() as home:
        os.chmod(home, 0o700)
        # Secret keys are looked for in the packets first: listing a secret key would hand it to a gpg-agent.
        packets = _gpg(home, "--list-packets", str(path))
        listing = packets.stdout.decode("utf-8", "replace")
        if ":secret key packet:" in listing or ":secret sub key packet:" in listing:
            raise OnboardingError(f"{path} holds SECRET key material: the partner must keep its secret key and send "
                                  f"only the public key (gpg --armor --export FINGERPRINT)")
        shown = _gpg(home, "--with-colons", "--show-keys", str(path))
    records = [ln.split(":") for ln in shown.stdout.decode("utf-8", "replace").splitlines()]
    primaries = [r for r in records if r[0] in ("pub", "sec")]
    if shown.returncode != 0 or not primaries:
        raise OnboardingError(f"{path} is not an OpenPGP public key file (export it with gpg --armor --export)")
    if len(primaries) != 1:
        raise OnboardingError(f"{path} holds {len(primaries)} keys: send exactly one (the key you sign with)")
    pub = primaries[0]
    if pub[1] in ("r", "e", "i"):
        state = {"r": "revoked", "e": "expired", "i": "invalid"}[pub[1]]
        raise OnboardingError(f"{path}: the key is {state}")
    if "S" not in pub[11]:
        raise OnboardingError(f"{path}: the key cannot sign (capabilities {pub[11]!r}); the observatory accepts only "
                              f"files signed by the partner, so send a key with a signing (sub)key")
    fpr = next((r[9] for r in records[records.index(pub) + 1:] if r[0] == "fpr"), "")
    uids = tuple(r[9] for r in records if r[0] == "uid")
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", fpr):
        raise OnboardingError(f"{path}: gpg shows no fingerprint for the key")
    return PgpPublicKey(fpr, uids, path)


def _read_small(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise OnboardingError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise OnboardingError(f"{path} is too large to be an {what}")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------------- machine state


def _run(*cmd: str) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _groups_of(user: pwd.struct_passwd) -> set[str]:
    import grp

    names = set()
    for gid in os.getgrouplist(user.pw_name, user.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def _password_field(name: str) -> str | None:
    """The account's shadow password field ('*': key logins only; '!...': locked), or None if unreadable."""
    try:
        with open("/etc/shadow", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split(":")
                if fields[0] == name:
                    return fields[1]
    except OSError:
        return None
    return None


def check_account(site: Site, partner_id: str) -> None:
    """Refuse an id that names an account which is not an observatory partner's (root, postgres, cspobs...)."""
    if partner_id in (site.observatory_user, site.observatory_group, site.partner_group, "root"):
        raise OnboardingError(f"{partner_id!r} is the name of one of the observatory's own accounts or groups")
    if site.external:
        return
    user = _user(partner_id)
    if user is None:
        return
    groups = _groups_of(user)
    ours = site.partner_group in groups or (
        # an account an earlier scripts/setup.sh made for a partner, before the partners' group existed
        user.pw_dir == str(site.trees[0].root / partner_id) and user.pw_shell.endswith("nologin")
        and site.observatory_group in groups)
    if not ours:
        raise OnboardingError(f"a system account {partner_id!r} already exists and is not an observatory partner's "
                              f"(not in group {site.partner_group}): choose another partner id")


def _ensure_account(site: Site, partner_id: str, changes: list[str]) -> int:
    """The partner's system account (locked until its keys and folders are in place); returns its uid."""
    import grp

    try:
        grp.getgrnam(site.observatory_group)
    except KeyError:
        raise OnboardingError(f"group {site.observatory_group} does not exist: run scripts/setup.sh") from None
    try:
        grp.getgrnam(site.partner_group)
    except KeyError:
        _run("groupadd", "--system", site.partner_group)
        changes.append(f"made the group {site.partner_group}")
    user = _user(partner_id)
    if user is None:
        # no password: useradd leaves it "!", locked, until _unlock once the keys and folders are in place
        _run("useradd", "--system", "-g", site.partner_group, "-G", site.observatory_group,
             "-d", str(site.trees[0].root / partner_id), "-M", "-s", NOLOGIN, partner_id)
        changes.append(f"made the system account {partner_id} (groups {site.partner_group}, {site.observatory_group})")
        user = _user(partner_id)
        assert user is not None
    missing = {site.partner_group, site.observatory_group} - _groups_of(user)
    if missing:
        _run("usermod", "-a", "-G", ",".join(sorted(missing)), partner_id)
        changes.append(f"added {partner_id} to {', '.join(sorted(missing))}")
    return user.pw_uid


def _unlock(partner_id: str, changes: list[str]) -> None:
    # With UsePAM no, sshd refuses a locked ("!") password field even for key logins; "*" allows keys only.
    if _password_field(partner_id) != "*":
        _run("usermod", "-p", "*", partner_id)
        changes.append(f"unlocked {partner_id}'s account for key logins")


def _lock(partner_id: str, changes: list[str]) -> None:
    field_ = _password_field(partner_id)
    if field_ is not None and not field_.startswith("!"):
        _run("usermod", "-L", partner_id)
        changes.append(f"locked {partner_id}'s account")


def _end_sessions(uid: int, changes: list[str]) -> None:
    """End the partner's open SFTP sessions: a revoked login must not keep a session it opened before."""
    ended = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uids = next(ln.split()[1:] for ln in status.read_text().splitlines() if ln.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if str(uid) in uids[:2]:
            try:
                os.kill(int(status.parent.name), signal.SIGTERM)
                ended += 1
            except OSError:
                pass
    if ended:
        changes.append(f"ended {ended} open SFTP session process(es)")


def _ensure_dir(path: Path, uid: int, gid: int, mode: int, changes: list[str]) -> None:
    made = not path.is_dir()
    if made:
        path.mkdir(mode=0o700)
    st = path.stat()
    fixed = []
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        fixed.append(f"owner {uid}:{gid}")
    if made or st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)   # after chown, which clears the setgid bit
        fixed.append(f"mode {mode:o}")
    if made:
        changes.append(f"made {path} ({uid}:{gid}, {mode:o})")
    elif fixed:
        changes.append(f"set {path} to {', '.join(fixed)}")


def _ensure_folders(site: Site, partner_id: str, uid: int, changes: list[str]) -> None:
    """The partner's chroot in every tree (root's, 0755: sshd insists) and its folders in it (the partner's and
    the observatory group's, setgid, so cspobs can move files and the partner can read its reports)."""
    import grp

    gid = site.observatory_gid if site.external else grp.getgrnam(site.observatory_group).gr_gid
    assert gid is not None
    for tree in site.trees:
        if not tree.root.is_dir():
            raise OnboardingError(f"SFTP tree {tree.root} does not exist: run scripts/setup.sh")
        chroot = tree.root / partner_id
        _ensure_dir(chroot, 0, 0, 0o755, changes)
        for sub in site.folders:
            _ensure_dir(chroot / sub, uid, gid, 0o2770, changes)


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    """Replace ``path`` atomically, only when its content changes (a login or a reader may be reading it)."""
    if path.exists() and path.read_text(encoding="utf-8") == text and path.stat().st_mode & 0o777 == mode:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def import_key(home: Path, key: PgpPublicKey) -> bool:
    """Import the partner's public key into the observatory's keyring; True if the keyring changed."""
    done = _gpg(home, "--status-fd", "1", "--import", str(key.path))
    status = done.stdout.decode("utf-8", "replace")
    oks = dict(reversed(ln.split()[2:4]) for ln in status.splitlines() if ln.startswith("[GNUPG:] IMPORT_OK "))
    if key.fingerprint not in oks:
        raise RuntimeError(f"gpg did not import {key.fingerprint} into {home}: {done.stderr.decode(errors='replace')}")
    return oks[key.fingerprint] != "0"


def export_observatory_key(site: Site) -> bool:
    """Write the observatory's public key where partners are sent it from; True if the file changed."""
    done = _gpg(site.observatory_gnupg_home, "--armor", "--export", site.observatory_fingerprint)
    if done.returncode != 0 or not done.stdout:
        raise OnboardingError(f"the observatory's key {site.observatory_fingerprint} is not in "
                              f"{site.observatory_gnupg_home}: run scripts/setup.sh")
    site.observatory_public_key.parent.mkdir(parents=True, exist_ok=True)
    return _write_if_changed(site.observatory_public_key, done.stdout.decode("ascii"), 0o644)


# ---------------------------------------------------------------------------------------------------- registry


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def registry_entry(site: Site, partner_id: str) -> dict[str, Any] | None:
    """The partner's registry entry, or None."""
    return read_registry(site.registry_dir).get(partner_id)


def _write_entry(site: Site, entry: dict[str, Any]) -> bool:
    site.registry_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    text = HEADER + yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=1000)
    # 0644: the pipeline reads it as whoever runs Airflow; only root (this command) writes it
    return _write_if_changed(site.registry_dir / f"{entry['id']}.yaml", text, 0o644)


# ---------------------------------------------------------------------------------------------------- Airflow


@dataclass
class AirflowOutcome:
    """What a pause or unpause did: DAG ids changed, already so, not in Airflow; or why Airflow was not used."""

    changed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Airflow:
    """This machine's Airflow, driven through its own CLI (``airflow dags ...``)."""

    home: Path
    cli: str
    env: dict[str, str]

    @classmethod
    def find(cls, environ: dict[str, str] | None = None) -> tuple[Airflow | None, str]:
        """The Airflow that AIRFLOW_HOME (or the clone's .run/airflow.env) configures, or None and why not."""
        env = dict(os.environ if environ is None else environ)
        if not env.get("AIRFLOW_HOME"):
            env.update(_airflow_env_file(REPO_ROOT / ".run" / "airflow.env"))
        home = env.get("AIRFLOW_HOME")
        if not home:
            return None, "AIRFLOW_HOME is not set (and there is no .run/airflow.env: run scripts/setup.sh)"
        if not (Path(home) / "airflow.cfg").exists() and not env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            return None, f"{home} has no airflow.cfg and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set"
        cli = Path(sys.executable).with_name("airflow")
        found = str(cli) if cli.exists() else shutil.which("airflow", path=env.get("PATH"))
        if not found:
            return None, "the airflow command is not installed here"
        # the DAG files import csp_observatory when they are parsed (airflow dags reserialize)
        plugins = str(REPO_ROOT / "plugins")
        if plugins not in env.get("PYTHONPATH", "").split(":"):
            env["PYTHONPATH"] = ":".join(p for p in (plugins, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return cls(Path(home), found, env), ""

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=900)

    def _toggle(self, dag_ids: Sequence[str], paused: bool) -> list[str]:
        """Pause or unpause these DAGs in the metadata DB; returns the ids that changed."""
        regex = "^(" + "|".join(re.escape(d) for d in dag_ids) + ")$"
        done = self._cli("dags", "pause" if paused else "unpause", "-y", "-o", "json", "--treat-dag-id-as-regex",
                         regex)
        if done.returncode != 0:
            raise RuntimeError(_tail(done))
        for line in reversed(done.stdout.splitlines()):
            if line.startswith("[{"):
                return sorted(row["dag_id"] for row in json.loads(line))
        return []      # "No paused DAGs were found"

    def _present(self) -> dict[str, bool]:
        """Every DAG in the metadata DB and whether it is paused."""
        done = self._cli("dags", "list", "-o", "json")
        if done.returncode != 0:
            raise RuntimeError(_tail(done))
        line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("[")), "[]")
        return {row["dag_id"]: str(row.get("is_paused")).lower() == "true" for row in json.loads(line)}

    def set_paused(self, dag_ids: Sequence[str], paused: bool, serialize_first: bool = False) -> AirflowOutcome:
        """Pause or unpause DAGs. ``airflow dags unpause`` only finds DAGs that are in the metadata DB, and a DAG the
        DAG processor has not parsed yet is not: then the DAG files are serialized (``airflow dags reserialize``
        parses them and updates the DB, dropping nothing) and the DAGs unpaused. ``serialize_first`` does that
        straight away (a new metadata DB). Pausing needs no such step: a feed DAG not in the DB is created paused."""
        out = AirflowOutcome()
        if not dag_ids:
            return out
        try:
            if serialize_first and not paused:
                self._reserialize()
            out.changed = self._toggle(dag_ids, paused)
            rest = [d for d in dag_ids if d not in out.changed]
            if rest:
                present = self._present()
                if not paused and not serialize_first and any(d not in present for d in rest):
                    self._reserialize()
                    out.changed += self._toggle(rest, paused)
                    rest = [d for d in rest if d not in out.changed]
                    present = self._present() if rest else present
                out.already = [d for d in rest if d in present]
                out.missing = [d for d in rest if d not in present]
        except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
            out.error = str(exc)
        return out

    def _reserialize(self) -> None:
        done = self._cli("dags", "reserialize")
        if done.returncode != 0:
            raise RuntimeError(_tail(done))

    @property
    def stamp(self) -> Path:
        return self.home / ENABLED_STAMP

    def enabled_here(self) -> set[str]:
        """The feeds this command has enabled in this Airflow."""
        try:
            return set(self.stamp.read_text(encoding="utf-8").split())
        except OSError:
            return set()

    def note_enabled(self, feeds: Iterable[str], enabled: bool) -> None:
        now = self.enabled_here()
        now = now | set(feeds) if enabled else now - set(feeds)
        try:
            _write_if_changed(self.stamp, "".join(f"{f}\n" for f in sorted(now)), 0o644)
        except OSError:
            pass        # a note only: without it, airflow-sync may enable a feed twice


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or "") + (done.stdout or "")
    return " | ".join(ln for ln in text.strip().splitlines()[-4:])


def _airflow_env_file(path: Path) -> dict[str, str]:
    """The plain ``export NAME='value'`` lines of a clone's .run/airflow.env (values that expand nothing)."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.fullmatch(r"export ([A-Z_][A-Z0-9_]*)='([^'$]*)'", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def dag_id(feed: str) -> str:
    """The feed's DAG (dags/feeds.py)."""
    return f"feed_{feed}"


def _airflow_report(airflow: Airflow | None, why: str, feeds: Sequence[str], paused: bool,
                    outcome: AirflowOutcome | None) -> list[str]:
    """Lines saying what happened to the feeds' DAGs, and what to run if Airflow could not be reached."""
    if not feeds:
        return []
    verb = "pause" if paused else "unpause"
    dags = " ".join(dag_id(f) for f in feeds)
    todo = (f"run, where Airflow runs: airflow dags {verb} DAG_ID for each of {dags}"
            + ("" if paused else " (after airflow dags reserialize if the DAG is not listed), "
                                 "or scripts/partner airflow-sync"))
    if airflow is None and why == "--no-airflow":
        return [f"Airflow: left alone (--no-airflow); {dags} not {verb}d here"
                + ("" if paused else ": scripts/partner airflow-sync does it")]
    if airflow is None:
        return [f"Airflow: not reached ({why}). The registry is updated, but the DAGs are not {verb}d: {todo}"]
    assert outcome is not None
    if outcome.error:
        return [f"Airflow at {airflow.home}: {verb} failed ({outcome.error}). The registry is updated: {todo}"]
    lines = []
    if outcome.changed:
        lines.append(f"Airflow: {verb}d {', '.join(outcome.changed)}")
    if outcome.already:
        lines.append(f"Airflow: {', '.join(outcome.already)} already {verb}d")
    if outcome.missing:
        lines.append(f"Airflow: {', '.join(outcome.missing)} not in Airflow"
                     + (" (created paused when it is parsed)" if paused
                        else " even after airflow dags reserialize: see airflow dags list-import-errors"))
    return lines


def _set_feeds(airflow: Airflow | None, why: str, feeds: Sequence[str], paused: bool,
               serialize_first: bool = False) -> list[str]:
    """Pause or unpause the feeds' DAGs, note which this command has enabled there; lines to print."""
    outcome = None
    if airflow is not None and feeds:
        outcome = airflow.set_paused([dag_id(f) for f in feeds], paused, serialize_first)
        if not outcome.error:
            done = set(outcome.changed) | set(outcome.already)
            airflow.note_enabled([f for f in feeds if dag_id(f) in done or paused], not paused)
    return _airflow_report(airflow, why, feeds, paused, outcome)


def _airflow_ok(lines: Sequence[str]) -> bool:
    return not any(" failed (" in ln or "not reached" in ln or "even after" in ln for ln in lines)


# ---------------------------------------------------------------------------------------------------- commands


@dataclass
class Result:
    """What a command did (``changes``: empty when it changed nothing), and what to tell people."""

    partner_id: str
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    enable: list[str] = field(default_factory=list)       # feeds to unpause in Airflow
    disable: list[str] = field(default_factory=list)      # feeds to pause
    letter: str = ""


@dataclass(frozen=True)
class Request:
    """One partner to onboard."""

    partner_id: str
    ssh_key: Path
    gpg_key: Path
    feeds: tuple[str, ...]
    contact: str | None = None


@dataclass(frozen=True)
class Checked:
    """A request whose every part passed the checks."""

    partner_id: str
    ssh: SshPublicKey
    pgp: PgpPublicKey
    feeds: tuple[str, ...]
    contact: str | None


def check_request(site: Site, req: Request) -> Checked:
    """Every check onboarding makes, before it changes anything (no root needed)."""
    pid = check_partner_id(req.partner_id)
    others = {f: other for other, e in read_registry(site.registry_dir).items()
              if other != pid and e["status"] == "active" for f in e.get("feeds") or ()}
    feeds = check_feeds(pid, req.feeds, site.schemas_dir, others)
    ssh = read_ssh_public_key(req.ssh_key)
    pgp = read_openpgp_public_key(req.gpg_key)
    check_account(site, pid)
    return Checked(pid, ssh, pgp, feeds, req.contact)


def _other_suppliers(site: Site, partner_id: str) -> set[str]:
    """The feeds that active partners other than this one supply."""
    return {f for pid, e in read_registry(site.registry_dir).items()
            if pid != partner_id and e["status"] == "active" for f in e.get("feeds") or ()}


def onboard(site: Site, req: Checked) -> Result:
    """Make (or bring up to date) the partner's account, folders, key and registry entry. Changes nothing when
    all of them are already as asked. Airflow is left to the caller (``Result.enable``/``disable``)."""
    pid = req.partner_id
    res = Result(pid)
    before = registry_entry(site, pid)
    if site.external:
        taken = [int(e["uid"]) for e in read_registry(site.registry_dir).values() if e.get("uid") is not None]
        uid = int(before["uid"]) if before and before.get("uid") is not None else max(taken + [site.first_uid - 1]) + 1
    else:
        uid = _ensure_account(site, pid, res.changes)
    _ensure_folders(site, pid, uid, res.changes)
    if import_key(site.observatory_gnupg_home, req.pgp):
        res.changes.append(f"imported key {req.pgp.fingerprint} into the observatory's keyring")
    if export_observatory_key(site):
        res.changes.append(f"exported the observatory's public key to {site.observatory_public_key}")
    if _write_if_changed(site.authorized_keys_dir / pid, req.ssh.authorized_line() + "\n", 0o644):
        res.changes.append(f"installed {pid}'s SSH key {req.ssh.fingerprint}")

    now = _now()
    entry: dict[str, Any] = {
        "id": pid, "status": "active", "sftp_user": pid, "uid": uid,
        "signing_fingerprint": req.pgp.fingerprint, "ssh_key_fingerprint": req.ssh.fingerprint,
        "feeds": list(req.feeds),
        "contact": req.contact if req.contact is not None else (before or {}).get("contact") or "",
        "onboarded_at": now, "removed_at": None, "history": list((before or {}).get("history") or []),
    }
    events: list[dict[str, Any]] = []
    if before is None or before["status"] != "active":
        again = before is not None
        events.append({"event": "onboarded again" if again else "onboarded", "signing_fingerprint": req.pgp.fingerprint,
                       "ssh_key_fingerprint": req.ssh.fingerprint, "feeds": list(req.feeds)})
        res.enable = list(req.feeds)
        res.changes.append(f"{'restored' if again else 'registered'} partner {pid}, pinned {req.pgp.fingerprint}")
    else:
        entry["onboarded_at"] = before.get("onboarded_at") or now
        if before["signing_fingerprint"] != req.pgp.fingerprint:
            events.append({"event": "signing key replaced", "old": before["signing_fingerprint"],
                           "new": req.pgp.fingerprint})
            res.notes.append(f"the pinned signing key is REPLACED: {before['signing_fingerprint']} -> "
                             f"{req.pgp.fingerprint}; files signed with the old key are refused from now on")
        if before.get("ssh_key_fingerprint") != req.ssh.fingerprint:
            events.append({"event": "ssh key replaced", "old": before.get("ssh_key_fingerprint"),
                           "new": req.ssh.fingerprint})
            res.notes.append(f"the SSH key is replaced: {before.get('ssh_key_fingerprint')} -> {req.ssh.fingerprint}")
        old_feeds = list(before.get("feeds") or [])
        if old_feeds != list(req.feeds):
            events.append({"event": "feeds changed", "old": old_feeds, "new": list(req.feeds)})
            res.enable = [f for f in req.feeds if f not in old_feeds]
            res.disable = [f for f in old_feeds if f not in req.feeds and f not in _other_suppliers(site, pid)]
        if (before.get("contact") or "") != entry["contact"]:
            events.append({"event": "contact changed"})
        if before.get("uid") != uid:
            events.append({"event": "account number recorded", "uid": uid})
    entry["history"] += [{"at": now, **e} for e in events]
    if events and _write_entry(site, entry):
        res.changes.append(f"wrote the registry entry {site.registry_dir / (pid + '.yaml')}")
    if not site.external:
        _unlock(pid, res.changes)
    res.letter = letter(site, pid, req.pgp.fingerprint, entry["feeds"])
    if site.external and res.changes:
        res.notes.append("the SFTP container makes the account from the registry: run "
                         "docker compose exec sftp csp-sftp-accounts (docs/ONBOARDING.md)")
    return res


def remove(site: Site, partner_id: str) -> Result:
    """Revoke the partner's SFTP login and mark it removed; keep its folders, files, keyring entry and data."""
    pid = check_partner_id(partner_id)
    res = Result(pid)
    before = registry_entry(site, pid)
    if before is None:
        raise OnboardingError(f"partner {pid!r} is not in the registry {site.registry_dir} (scripts/partner list)")
    if site.authorized_keys_dir.joinpath(pid).exists():
        site.authorized_keys_dir.joinpath(pid).unlink()
        res.changes.append(f"removed {pid}'s SSH key: it can no longer log in")
    user = None if site.external else _user(pid)
    if user is not None:
        _lock(pid, res.changes)
        _end_sessions(user.pw_uid, res.changes)
    if before["status"] == "active":
        now = _now()
        entry = {**before, "status": "removed", "removed_at": now,
                 "history": [*(before.get("history") or []), {"at": now, "event": "removed"}]}
        _write_entry(site, entry)
        res.changes.append(f"marked {pid} removed in the registry: nothing is collected for it")
        others = _other_suppliers(site, pid)
        res.disable = [f for f in before.get("feeds") or () if f not in others]
        kept = [f for f in before.get("feeds") or () if f in others]
        if kept:
            res.notes.append(f"feeds still supplied by other partners stay enabled: {', '.join(kept)}")
    else:
        res.notes.append(f"{pid} was already removed on {before.get('removed_at')}")
    res.notes.append(f"kept: {pid}'s folders and files in {', '.join(str(t.root / pid) for t in site.trees)}, its "
                     f"registry history, its key in the observatory's keyring and every row loaded from it "
                     f"(scripts/partner onboard restores it)")
    if site.external and res.changes:
        res.notes.append("the SFTP container locks the account from the registry: run "
                         "docker compose exec sftp csp-sftp-accounts")
    return res


def host_key_fingerprint(site: Site) -> tuple[str, str]:
    """The SFTP host key's SHA256 fingerprint and its known_hosts line for the announced host and port."""
    done = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(site.host_key)], capture_output=True,
                          text=True)
    fpr = done.stdout.split()[1] + " " + done.stdout.split()[-1] if done.returncode == 0 else "(unreadable)"
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(site.host_key)], capture_output=True, text=True) \
        if not str(site.host_key).endswith(".pub") else None
    text = pub.stdout if pub is not None else site.host_key.read_text(encoding="ascii", errors="replace")
    key = " ".join(text.split()[:2])
    host = site.sftp_host if site.sftp_port == 22 else f"[{site.sftp_host}]:{site.sftp_port}"
    return fpr, f"{host} {key}"


def _spaced(fpr: str) -> str:
    return " ".join(fpr[i:i + 4] for i in range(0, len(fpr), 4))


def letter(site: Site, partner_id: str, pinned: str, feeds: Sequence[str]) -> str:
    """What to send the partner (nothing in it is secret; read the fingerprints out on the phone as well)."""
    host_fpr, known_hosts = host_key_fingerprint(site)
    return "\n".join([
        f"Send partner {partner_id} this (nothing in it is secret; confirm both fingerprints by phone too):",
        "",
        f"  SFTP host            {site.sftp_host}",
        f"  SFTP port            {site.sftp_port}",
        f"  SFTP user            {partner_id}   (log in with the SSH key you sent us; no password)",
        f"  host key             {host_fpr}",
        "                       check it on your first connection; or put this line in ~/.ssh/known_hosts:",
        f"                       {known_hosts}",
        f"  folders              /inbox (upload here), /reports, /processed, /quarantine",
        f"  feeds                {', '.join(feeds)}",
        f"  observatory's key    {_spaced(site.observatory_fingerprint)}",
        f"                       file: {site.observatory_public_key}  (attach it)",
        f"  your pinned key      {_spaced(pinned)}  (only files signed by this key are accepted)",
        "  guide                docs/PARTNERS.md, 'Once, when you join' and 'Connecting by SFTP'",
    ])


def list_partners(site: Site) -> str:
    """The registry as a table."""
    rows = [("id", "status", "feeds", "signing key", "onboarded", "removed")]
    for pid, e in read_registry(site.registry_dir).items():
        rows.append((pid, e["status"], ",".join(e.get("feeds") or ()), e["signing_fingerprint"],
                     str(e.get("onboarded_at") or ""), str(e.get("removed_at") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ---------------------------------------------------------------------------------------------------- the CLI


def _requests_from_file(path: Path) -> list[Request]:
    """``apply``'s list: [{id, ssh_key, gpg_key, feeds, contact}, ...]."""
    with open(path, encoding="utf-8") as fh:
        items = yaml.safe_load(fh) or []
    try:
        return [Request(str(i["id"]), Path(i["ssh_key"]), Path(i["gpg_key"]), tuple(i["feeds"]), i.get("contact"))
                for i in items]
    except (KeyError, TypeError) as exc:
        raise OnboardingError(f"{path}: each item needs id, ssh_key, gpg_key and feeds ({exc})") from None


def _print_result(res: Result, verbose_letter: bool) -> None:
    if res.changes:
        print(f"{res.partner_id}:")
        for c in res.changes:
            print(f"  - {c}")
    else:
        print(f"{res.partner_id}: nothing to change (already as asked)")
    for n in res.notes:
        print(f"  NOTE: {n}")
    if verbose_letter and res.letter:
        print()
        print(res.letter)


@contextlib.contextmanager
def registry_lock(site: Site) -> Iterator[None]:
    """One change to the partners at a time: two onboardings at once would race on accounts and entries."""
    site.registry_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(site.registry_dir / ".lock", "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise OnboardingError("run me as root (sudo scripts/partner ...): I make system accounts and folders")


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/partner``: onboard, remove, list, apply, airflow-sync."""
    ap = argparse.ArgumentParser(prog="scripts/partner", description="Onboard and remove the observatory's partners "
                                 "(docs/ONBOARDING.md).")
    ap.add_argument("--site", type=Path, default=None, help=f"the site file (default: $CSP_SITE or {SITE_FILE})")
    sub = ap.add_subparsers(dest="command", required=True)
    on = sub.add_parser("onboard", help="onboard a partner, or bring it up to date (idempotent)")
    on.add_argument("--id", required=True, help="partner id: the partner.id of its feeds' schemas; its SFTP user")
    on.add_argument("--ssh-key", required=True, type=Path, help="the partner's SSH public key (.pub)")
    on.add_argument("--gpg-key", required=True, type=Path, help="the partner's OpenPGP public key (.asc)")
    on.add_argument("--feeds", required=True, help="comma-separated feeds it supplies (include/schemas/<feed>.yaml)")
    on.add_argument("--contact", default=None, help="who to contact at the partner (kept if not given)")
    on.add_argument("--no-airflow", action="store_true", help="leave the DAGs alone (registry only)")
    rm = sub.add_parser("remove", help="revoke a partner's login and pause its feeds; keeps its data")
    rm.add_argument("--id", required=True)
    rm.add_argument("--no-airflow", action="store_true")
    sub.add_parser("list", help="the partner registry")
    batch = sub.add_parser("apply", help="onboard every partner a YAML list names (scripts/setup.sh uses it)")
    batch.add_argument("file", type=Path)
    batch.add_argument("--no-airflow", action="store_true")
    batch.add_argument("--keep-removed", action="store_true",
                       help="leave partners the registry marks removed as they are (scripts/setup.sh)")
    sub.add_parser("airflow-sync", help="unpause the active partners' feeds this Airflow has not had enabled yet")
    args = ap.parse_args(argv)
    try:
        site = load_site(args.site)
        if args.command == "list":
            print(list_partners(site))
            return 0
        if args.command == "airflow-sync":
            return _airflow_sync(site)
        _need_root()
        airflow, why = (None, "--no-airflow") if args.no_airflow else Airflow.find()
        if args.command == "remove":
            with registry_lock(site):
                res = remove(site, args.id)
            _print_result(res, False)
            for line in _set_feeds(airflow, why, res.disable, True):
                print(line)
            return 0
        if args.command == "onboard":
            reqs = [Request(args.id, args.ssh_key, args.gpg_key, tuple(args.feeds.split(",")), args.contact)]
        else:
            reqs = _requests_from_file(args.file)
            if args.keep_removed:
                registry = read_registry(site.registry_dir)
                for r in reqs:
                    if registry.get(r.partner_id, {}).get("status") == "removed":
                        print(f"{r.partner_id}: removed on {registry[r.partner_id].get('removed_at')}, left so")
                reqs = [r for r in reqs if registry.get(r.partner_id, {}).get("status") != "removed"]
        with registry_lock(site):
            checked = [check_request(site, r) for r in reqs]      # every check first: a bad item changes nothing
            results = [onboard(site, c) for c in checked]
        for res in results:
            _print_result(res, args.command == "onboard")
        for paused, feeds in ((False, [f for r in results for f in r.enable]),
                              (True, [f for r in results for f in r.disable])):
            for line in _set_feeds(airflow, why, feeds, paused):
                print(line)
        return 0
    except OnboardingError as exc:
        print(f"scripts/partner: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"scripts/partner: failed: {exc}", file=sys.stderr)
        return 1


def _airflow_sync(site: Site) -> int:
    """Unpause the feeds of active partners that this Airflow has not had enabled by this command yet (a new
    Airflow metadata DB, or one that was unreachable when the partner was onboarded)."""
    airflow, why = Airflow.find()
    active = sorted({f for e in read_registry(site.registry_dir).values() if e["status"] == "active"
                     for f in e.get("feeds") or ()})
    if airflow is None:
        print(f"Airflow: not reached ({why})", file=sys.stderr)
        return 1
    enabled = airflow.enabled_here()
    todo = [f for f in active if f not in enabled]
    if not todo:
        print(f"Airflow at {airflow.home}: every active partner's feed is already enabled")
        return 0
    # nothing enabled here yet: most likely a new metadata DB, where no DAG has been parsed
    lines = _set_feeds(airflow, why, todo, False, serialize_first=not enabled)
    for line in lines:
        print(line)
    return 0 if _airflow_ok(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
