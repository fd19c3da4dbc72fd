"""A partner's place on this machine: its SFTP account, its folders and its key in the observatory's keyring.

The account is a system user in the partners' group, which the sshd config jails by group (so the sshd config is
never rewritten); :func:`check_account` refuses a name that belongs to someone else. Its folders are made in every
SFTP tree of the site; :func:`import_key` imports its OpenPGP key. Removing a partner locks the account and ends its
sessions (:func:`_lock`, :func:`_end_sessions`). Changing accounts needs root.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Final

from csp_observatory.onboarding_checks import PgpPublicKey, _gpg
from csp_observatory.onboarding_site import OnboardingError, Site, _write_if_changed

NOLOGIN: Final = "/usr/sbin/nologin"


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
