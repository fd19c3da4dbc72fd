"""Named logins and TLS on the tests' PostGIS: scripts/people makes, registers and disables people, each profile
reads what its group roles allow, and every TCP login needs TLS verified against the project's CA.

People are made with the real command (``scripts/people --db <the tests' admin URL>``), so only the tests'
database's register is touched; the ``people`` fixture drops their roles and register rows after each test (and
any a killed run left), so a second run starts clean.
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import psycopg2
import pytest
from psycopg2 import sql

from csp_observatory import database
from csp_observatory.schema import REPO_ROOT

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="scripts/people runs as root (it becomes postgres)")]

PREFIX = "zz_people_test_"
PROBE = "zz_people_probe"


def _admin(demo_config: dict[str, Any]) -> Any:
    return psycopg2.connect(demo_config["admin_url"], connect_timeout=10)


def _drop_test_people(demo_config: dict[str, Any]) -> None:
    """Remove every person this module made (its prefix): roles and register rows."""
    with closing(_admin(demo_config)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (PREFIX + "%",))
            for (login,) in cur.fetchall():
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (login,))
                cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
            cur.execute("SELECT to_regclass('governance.people') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("DELETE FROM governance.people WHERE login LIKE %s", (PREFIX + "%",))


def _people_cmd(demo_config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO_ROOT / "scripts" / "people"), "--db", demo_config["admin_url"], *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def tls(demo_config: dict[str, Any]) -> dict[str, str]:
    """sslmode and sslrootcert of the tests' analyst URL (the project's cluster's CA)."""
    if demo_config.get("analyst_sslmode") != "verify-full" or not demo_config.get("analyst_sslrootcert"):
        pytest.skip("the tests' database is not the project's TLS cluster (CSP_DATABASE_URL)")
    return {"sslmode": "verify-full", "sslrootcert": demo_config["analyst_sslrootcert"]}


@pytest.fixture()
def people(demo_config: dict[str, Any], tmp_path: Path) -> Iterator[Callable[[str], tuple[str, str]]]:
    """``people(profile)`` -> (login, password): a new person made with ``scripts/people add``; all removed after."""
    _drop_test_people(demo_config)

    def make(profile: str) -> tuple[str, str]:
        login = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        out = tmp_path / f"{login}.password"
        done = _people_cmd(demo_config, "add", "--login", login, "--name", f"Test {profile.title()}",
                           "--email", f"{login}@example.org", "--profile", profile, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        password = out.read_text(encoding="utf-8").strip()
        assert len(password) >= 24 and password not in done.stdout
        return login, password

    yield make
    _drop_test_people(demo_config)


@pytest.fixture(scope="module")
def probes(settings: Any) -> Iterator[None]:
    """One table in depersonalised and one in personal, made by the loader like a feed's (the schemas' default
    privileges grant them as they grant a feed table)."""
    with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn:
        with conn, conn.cursor() as cur:
            database.ensure_database(conn)
            for schema in ("depersonalised", "personal"):
                cur.execute(f"DROP TABLE IF EXISTS {schema}.{PROBE}")
                cur.execute(f"CREATE TABLE {schema}.{PROBE} AS SELECT 1 AS x")
        yield
        with conn, conn.cursor() as cur:
            for schema in ("depersonalised", "personal"):
                cur.execute(f"DROP TABLE IF EXISTS {schema}.{PROBE}")


def _connect(demo_config: dict[str, Any], login: str, password: str, **ssl: str) -> Any:
    return psycopg2.connect(host=demo_config["analyst_host"], port=demo_config["analyst_port"],
                            dbname=demo_config["analyst_database"], user=login, password=password,
                            connect_timeout=10, **ssl)


def _can_read(conn: Any, table: str) -> bool:
    with conn.cursor() as cur:
        try:
            cur.execute(f"SELECT x FROM {table}")
            return cur.fetchall() == [(1,)]
        except psycopg2.errors.InsufficientPrivilege:
            conn.rollback()
            return False


def _register(demo_config: dict[str, Any], login: str) -> tuple | None:
    with closing(_admin(demo_config)) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, email, profile, created_by, disabled_at, reason FROM governance.people "
                    "WHERE login = %s", (login,))
        return cur.fetchone()


def test_an_analyst_logs_in_over_verified_tls_and_reads_depersonalised_not_personal(demo_config, tls, people,
                                                                                     probes):
    login, password = people("analyst")
    with closing(_connect(demo_config, login, password, **tls)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")
        assert cur.fetchone() == (login, True)
        conn.rollback()
        assert _can_read(conn, f"depersonalised.{PROBE}")
        assert not _can_read(conn, f"personal.{PROBE}")
    name, email, profile, created_by, disabled_at, reason = _register(demo_config, login)
    assert (name, email, profile, disabled_at, reason) == ("Test Analyst", f"{login}@example.org", "analyst",
                                                           None, None)
    assert created_by


def test_a_restricted_analyst_reads_personal_and_an_engineer_does_not(demo_config, tls, people, probes):
    restricted, restricted_pw = people("restricted_analyst")
    engineer, engineer_pw = people("engineer")
    with closing(_connect(demo_config, restricted, restricted_pw, **tls)) as conn:
        assert _can_read(conn, f"personal.{PROBE}") and _can_read(conn, f"depersonalised.{PROBE}")
    with closing(_connect(demo_config, engineer, engineer_pw, **tls)) as conn:
        assert _can_read(conn, f"depersonalised.{PROBE}") and not _can_read(conn, f"personal.{PROBE}")
        with conn.cursor() as cur:               # an engineer can map a login to a person; an analyst cannot
            cur.execute("SELECT profile FROM governance.people WHERE login = %s", (restricted,))
            assert cur.fetchone() == ("restricted_analyst",)


def test_a_disabled_person_cannot_log_in_and_stays_in_the_register(demo_config, tls, people):
    login, password = people("analyst")
    _connect(demo_config, login, password, **tls).close()
    done = _people_cmd(demo_config, "disable", "--login", login, "--reason", "left the partnership")
    assert done.returncode == 0, done.stderr
    with pytest.raises(psycopg2.OperationalError, match="not permitted to log in"):
        _connect(demo_config, login, password, **tls)
    row = _register(demo_config, login)
    assert row is not None and row[4] is not None and row[5] == "left the partnership"
    with closing(_admin(demo_config)) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (login,))
        assert cur.fetchone() == (False,)           # the role stays, so audit records still name a person
    listed = _people_cmd(demo_config, "list")
    assert listed.returncode == 0 and any(line.startswith(login) and "left the partnership" in line
                                          for line in listed.stdout.splitlines())
    # a disabled login gets no new password, and is never handed to someone else
    assert _people_cmd(demo_config, "password", "--login", login).returncode == 2
    again = _people_cmd(demo_config, "add", "--login", login, "--name", "Someone Else", "--email", "s@example.org",
                        "--profile", "analyst")
    assert again.returncode == 2 and "never reused" in again.stderr


def test_a_tcp_login_without_tls_is_refused_even_with_the_right_password(demo_config, tls, people):
    login, password = people("analyst")
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        _connect(demo_config, login, password, sslmode="disable")
    _connect(demo_config, login, password, **tls).close()   # the same password over TLS


def test_verify_full_against_another_ca_fails(demo_config, tls, people, tmp_path):
    login, password = people("analyst")
    other = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=not the observatory's CA", "-keyout",
                    str(tmp_path / "other-ca.key"), "-out", str(other)], check=True, capture_output=True)
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        _connect(demo_config, login, password, sslmode="verify-full", sslrootcert=str(other))


@pytest.mark.parametrize("login", ["csp_loader", "csp_analyst", "postgres", "analyst", "Jsmith", "j smith", "1a"])
def test_service_group_and_shared_roles_are_never_people(demo_config, login):
    done = _people_cmd(demo_config, "add", "--login", login, "--name", "X", "--email", "x@example.org",
                       "--profile", "engineer")
    assert done.returncode == 2, done.stdout
    with closing(_admin(demo_config)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM governance.people WHERE login = %s", (login,))
        assert cur.fetchone() == (0,)


def test_the_tls_keys_are_private_and_the_ca_certificate_public(demo_config, tls):
    ca = Path(tls["sslrootcert"])
    assert stat.S_IMODE(ca.stat().st_mode) & 0o004, "clients of every account must read the CA certificate"
    with closing(_admin(demo_config)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('ssl'), current_setting('ssl_key_file')")
        ssl_on, key_file = cur.fetchone()
    assert ssl_on == "on"
    st = Path(key_file).stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (Path(key_file).parent.stat().st_uid, 0o600)
    assert st.st_uid == pwd.getpwnam("postgres").pw_uid
    store = Path(demo_config["secrets_dir"]) / "tls"
    for name in ("ca.key", "server.key"):
        key = store / name
        assert key.stat().st_uid == 0 and stat.S_IMODE(key.stat().st_mode) == 0o600
