"""Where the observatory's services, keys and working folders are.

Everything comes from one YAML file (``CSP_CONFIG``, default ``<repo>/.run/observatory.yaml``),
written by ``scripts/setup.sh``; single values can be overridden with environment variables so a
deployment can point at an existing PostGIS (``CSP_DATABASE_URL``) or SFTP server. The file names the
machine's secrets (SSH keys, gpg keyrings under ``/var/lib/csp-observatory``) by path, and holds the loader's
database password in its URL: every clone's copy holds the same one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import yaml

from csp_observatory.schema import REPO_ROOT

DEFAULT_CONFIG: Final = REPO_ROOT / ".run" / "observatory.yaml"


@dataclass(frozen=True)
class PartnerKeys:
    """What the observatory pins for one partner."""

    sftp_user: str
    signing_fingerprint: str          # primary key fingerprint the partner signs with
    contact: str = ""


@dataclass(frozen=True)
class Settings:
    """The observatory's runtime settings."""

    database_url: str                  # postgresql://user@host:port/db (the loader's account)
    sftp_host: str
    sftp_port: int
    sftp_user: str                     # the observatory's own SFTP account
    sftp_key_file: Path                # its private key
    sftp_host_key: str                 # pinned host key: "ssh-ed25519 AAAA..."
    sftp_root: str                     # remote folder holding one folder per partner
    gnupg_home: Path                   # the observatory's keyring (decryption key + partner keys)
    staging_dir: Path                  # private (0700) working area for plaintext
    reports_dir: Path                  # the observatory's copy of every quality report
    partners: dict[str, PartnerKeys] = field(default_factory=dict)
    gpg_passphrase: str | None = None  # for the observatory's secret key, if it has one
    stable_polls: int = 2              # a file without .part must keep its size over this many polls
    poll_interval_s: float = 1.0

    def partner(self, partner_id: str) -> PartnerKeys:
        try:
            return self.partners[partner_id]
        except KeyError:
            raise KeyError(f"no keys are registered for partner {partner_id!r} in the observatory config") from None

    def inbox(self, partner_id: str) -> str:
        return f"{self.sftp_root}/{self.partner(partner_id).sftp_user}/inbox"

    def partner_folder(self, partner_id: str, sub: str) -> str:
        """A partner's SFTP folder: inbox, quarantine, processed or reports."""
        return f"{self.sftp_root}/{self.partner(partner_id).sftp_user}/{sub}"


_ENV: Final = {
    "database_url": "CSP_DATABASE_URL",
    "sftp_host": "CSP_SFTP_HOST",
    "sftp_port": "CSP_SFTP_PORT",
    "sftp_user": "CSP_SFTP_USER",
    "sftp_key_file": "CSP_SFTP_KEY_FILE",
    "sftp_host_key": "CSP_SFTP_HOST_KEY",
    "gnupg_home": "CSP_GNUPG_HOME",
    "staging_dir": "CSP_STAGING_DIR",
}


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Settings from a parsed config document (paths become Paths, partners PartnerKeys)."""
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in kinds:
            raise ValueError(f"unknown setting {key!r}")
        if key == "partners":
            value = {pid: PartnerKeys(**p) for pid, p in (value or {}).items()}
        elif "Path" in str(kinds[key]):
            value = Path(value)
        elif key in ("sftp_port", "stable_polls"):
            value = int(value)
        values[key] = value
    return Settings(**values)


def load_settings(path: Path | None = None) -> Settings:
    """Read the config file (``path`` if given, else ``CSP_CONFIG``, else the default), then apply environment
    overrides."""
    path = Path(path) if path is not None else Path(os.environ.get("CSP_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run scripts/setup.sh, or set CSP_CONFIG")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    for key, env in _ENV.items():
        if os.environ.get(env):
            raw[key] = os.environ[env]
    return settings_from_dict(raw)
