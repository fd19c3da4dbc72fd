"""Where the observatory's services, keys and working folders are.

Everything comes from one YAML file (``CSP_CONFIG``, default ``<repo>/.run/observatory.yaml``),
written by ``scripts/setup.sh``; single values can be overridden with environment variables so a
deployment can point at an existing PostGIS (``CSP_DATABASE_URL``) or SFTP server. The file names the
machine's secrets (SSH keys, gpg keyrings under ``/var/lib/csp-observatory``) by path, and holds the loader's
database password in its URL: every clone's copy holds the same one.

Partners come from two places: the file's own ``partners`` map, and the machine's partner registry
(``partners_dir``: one YAML file per partner, written only by ``scripts/partner``, see docs/ONBOARDING.md). The
registry wins: an active entry replaces the file's entry of the same id, and a removed entry takes the partner
out altogether, so nothing is collected for a partner whose SFTP login has been revoked.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import yaml

from csp_observatory.schema import REPO_ROOT

DEFAULT_CONFIG: Final = REPO_ROOT / ".run" / "observatory.yaml"
#: Registry entry states: ``active`` partners are collected for; ``removed`` ones are kept for the record only.
PARTNER_STATES: Final = ("active", "removed")
#: A partner id: also its SFTP (system) user name, so it must be a safe one.
PARTNER_ID: Final = re.compile(r"^[a-z][a-z0-9_]{1,30}$")


@dataclass(frozen=True)
class PartnerKeys:
    """What the observatory pins for one partner."""

    sftp_user: str
    signing_fingerprint: str          # primary key fingerprint the partner signs with
    contact: str = ""
    feeds: tuple[str, ...] = ()       # the feeds (schema ``feed`` names) it supplies; empty: not recorded


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
    staging_dir: Path                  # private (0700) working area for plaintext (this machine's)
    reports_dir: Path                  # the observatory's copy of every quality report
    partners: dict[str, PartnerKeys] = field(default_factory=dict)
    gpg_passphrase: str | None = None  # for the observatory's secret key, if it has one
    stable_polls: int = 2              # a file without .part must keep its size over this many polls
    poll_interval_s: float = 1.0
    partners_dir: Path | None = None   # the machine's partner registry (scripts/partner), merged into partners
    # partners the registry marks removed, with the date: absent from ``partners``, named in errors
    removed_partners: dict[str, str] = field(default_factory=dict)
    # The staging store every worker reaches (staging.py): a local folder, a file:// URL of a shared volume, or an
    # fsspec URL (s3://bucket/prefix). Unset: staging_dir, which does for one machine.
    staging_url: str | None = None
    # A stage's files in processes of their own (file_workers.py): at most this many (0: the cores the task may use;
    # 1: never), for a supply whose staged files come to at least file_workers_min_mb.
    file_workers: int = 0
    file_workers_min_mb: int = 32
    # 2: a supply of at least file_workers_min_mb is loaded on two connections at once (loading.split_files), on a
    # machine of two cores or more; 1: on one. On two cores the load of 1M offences took 2-3 s less (15.3 s against
    # 17.3 s), for 1.4x its memory rise, 1.95 GB at its peak (measured, benchmarks/README.md).
    load_connections: int = 2

    def partner(self, partner_id: str) -> PartnerKeys:
        try:
            return self.partners[partner_id]
        except KeyError:
            if partner_id in self.removed_partners:
                raise KeyError(f"partner {partner_id!r} was removed from the observatory on "
                               f"{self.removed_partners[partner_id]}: its SFTP login is revoked and nothing is "
                               f"collected for it (onboard it again with scripts/partner onboard)") from None
            where = f" or in the partner registry {self.partners_dir}" if self.partners_dir else ""
            raise KeyError(f"no keys are registered for partner {partner_id!r} in the observatory config{where} "
                           f"(onboard it with scripts/partner onboard)") from None

    def suppliers(self, feed: str) -> list[str]:
        """The active partners that supply ``feed`` (sorted ids); empty when nobody does."""
        return sorted(pid for pid, p in self.partners.items() if feed in p.feeds)

    def supplier(self, feed: str, default: str) -> str:
        """The partner whose inbox ``feed`` is collected from: the one active partner the registry says supplies it,
        else ``default`` (the schema's ``partner.id``). One partner's inbox may serve several feeds."""
        found = self.suppliers(feed)
        if len(found) > 1:
            raise KeyError(f"feed {feed!r} is supplied by more than one active partner ({', '.join(found)}): "
                           f"a feed is collected from one inbox; remove all but one (scripts/partner remove)")
        return found[0] if found else default

    def inbox_feeds(self, partner_id: str) -> tuple[str, ...]:
        """The feeds whose files a partner's inbox holds, as the registry records them (may be empty)."""
        keys = self.partners.get(partner_id)
        return keys.feeds if keys else ()

    def feed_enabled(self, feed: str) -> bool:
        """Whether an active partner supplies ``feed``."""
        return bool(self.suppliers(feed))

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
    "staging_url": "CSP_STAGING_URL",
    "partners_dir": "CSP_PARTNERS_DIR",
    "file_workers": "CSP_FILE_WORKERS",
    "file_workers_min_mb": "CSP_FILE_WORKERS_MIN_MB",
    "load_connections": "CSP_LOAD_CONNECTIONS",
}


def partner_keys(raw: dict[str, Any]) -> PartnerKeys:
    """A config file's or registry entry's partner as PartnerKeys (other registry fields are ignored)."""
    return PartnerKeys(sftp_user=str(raw["sftp_user"]), signing_fingerprint=str(raw["signing_fingerprint"]),
                       contact=str(raw.get("contact") or ""), feeds=tuple(str(f) for f in raw.get("feeds") or ()))


#: libyaml's safe loader where PyYAML was built with it: the same documents, read about 10x faster. Every task reads
#: the settings and the partner registry (a file per partner), so the pure-Python loader was a fixed cost per task.
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(source: Any) -> Any:
    """A YAML document (text or an open file) read as ``yaml.safe_load`` reads it, with libyaml when present."""
    return yaml.load(source, Loader=_YAML_LOADER)


def read_registry(folder: Path) -> dict[str, dict[str, Any]]:
    """Every entry of a partner registry folder (``<id>.yaml``), active or removed, by id.

    A folder that does not exist is an empty registry (a machine nobody has onboarded a partner on yet). An entry
    that cannot be read is an error, never skipped: its pin decides whose files are accepted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            with open(path, encoding="utf-8") as fh:
                entry = read_yaml(fh)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"partner registry entry {path} cannot be read: {exc}") from None
        if not isinstance(entry, dict) or entry.get("id") != path.stem:
            raise ValueError(f"partner registry entry {path} does not describe partner {path.stem!r}")
        missing = [k for k in ("sftp_user", "signing_fingerprint", "status") if not entry.get(k)]
        if missing or entry["status"] not in PARTNER_STATES:
            raise ValueError(f"partner registry entry {path} lacks {', '.join(missing) or 'a valid status'}")
        entries[path.stem] = entry
    return entries


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Settings from a parsed config document (paths become Paths, partners PartnerKeys), with the partner
    registry (``partners_dir``) merged in: active entries replace the file's, removed ones take it out."""
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in kinds:
            raise ValueError(f"unknown setting {key!r}")
        if key == "partners":
            value = {pid: partner_keys(p) for pid, p in (value or {}).items()}
        elif value is not None and "Path" in str(kinds[key]):
            value = Path(value)
        elif key in ("sftp_port", "stable_polls", "file_workers", "file_workers_min_mb", "load_connections"):
            value = int(value)
        values[key] = value
    if values.get("partners_dir"):
        partners = dict(values.get("partners") or {})
        removed = dict(values.get("removed_partners") or {})
        for pid, entry in read_registry(values["partners_dir"]).items():
            if entry["status"] == "active":
                partners[pid] = partner_keys(entry)
                removed.pop(pid, None)
            else:
                partners.pop(pid, None)
                removed[pid] = str(entry.get("removed_at") or "an unrecorded date")
        values["partners"], values["removed_partners"] = partners, removed
    return Settings(**values)


def load_settings(path: Path | None = None) -> Settings:
    """Read the config file (``path`` if given, else ``CSP_CONFIG``, else the default), then apply environment
    overrides."""
    path = Path(path) if path is not None else Path(os.environ.get("CSP_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run scripts/setup.sh, or set CSP_CONFIG")
    with open(path, encoding="utf-8") as fh:
        raw = read_yaml(fh) or {}
    for key, env in _ENV.items():
        if os.environ.get(env):
            raw[key] = os.environ[env]
    return settings_from_dict(raw)


def stage_queues(spec: str | None = None) -> dict[str, str]:
    """The Celery queue of each task of a feed's DAG, from ``CSP_STAGE_QUEUES`` (``task=queue`` pairs separated by
    commas, e.g. ``decrypt_and_verify=secure,parse_and_validate=secure``; ``*=queue`` for every other task).

    Read at DAG-parse time from the environment only (no file, no network). A task not named runs on Airflow's
    default queue. A malformed entry is an error: a task sent to a queue no worker listens on would wait forever.
    """
    spec = os.environ.get("CSP_STAGE_QUEUES", "") if spec is None else spec
    queues: dict[str, str] = {}
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        task_id, sep, queue = (x.strip() for x in item.partition("="))
        if not sep or not task_id or not queue:
            raise ValueError(f"CSP_STAGE_QUEUES: {item!r} is not task=queue")
        queues[task_id] = queue
    return queues


def stage_queue(task_id: str, default: str, queues: dict[str, str] | None = None) -> str:
    """The queue one task runs on: its own entry, else the ``*`` entry, else ``default`` (Airflow's)."""
    queues = stage_queues() if queues is None else queues
    return queues.get(task_id) or queues.get("*") or default
