"""Fixtures for the integration tests: the real services that scripts/setup.sh starts.

PostGIS (``db``), the project's sshd as the partner and as the observatory (``partner_sftp``,
``observatory_sftp``), and the config files setup.sh writes (``settings``, ``demo_config``).
"""
from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import psycopg2
import pytest
import yaml

from csp_observatory.config import DEFAULT_CONFIG, Settings, load_settings

PARTNER_FOLDERS = ("inbox", "quarantine", "processed", "reports")
SETUP_HINT = "run scripts/setup.sh first"


def _config_path() -> Path:
    return Path(os.environ.get("CSP_CONFIG", DEFAULT_CONFIG))


def _config_database_url() -> str | None:
    """The database URL the config file names, if the file exists and names one."""
    path = _config_path()
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return raw.get("database_url") or None


# Other modules' integration tests take their database from CSP_DATABASE_URL: point it at the database the
# config names, unless the environment already chose one (then load_settings() applies it too).
if not os.environ.get("CSP_DATABASE_URL") and (_url := _config_database_url()):
    os.environ["CSP_DATABASE_URL"] = _url


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The observatory's settings, as written by scripts/setup.sh."""
    if not _config_path().exists():
        pytest.fail(f"{_config_path()} is missing: {SETUP_HINT}", pytrace=False)
    return load_settings()


@pytest.fixture(scope="session")
def demo_config() -> dict[str, Any]:
    """What only the demo and the tests need (partner keys, analyst and admin URLs): .run/demo.yaml."""
    path = _config_path().with_name("demo.yaml")
    if not path.exists():
        pytest.fail(f"{path} is missing: {SETUP_HINT}", pytrace=False)
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture()
def db_url(settings: Settings) -> str:
    """The loader's database URL."""
    return settings.database_url


@pytest.fixture()
def db(db_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A psycopg2 connection to the observatory's database as the loader, closed after the test."""
    conn = psycopg2.connect(db_url, connect_timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def pinned_ssh_client(host: str, port: int, host_key: str) -> paramiko.SSHClient:
    """An SSHClient that knows only ``host_key`` for host:port and refuses any other key."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_b64 = host_key.split()[:2]
    key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
    client.get_host_keys().add(host if port == 22 else f"[{host}]:{port}", key_type, key)
    return client


def open_sftp(host: str, port: int, host_key: str, user: str, key_file: Path | str) -> tuple[paramiko.SSHClient,
                                                                                            paramiko.SFTPClient]:
    """Log in with a private key (no agent, no other keys), the host key pinned; returns (client, sftp)."""
    client = pinned_ssh_client(host, port, host_key)
    client.connect(host, port=port, username=user, key_filename=str(key_file), allow_agent=False,
                   look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client, client.open_sftp()


@pytest.fixture()
def partner_sftp(settings: Settings, demo_config: dict[str, Any]) -> Iterator[paramiko.SFTPClient]:
    """SFTP as the partner (police), jailed in its own folder: it sees /inbox, /quarantine, ..."""
    client, sftp = open_sftp(settings.sftp_host, settings.sftp_port, settings.sftp_host_key,
                             demo_config["partner_sftp_user"], demo_config["partner_ssh_key"])
    try:
        yield sftp
    finally:
        sftp.close()
        client.close()


@pytest.fixture()
def observatory_sftp(settings: Settings) -> Iterator[paramiko.SFTPClient]:
    """SFTP as the observatory (cspobs): it sees every partner's folder, /police/inbox, ..."""
    client, sftp = open_sftp(settings.sftp_host, settings.sftp_port, settings.sftp_host_key,
                             settings.sftp_user, settings.sftp_key_file)
    try:
        yield sftp
    finally:
        sftp.close()
        client.close()


@pytest.fixture(scope="session")
def ssh_helpers() -> SimpleNamespace:
    """The SSH helpers above (pinned_ssh_client, open_sftp), for tests that need their own connections."""
    return SimpleNamespace(pinned_ssh_client=pinned_ssh_client, open_sftp=open_sftp)


def _empty(sftp: paramiko.SFTPClient, folder: str) -> None:
    for entry in sftp.listdir_attr(folder):
        path = f"{folder}/{entry.filename}"
        if stat.S_ISDIR(entry.st_mode or 0):
            _empty(sftp, path)
            sftp.rmdir(path)
        else:
            sftp.remove(path)


@pytest.fixture()
def clean_partner_folders(settings: Settings, observatory_sftp: paramiko.SFTPClient) -> None:
    """Empty the partner's inbox, quarantine, processed and reports folders before the test."""
    for partner_id in settings.partners:
        for sub in PARTNER_FOLDERS:
            _empty(observatory_sftp, settings.partner_folder(partner_id, sub))
