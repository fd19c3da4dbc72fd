"""The observatory's Airflow Connections made from its settings (connections.py), and what the hooks read of them."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from csp_observatory import connections
from csp_observatory.config import Settings

pytestmark = pytest.mark.unit

def _make_host_key() -> str:
    # A real ed25519 public key line, as /etc/csp-observatory/ssh_host_ed25519_key.pub holds: SFTPHook decodes it.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                   serialization.PublicFormat.OpenSSH)
    return public.decode() + " root@observatory"


HOST_KEY_LINE = _make_host_key()


def _host_key_line() -> str:
    return HOST_KEY_LINE


def _settings(**over: object) -> Settings:
    base = Settings(database_url="postgresql://csp_loader:p%40ss%2Fw0rd@db.example:5433/csp_observatory"
                                 "?sslmode=verify-full&sslrootcert=/etc/csp-observatory/tls/ca.crt",
                    sftp_host="sftp.example", sftp_port=2222, sftp_user="cspobs",
                    sftp_key_file=Path("/var/lib/csp-observatory/ssh/cspobs_ed25519"),
                    sftp_host_key=_host_key_line(), sftp_root="", gnupg_home=Path("/g"), staging_dir=Path("/s"),
                    reports_dir=Path("/r"))
    return replace(base, **over)


def test_the_database_url_becomes_a_postgres_connection_and_back() -> None:
    url = _settings().database_url
    conn = connections.postgis_connection(url)
    assert conn == {"conn_type": "postgres", "host": "db.example", "port": 5433, "login": "csp_loader",
                    "password": "p@ss/w0rd", "schema": "csp_observatory",
                    "extra": {"sslmode": "verify-full", "sslrootcert": "/etc/csp-observatory/tls/ca.crt"}}
    assert connections.postgis_connection(connections.database_url(conn)) == conn
    # no password (~/.pgpass) and no query: neither appears
    bare = connections.postgis_connection("postgresql://csp_loader@127.0.0.1:5433/csp_observatory_test")
    assert "password" not in bare and "extra" not in bare
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        connections.postgis_connection("mysql://x@y/z")


def test_the_sftp_connection_pins_the_host_key_and_offers_only_the_observatorys_key() -> None:
    conn = connections.sftp_connection(_settings())
    assert (conn["conn_type"], conn["host"], conn["port"], conn["login"]) == ("sftp", "sftp.example", 2222, "cspobs")
    extra = conn["extra"]
    assert extra["host_key"] == " ".join(_host_key_line().split()[:2])          # comment dropped
    assert extra["no_host_key_check"] is False and extra["allow_host_key_change"] is False
    assert extra["look_for_keys"] is False and extra["key_file"] == "/var/lib/csp-observatory/ssh/cspobs_ed25519"
    # a known_hosts line gives the same pin
    known = connections.sftp_connection(_settings(sftp_host_key="[127.0.0.1]:2222 " + _host_key_line()))
    assert known["extra"]["host_key"] == extra["host_key"]
    with pytest.raises(ValueError):
        connections.sftp_connection(_settings(sftp_host_key="ssh-ed25519"))


def test_sftp_hook_reads_the_pinned_key_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    for name, value in connections.env_vars(_settings()).items():
        monkeypatch.setenv(name, value)
    hook = SFTPHook(ssh_conn_id=connections.SFTP_CONN_ID)
    assert hook.no_host_key_check is False and hook.host_key is not None
    assert f"{hook.host_key.get_name()} {hook.host_key.get_base64()}" == " ".join(_host_key_line().split()[:2])
    assert (hook.remote_host, hook.port, hook.username, hook.look_for_keys) == ("sftp.example", 2222, "cspobs", False)


def test_postgres_hook_passes_the_tls_parameters_to_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    from csp_observatory import hooks

    for name, value in connections.env_vars(_settings()).items():
        monkeypatch.setenv(name, value)
    seen: dict[str, object] = {}
    monkeypatch.setattr(hooks.psycopg2, "connect", lambda **kw: seen.update(kw) or "psycopg2 connection")
    assert hooks.PostGISHook(postgres_conn_id=connections.POSTGIS_CONN_ID).get_conn() == "psycopg2 connection"
    assert seen == {"host": "db.example", "port": 5433, "user": "csp_loader", "password": "p@ss/w0rd",
                    "dbname": "csp_observatory", "sslmode": "verify-full",
                    "sslrootcert": "/etc/csp-observatory/tls/ca.crt"}


def test_a_connection_without_a_pinned_host_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from csp_observatory import hooks

    conn = connections.sftp_connection(_settings())
    del conn["extra"]["host_key"]
    conn["extra"]["no_host_key_check"] = True          # SFTPHook would then trust any server
    monkeypatch.setenv(connections.env_name(connections.SFTP_CONN_ID), json.dumps(conn))
    with pytest.raises(ValueError, match="does not pin"):
        with hooks.HookServices().sftp():
            pass


def test_ensure_env_keeps_an_operators_connection_and_replaces_one_made_from_other_settings() -> None:
    env: dict[str, str] = {}
    assert connections.ensure_env(_settings(), env, source="/a.yaml") == ["AIRFLOW_CONN_CSP_SFTP",
                                                                         "AIRFLOW_CONN_CSP_POSTGIS"]
    assert env[connections.SOURCE_ENV] == "/a.yaml"
    other = _settings(database_url="postgresql://csp_loader@127.0.0.1:5433/csp_observatory_test")
    assert connections.ensure_env(other, env, source="/a.yaml") == []      # same settings file: left
    assert connections.ensure_env(other, env, source="/test.yaml")          # another's: replaced
    assert json.loads(env["AIRFLOW_CONN_CSP_POSTGIS"])["schema"] == "csp_observatory_test"
    operator = {"AIRFLOW_CONN_CSP_POSTGIS": "postgres://ops@vault/db", "AIRFLOW_CONN_CSP_SFTP": "sftp://ops@h"}
    assert connections.ensure_env(_settings(), operator, source="/a.yaml") == []
    assert operator["AIRFLOW_CONN_CSP_POSTGIS"] == "postgres://ops@vault/db"


def test_the_cli_prints_export_lines_a_shell_can_source(tmp_path: Path) -> None:
    import yaml

    s = _settings()
    config = tmp_path / "observatory.yaml"
    config.write_text(yaml.safe_dump({k: str(v) for k, v in s.__dict__.items()
                                      if k not in ("partners", "removed_partners", "partners_dir", "staging_url",
                                                   "gpg_passphrase", "stable_polls", "poll_interval_s")}))
    out = subprocess.run([sys.executable, "-m", "csp_observatory.connections", "env", "--config", str(config)],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin",
                                                                           "PYTHONPATH": ":".join(sys.path)}).stdout
    shown = subprocess.run(["bash", "-c", out + '\nprintf "%s\\n%s" "$AIRFLOW_CONN_CSP_POSTGIS" "$CSP_CONNECTIONS_FROM"'],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert json.loads(shown[0]) == connections.postgis_connection(s.database_url)
    assert shown[1] == str(config.resolve())


def test_the_sftp_session_is_not_zlib_compressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpg files do not compress: the session the stages download through asks SSH for no compression."""
    from contextlib import contextmanager

    from airflow.providers.sftp.hooks.sftp import SFTPHook

    from csp_observatory import hooks

    monkeypatch.setenv(connections.env_name(connections.SFTP_CONN_ID),
                       json.dumps(connections.sftp_connection(_settings())))
    asked: list[bool] = []

    @contextmanager
    def managed(self):  # type: ignore[no-untyped-def]
        asked.append(self.compress)
        yield "client"

    monkeypatch.setattr(SFTPHook, "get_managed_conn", managed)
    with hooks.HookServices().sftp() as client:
        assert client == "client"
    assert asked == [False]


def test_a_refused_sftp_login_fails_the_try_at_its_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task's retries are the retry policy: the hook makes one connection attempt per try (its default makes
    three, 3-5 s apart)."""
    import paramiko

    from csp_observatory import hooks

    monkeypatch.setenv(connections.env_name(connections.SFTP_CONN_ID),
                       json.dumps(connections.sftp_connection(_settings())))
    attempts: list[str] = []

    def refused(self, hostname: str, **kwargs: object) -> None:
        attempts.append(hostname)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(paramiko.SSHClient, "connect", refused)
    with pytest.raises(ConnectionRefusedError):
        with hooks.HookServices().sftp():
            pass
    assert attempts == ["sftp.example"]
