"""Fixtures for the integration tests: the real services that scripts/setup.sh starts.

PostGIS (``db``), the project's sshd as the partner and as the observatory (``partner_sftp``,
``observatory_sftp``), and the config files setup.sh writes (``settings``, ``demo_config``).

The tests use the tests' twin of the services, never the demo's: setup.sh writes ``.run/test/observatory.yaml``
next to the demo's config (``CSP_TEST_CONFIG`` overrides), naming the same secrets but the database
``csp_observatory_test`` and the SFTP tree on port 2223. This module points ``CSP_CONFIG`` and
``CSP_DATABASE_URL`` at it for the whole session, so the pipeline, the DAG and every test module use it.
"""
from __future__ import annotations

import base64
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import psycopg2
import pytest
import yaml

from csp_observatory import services_lock
from csp_observatory.config import DEFAULT_CONFIG, Settings, load_settings, settings_from_dict

PARTNER_FOLDERS = ("inbox", "quarantine", "processed", "reports")
SETUP_HINT = "run scripts/setup.sh first"

# The environment as the session found it, before the switch below: what scripts/setup.sh must be run with.
SETUP_ENV: dict[str, str] = dict(os.environ)
# The demo's config (the one the session was given), and the tests' twin of it.
DEMO_CONFIG = Path(os.environ.get("CSP_CONFIG") or DEFAULT_CONFIG)
TEST_CONFIG = Path(os.environ.get("CSP_TEST_CONFIG") or DEMO_CONFIG.parent / "test" / "observatory.yaml")


def _config_path() -> Path:
    return TEST_CONFIG


def _config_database_url() -> str | None:
    """The database URL the tests' config names, if the file exists and names one."""
    if not TEST_CONFIG.exists():
        return None
    with open(TEST_CONFIG, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return raw.get("database_url") or None


# Everything in this process (load_settings(), the DAG's tasks, modules that read CSP_DATABASE_URL) uses the tests'
# services from here on. CSP_DATABASE_URL is overridden too: setup.sh already wrote the tests' database into the
# tests' config (from CSP_TEST_DATABASE_URL or CSP_DATABASE_URL), and the demo's must not win over it.
if TEST_CONFIG.exists():
    os.environ["CSP_CONFIG"] = str(TEST_CONFIG)
    if _url := _config_database_url():
        os.environ["CSP_DATABASE_URL"] = _url


# One integration session at a time on a machine: there is one set of the tests' services, and two sessions
# (two clones, or CI beside a developer) would empty each other's SFTP folders and forget each other's months.
SESSION_WAIT_S = 1800


@pytest.fixture(scope="session", autouse=True)
def one_session_at_a_time(pytestconfig: pytest.Config) -> Iterator[None]:
    """Wait (at most SESSION_WAIT_S) for any other integration session on this machine to finish, then hold the
    tests' services until this one ends (csp_observatory.services_lock)."""
    def waiting(holder: str) -> None:
        # past pytest's capture: whoever runs the tests should know why nothing happens
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"\nwaiting for another integration test session (pid {holder}) to finish ...",
                  file=sys.stderr, flush=True)

    def timed_out(holder: str) -> None:
        pytest.fail(f"another integration test session (pid {holder}) has held the tests' services for "
                    f"{SESSION_WAIT_S} s ({services_lock.LOCK_FILE})", pytrace=False)

    with services_lock.hold(SESSION_WAIT_S, waiting, timed_out):
        yield


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The observatory's settings for the tests' services, as written by scripts/setup.sh."""
    if not _config_path().exists():
        pytest.fail(f"{_config_path()} is missing: {SETUP_HINT}", pytrace=False)
    return load_settings(TEST_CONFIG)


@pytest.fixture(scope="session")
def demo_settings() -> Settings:
    """The demo's settings (its database and SFTP tree), for the tests that prove they are left alone."""
    if not DEMO_CONFIG.exists():
        pytest.fail(f"{DEMO_CONFIG} is missing: {SETUP_HINT}", pytrace=False)
    with open(DEMO_CONFIG, encoding="utf-8") as fh:
        return settings_from_dict(yaml.safe_load(fh) or {})   # no environment overrides: they name the tests'



@pytest.fixture(scope="session")
def demo_config() -> dict[str, Any]:
    """What only the demo and the tests need (partner keys, analyst and admin URLs): .run/demo.yaml."""
    path = _config_path().with_name("demo.yaml")
    if not path.exists():
        pytest.fail(f"{path} is missing: {SETUP_HINT}", pytrace=False)
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="session")
def setup_env() -> dict[str, str]:
    """The environment to run scripts/setup.sh with: the session's, before this module pointed it at the tests."""
    return dict(SETUP_ENV)


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


def _empty_partner_folders(sftp: paramiko.SFTPClient, settings: Settings) -> None:
    for partner_id in settings.partners:
        for sub in PARTNER_FOLDERS:
            _empty(sftp, settings.partner_folder(partner_id, sub))


@pytest.fixture()
def clean_partner_folders(settings: Settings, observatory_sftp: paramiko.SFTPClient) -> Iterator[None]:
    """Empty the partner's inbox, quarantine, processed and reports folders (the tests' tree) before the test,
    and again after it, so no test leaves files behind (e.g. ``209912_report.*``)."""
    _empty_partner_folders(observatory_sftp, settings)
    yield
    # a fresh connection: the test may have closed or broken the fixture's
    client, sftp = open_sftp(settings.sftp_host, settings.sftp_port, settings.sftp_host_key,
                             settings.sftp_user, settings.sftp_key_file)
    try:
        _empty_partner_folders(sftp, settings)
    finally:
        sftp.close()
        client.close()


#: The observatory's per-supply records, kept beside the feed's own tables (the supply's metadata among them).
def _forget_supply(conn: psycopg2.extensions.connection, schema: Any, period: str) -> None:
    """Forget one supply: drop its partitions of its feed's tables (a DELETE would leave empty ones behind, one more
    per test run) and delete its records in the observatory's tables and the quality stamp (as retention does)."""
    from csp_observatory import partitions
    from csp_observatory.retention import SUPPLY_TABLES

    supply_id = f"{schema.feed}/{period}"
    with conn.cursor() as cur:
        for f in schema.files:
            if partitions.is_partitioned(cur, schema.db_schema, f.table):
                partitions.swap(cur, schema.db_schema, f.table, supply_id, None)
        for table in SUPPLY_TABLES:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if cur.fetchone()[0]:
                cur.execute(f"DELETE FROM {table} WHERE supply_id = %s", (supply_id,))
    conn.commit()


@pytest.fixture(scope="session")
def forget_supply() -> Any:
    """``forget_supply(conn, schema, period)``: start (and end) a test's own period from a clean slate."""
    return _forget_supply


@pytest.fixture(scope="module")
def reference_loaded(settings: Settings) -> dict[str, int]:
    """The shipped reference, loaded afresh: other tests may have put their own frames in the reference tables."""
    from csp_observatory import demo

    return demo.ensure_reference(settings, force=True)
