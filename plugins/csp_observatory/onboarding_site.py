"""What ``scripts/partner`` knows about this machine, and the partner registry it keeps.

The site file (:func:`load_site`, ``/etc/csp-observatory/site.yaml``, written by ``scripts/setup.sh``) names the SFTP
trees, the registry, the keyring and what to tell partners. The registry is one YAML file per partner
(``config.read_registry`` reads it); :func:`registry_lock` lets one change to the partners run at a time. Files are
written atomically and only when their content changes (:func:`_write_if_changed`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import yaml

from csp_observatory.config import read_registry
from csp_observatory.schema import SCHEMA_DIR

SITE_FILE: Final = Path("/etc/csp-observatory/site.yaml")


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
