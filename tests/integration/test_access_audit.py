"""The audit of access to personal data on the tests' PostGIS: a restricted analyst's read of a personal table is in
the server's audit log and in the DLO's report (login, table, time, rows), a read of a depersonalised table is not,
and a literal of the statement is in neither the report nor its files.

Skipped, with the reason, where pgaudit is not loaded with the audit role (an external PostGIS whose administrator
has not set it up) or where the log cannot be read (not root on the database server).
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg2
import pytest
from psycopg2 import sql

from csp_observatory import access_audit as aa
from csp_observatory import access_audit_report as ar
from csp_observatory import database
from csp_observatory.schema import REPO_ROOT

pytestmark = pytest.mark.integration

LITERAL = "Zebedee"
#: How long the server's log collector may take to write a line out (polled, never asserted on).
LOG_WAIT_S = 15


def _admin(demo_config: dict[str, Any]) -> Any:
    return psycopg2.connect(demo_config["admin_url"], connect_timeout=10)


@pytest.fixture(scope="module")
def audit_log(demo_config: dict[str, Any]) -> Path:
    """The cluster's log folder, when the server audits the schema personal and this process can read the log."""
    try:
        server = aa.server_settings(demo_config["admin_url"])
    except (psycopg2.Error, KeyError) as exc:
        pytest.skip(f"no admin connection to ask the server about its audit: {exc}")
    if not aa.audit_enabled(server):
        pytest.skip("pgaudit is not loaded with pgaudit.role = csp_auditor and a jsonlog/csvlog log on this server "
                    "(an external PostGIS: its administrator sets the audit up, docs/AUDIT.md)")
    folder = aa.log_dir_from_settings(server)
    if not os.access(folder, os.R_OK | os.X_OK):
        pytest.skip(f"{folder} is not readable by this user (the report runs as root on the database server)")
    return folder


@pytest.fixture()
def reader(settings: Any, demo_config: dict[str, Any], audit_log: Path) -> Iterator[dict[str, Any]]:
    """A throwaway restricted analyst login (csp_personal_reader and csp_analyst), a personal table and a
    depersonalised one the loader made; all dropped after."""
    tag = uuid.uuid4().hex[:8]
    login, password = f"zz_audit_{tag}", secrets.token_hex(16)
    personal, deper = f"zz_audit_{tag}", f"zz_audit_{tag}"
    with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn:
        database.ensure_database(conn)     # what a load does first: the schemas, grants and default privileges
        with conn.cursor() as cur:
            # made by the loader, as loads make feed tables: default privileges must cover them
            cur.execute(sql.SQL("CREATE TABLE {} (id int, surname text)").format(sql.Identifier("personal", personal)))
            cur.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, 'Other')").format(
                sql.Identifier("personal", personal)), (LITERAL,))
            cur.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(
                sql.Identifier("depersonalised", deper)))
        conn.commit()
    named = False
    with closing(_admin(demo_config)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s IN ROLE csp_personal_reader, csp_analyst")
                        .format(sql.Identifier(login)), (password,))
            try:
                cur.execute("INSERT INTO governance.people (login, name, email, profile, created_by) "
                            "VALUES (%s, 'Audit Test Person', 'audit@example.invalid', 'restricted_analyst', "
                            "'test_access_audit')", (login,))
                named = True
            except psycopg2.Error:
                pass        # no register of people in this database: the report names nobody
    u = urlsplit(settings.database_url)
    url = f"postgresql://{login}:{quote(password)}@{u.hostname}:{u.port or 5432}{u.path}"
    tls = {k: demo_config[f"analyst_{k}"] for k in ("sslmode", "sslrootcert") if demo_config.get(f"analyst_{k}")}
    try:
        yield {"login": login, "url": url, "tls": tls, "personal": f"personal.{personal}",
               "depersonalised": f"depersonalised.{deper}", "named": named, "database": u.path.lstrip("/")}
    finally:
        with closing(_admin(demo_config)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (login,))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(
                    sql.Identifier("personal", personal), sql.Identifier("depersonalised", deper)))
                cur.execute("SELECT to_regclass('governance.people') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("DELETE FROM governance.people WHERE login = %s", (login,))
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


def _reads_of(log_dir: Path, since: datetime, login: str, database: str, want: int) -> list[aa.Read]:
    """The login's reads since ``since``, once the log collector has written at least ``want`` of them."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        scan = aa.scan_log(log_dir, since, since + timedelta(days=1), database)
        reads = [r for r in aa.group_reads(scan.entries) if r.login == login]
        if len(reads) >= want or time.monotonic() > deadline:
            return reads
        time.sleep(0.2)


def test_the_audit_role_covers_personal_tables_now_and_later(settings, demo_config, audit_log):
    with closing(_admin(demo_config)) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolcanlogin, (SELECT count(*) FROM pg_auth_members m WHERE m.roleid = r.oid) "
                    "FROM pg_roles r WHERE rolname = %s", (aa.AUDIT_ROLE,))
        assert cur.fetchone() == (False, 0)          # nobody logs in as it or through it
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'personal' AND c.relkind IN ('r', 'v', 'm', 'p') "
                    "AND NOT has_table_privilege(%s, c.oid, 'SELECT')", (aa.AUDIT_ROLE,))
        assert cur.fetchall() == []
        cur.execute("SELECT pg_get_userbyid(d.defaclrole) FROM pg_default_acl d JOIN pg_namespace n "
                    "ON n.oid = d.defaclnamespace WHERE n.nspname = 'personal' AND d.defaclobjtype = 'r' "
                    "AND array_to_string(d.defaclacl, ',') LIKE %s", (f"%{aa.AUDIT_ROLE}=r/%",))
        assert "csp_loader" in {r[0] for r in cur.fetchall()}


def test_a_personal_read_is_reported_with_login_table_time_and_rows_and_never_its_literal(settings, reader,
                                                                                          audit_log, tmp_path):
    login, database = reader["login"], reader["database"]
    with closing(psycopg2.connect(reader["url"], connect_timeout=10, **reader["tls"])) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT now()")
        # the log's times are in whole milliseconds (cut, not rounded): the read's may show the same millisecond
        before = cur.fetchone()[0]
        before = before.replace(microsecond=before.microsecond // 1000 * 1000)
        cur.execute(sql.SQL("SELECT id FROM {} WHERE surname = %s").format(
            sql.Identifier(*reader["personal"].split("."))), (LITERAL,))
        assert cur.fetchall() == [(1,)]
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE note = %s").format(
            sql.Identifier(*reader["depersonalised"].split("."))), (LITERAL,))
        assert cur.fetchone() == (0,)
        conn.rollback()
    after = datetime.now(timezone.utc)

    reads = _reads_of(audit_log, before, login, database, want=1)
    assert [(r.tables, r.command, r.audit_class, r.rows) for r in reads] == [((reader["personal"],), "SELECT",
                                                                              "READ", 1)]
    assert before <= reads[0].at <= after

    # The documented command, for today, as the engineer runs it (root; the cluster's log found over its socket).
    today = after.date().isoformat()
    out = tmp_path / "access"
    run = subprocess.run([str(REPO_ROOT / "scripts" / "access_report"), "--from", today, "--to", today,
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"access_{today}_{today}.csv", f"access_{today}_{today}.md"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    csv_rows = [line for line in files[0].read_text(encoding="utf-8").splitlines() if f",{login}," in line]
    assert len(csv_rows) == 1 and reader["personal"] in csv_rows[0] and ",person," in csv_rows[0]
    assert csv_rows[0].startswith(reads[0].at.strftime("%Y-%m-%d %H:%M:%S"))
    for text in (run.stdout, *(f.read_text(encoding="utf-8") for f in files)):
        assert login in text and reader["personal"] in text
        assert reader["depersonalised"] not in text
        assert LITERAL not in text and "surname" not in text
        if reader["named"]:
            assert "Audit Test Person" in text

    # The governance DAG's task: the month's report into <reports_dir>/access/, written once.
    first = after.date().replace(day=1)
    next_month = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    monthly_settings = dataclasses.replace(settings, reports_dir=tmp_path / "reports")
    paths = ar.write_monthly(monthly_settings, today=next_month)
    assert [p.parent for p in paths] == [tmp_path / "reports" / ar.ACCESS_FOLDER] * 2
    assert all(login in p.read_text(encoding="utf-8") and LITERAL not in p.read_text(encoding="utf-8") for p in paths)
    paths[1].write_text("kept", encoding="utf-8")
    assert ar.write_monthly(monthly_settings, today=next_month) == paths and paths[1].read_text() == "kept"
