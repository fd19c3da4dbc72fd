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

This module holds the commands (:func:`onboard`, :func:`remove`, :func:`letter`, :func:`list_partners`) and the CLI
(:func:`main`); their parts are ``onboarding_site.py`` (the site file and the registry), ``onboarding_checks.py``
(the id, feeds and keys), ``onboarding_accounts.py`` (account, folders, keyring) and ``onboarding_airflow.py``
(pausing and unpausing the feeds' DAGs).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csp_observatory.config import read_registry
from csp_observatory.onboarding_accounts import (_end_sessions, _ensure_account, _ensure_folders, _lock, _unlock, _user,
                                                 check_account, export_observatory_key, import_key)
from csp_observatory.onboarding_airflow import Airflow, _airflow_sync, _set_feeds
from csp_observatory.onboarding_checks import (PgpPublicKey, SshPublicKey, check_feeds, check_partner_id,
                                               read_openpgp_public_key, read_ssh_public_key)
from csp_observatory.onboarding_checks import feed_partners  # noqa: F401  (now in onboarding_checks; for setup.sh)
from csp_observatory.onboarding_site import (SITE_FILE, OnboardingError, Site, _now, _write_entry, _write_if_changed,
                                             load_site, registry_entry, registry_lock)

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


if __name__ == "__main__":
    sys.exit(main())
