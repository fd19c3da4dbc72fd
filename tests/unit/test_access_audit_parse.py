"""The audit log parser and the DLO's access report, on sample server log lines (no database)."""
from __future__ import annotations

import csv
import io
import json
import os
import stat
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from csp_observatory import access_audit as aa
from csp_observatory import access_audit_report as ar

pytestmark = pytest.mark.unit

# As PostgreSQL 15 with pgaudit 1.7 writes them (set-up's settings: statement text off, rows on).
LINE_SELECT = ('{"timestamp":"2026-11-30 02:30:42.135 UTC","user":"jsmith","dbname":"csp_observatory",'
               '"pid":15525,"remote_host":"127.0.0.1","remote_port":51234,"session_id":"6b0cdfd2.3ca5",'
               '"line_num":1,"ps":"SELECT","error_severity":"LOG","message":"AUDIT: OBJECT,1,1,READ,SELECT,TABLE,'
               'personal.ppo_offenders,<not logged>,<not logged>,3","application_name":"QGIS",'
               '"backend_type":"client backend","query_id":0}')
NOT_AUDIT = ('{"timestamp":"2026-11-30 02:30:29.288 UTC","pid":14194,"session_id":"6b0cdfc5.3772",'
             '"error_severity":"LOG","message":"database system is ready to accept connections"}')


def _line(message: str, user: str = "jsmith", at: str = "2026-11-30 10:00:00.000 UTC", db: str = "csp_observatory",
          session: str = "s1") -> str:
    return json.dumps({"timestamp": at, "user": user, "dbname": db, "session_id": session, "remote_host": "[local]",
                       "message": message, "application_name": "psql",
                       # a failed statement's text, as log_min_error_statement would add it: never read
                       "statement": "SELECT * FROM personal.x WHERE surname = 'Zebedee'"})


def test_an_object_audit_line_gives_who_when_what_and_rows():
    e = aa.parse_json_line(LINE_SELECT)
    assert e is not None
    assert (e.login, e.database, e.session, e.client, e.application) == (
        "jsmith", "csp_observatory", "6b0cdfd2.3ca5", "127.0.0.1", "QGIS")
    assert e.at == datetime(2026, 11, 30, 2, 30, 42, 135000, tzinfo=timezone.utc)
    assert (e.statement_id, e.substatement_id, e.audit_class, e.command, e.object_type) == (1, 1, "READ", "SELECT",
                                                                                           "TABLE")
    assert (e.schema, e.relation, e.table, e.rows) == ("personal", "ppo_offenders", "personal.ppo_offenders", 3)


def test_other_lines_are_not_audit_entries():
    assert aa.parse_json_line(NOT_AUDIT) is None
    assert aa.parse_json_line("not json at all AUDIT: OBJECT,") is None
    # session audit (pgaudit.log), were an administrator to turn it on: not an object read of a relation
    assert aa.parse_json_line(_line("AUDIT: SESSION,1,1,READ,SELECT,,,select 1,<not logged>")) is None


def test_a_logged_statement_with_literals_commas_quotes_and_newlines_is_never_kept():
    statement = "SELECT *\n  FROM personal.ppo_offenders\n WHERE surname = 'Zebedee', \"x\" = 1"
    quoted = '"' + statement.replace('"', '""') + '"'
    e = aa.parse_json_line(_line(f"AUDIT: OBJECT,7,2,READ,SELECT,VIEW,personal.ppo_graded,{quoted},<not logged>,12"))
    assert e is not None and (e.statement_id, e.substatement_id, e.object_type, e.rows) == (7, 2, "VIEW", 12)
    assert "Zebedee" not in repr(e)
    # without log_rows there are nine fields: no row count, rather than a number taken from the statement
    e = aa.parse_json_line(_line(f"AUDIT: OBJECT,8,1,READ,SELECT,TABLE,personal.t,{quoted},\"1,2\""))
    assert e is not None and e.rows is None and "Zebedee" not in repr(e)


def test_csvlog_records_are_read_too():
    row = ["2026-11-30 10:00:00.123 UTC", "jsmith", "csp_observatory", "4242", "127.0.0.1:5555", "sess.1", "3",
           "SELECT", "2026-11-30 09:59:00 UTC", "3/7", "0", "LOG", "00000",
           "AUDIT: OBJECT,2,1,READ,SELECT,TABLE,personal.releases,\"select * from personal.releases\n"
           "where name = 'Zebedee'\",<not logged>,1", "", "", "", "", "", "", "", "", "psql", "client backend", "", "0"]
    buf = io.StringIO()
    csv.writer(buf).writerow(row)
    (parsed,) = list(csv.reader(io.StringIO(buf.getvalue())))
    e = aa.parse_csv_record(parsed)
    assert e is not None and (e.login, e.session, e.table, e.rows, e.application) == (
        "jsmith", "sess.1", "personal.releases", 1, "psql")
    assert aa.parse_csv_record(["too", "short"]) is None


@pytest.mark.parametrize("text, expected", [
    ("2026-11-30 02:30:42.135 UTC", datetime(2026, 11, 30, 2, 30, 42, 135000, tzinfo=timezone.utc)),
    ("2026-07-01 00:30:00 BST", datetime(2026, 6, 30, 23, 30, tzinfo=timezone.utc)),
    ("2026-07-01 00:30:00.5 +01", datetime(2026, 6, 30, 23, 30, 0, 500000, tzinfo=timezone.utc)),
    ("2026-07-01 00:30:00 -05:30", datetime(2026, 7, 1, 6, 0, tzinfo=timezone.utc)),
])
def test_timestamps_are_read_as_utc(text, expected):
    assert aa.parse_timestamp(text) == expected


def test_an_unknown_zone_is_an_error_not_a_silent_shift():
    with pytest.raises(ValueError, match="log_timezone"):
        aa.parse_timestamp("2026-07-01 00:30:00 XYZT")


def test_qualified_names_with_quoted_identifiers():
    assert aa.split_qualified("personal.ppo") == ("personal", "ppo")
    assert aa.split_qualified('personal."Odd.Name ""x"""') == ("personal", 'Odd.Name "x"')
    assert aa.split_qualified("loose") == ("", "loose")


def _write_log(folder, lines):
    path = folder / "postgresql-11-30.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read_msg(statement_id: int, table: str = "personal.a") -> str:
    return f"AUDIT: OBJECT,{statement_id},1,READ,SELECT,TABLE,{table},<not logged>,<not logged>,2"


def test_scan_keeps_the_period_the_database_and_the_personal_schema(tmp_path):
    _write_log(tmp_path, [
        NOT_AUDIT,
        _line(_read_msg(1), at="2026-10-31 23:59:59 UTC"),
        _line(_read_msg(2), at="2026-11-01 00:00:00 UTC"),
        _line(_read_msg(3), at="2026-11-30 23:59:59 UTC"),
        _line(_read_msg(4), at="2026-12-01 00:00:00 UTC"),
        _line(_read_msg(5), db="other_db",
              at="2026-11-10 00:00:00 UTC"),
        _line(_read_msg(6, "depersonalised.a"), at="2026-11-10 00:00:00 UTC"),
    ])
    start, end = aa.period_bounds(date(2026, 11, 1), date(2026, 11, 30))
    scan = aa.scan_log(tmp_path, start, end, "csp_observatory")
    assert [e.statement_id for e in scan.entries] == [2, 3]
    assert [e.statement_id for e in aa.scan_log(tmp_path, start, end).entries] == [2, 5, 3]
    with pytest.raises(FileNotFoundError):
        aa.scan_log(tmp_path / "missing", start, end)


def test_one_statement_over_two_tables_is_one_read_and_sessions_stay_apart():
    msgs = [("AUDIT: OBJECT,4,1,READ,SELECT,TABLE,personal.b,<not logged>,<not logged>,5", "s1"),
            ("AUDIT: OBJECT,4,1,READ,SELECT,TABLE,personal.a,<not logged>,<not logged>,5", "s1"),
            ("AUDIT: OBJECT,4,1,READ,SELECT,TABLE,personal.a,<not logged>,<not logged>,1", "s2")]
    reads = aa.group_reads(aa.parse_json_line(_line(m, session=s)) for m, s in msgs)
    assert [(r.session, r.tables, r.rows) for r in reads] == [("s1", ("personal.a", "personal.b"), 5),
                                                            ("s2", ("personal.a",), 1)]


def test_last_month_and_period_bounds():
    assert aa.last_month(date(2026, 1, 15)) == (date(2025, 12, 1), date(2025, 12, 31))
    assert aa.last_month(date(2026, 3, 1)) == (date(2026, 2, 1), date(2026, 2, 28))
    with pytest.raises(ValueError):
        aa.period_bounds(date(2026, 2, 2), date(2026, 2, 1))


def test_kinds_admin_url_and_settings():
    assert aa.login_kind("csp_loader") == "service" and aa.login_kind("postgres") == "administrator"
    assert aa.login_kind("jsmith") == "person" and aa.login_kind("svc", ["svc"]) == "service"
    assert aa.admin_url_for("postgresql://csp_loader:pw@127.0.0.1:5433/csp_observatory_test") == \
        "postgresql://postgres@/csp_observatory_test?host=/var/run/postgresql&port=5433"
    on = {"shared_preload_libraries": "pg_stat_statements, pgaudit", "pgaudit.role": "csp_auditor",
          "log_destination": "stderr,jsonlog", "data_directory": "/d", "log_directory": "log"}
    assert aa.audit_enabled(on) and not aa.audit_enabled({**on, "pgaudit.role": ""})
    assert not aa.audit_enabled({**on, "log_destination": "stderr"})
    assert str(aa.log_dir_from_settings(on)) == os.path.join("/d", "log")
    assert str(aa.log_dir_from_settings({**on, "log_directory": "/var/log/x"})) == "/var/log/x"


def test_the_report_names_people_separates_the_service_and_escapes_cells(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    statement = '"select * from personal.a where surname = \'Zebedee\'"'
    _write_log(log, [
        _line(f"AUDIT: OBJECT,1,1,READ,SELECT,TABLE,personal.a,{statement},<not logged>,2", user="jsmith"),
        _line(f"AUDIT: OBJECT,2,1,READ,SELECT,TABLE,personal.b,{statement},<not logged>,4", user="jsmith"),
        _line("AUDIT: OBJECT,1,1,WRITE,DELETE,TABLE,personal.a,<not logged>,<not logged>,9", user="csp_loader",
              session="s9"),
        _line("AUDIT: OBJECT,1,1,READ,SELECT,TABLE,personal.a,<not logged>,<not logged>,1",
              user="=HYPERLINK(\"http://x\")", session="s3"),
    ])
    report = ar.build(date(2026, 11, 1), date(2026, 11, 30), log, "csp_observatory")
    report.names = {"jsmith": "Jane Smith"}
    assert [r.login for r in report.by_kind(True)] == ["csp_loader"]
    assert report.per_login() == [("=HYPERLINK(\"http://x\")", "person", 1, 1), ("jsmith", "person", 2, 6),
                                  ("csp_loader", "service", 1, 9)]
    assert report.per_table() == [("personal.a", 2, 1), ("personal.b", 1, 0)]
    out = tmp_path / "out"
    paths = ar.write(report, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        text = p.read_text(encoding="utf-8")
        assert "Zebedee" not in text and "surname" not in text
        assert "Jane Smith" in text and "personal.b" in text
    rows = list(csv.DictReader(io.StringIO(paths[0].read_text(encoding="utf-8"))))
    assert [(r["login"], r["kind"], r["rows"]) for r in rows] == [
        ("jsmith", "person", "2"), ("jsmith", "person", "4"), ("'=HYPERLINK(\"http://x\")", "person", "1"),
        ("csp_loader", "service", "9")]
    assert rows[0]["when_utc"] == "2026-11-30 10:00:00" and rows[0]["tables"] == "personal.a"


def test_a_file_time_a_little_behind_its_last_line_does_not_hide_it(tmp_path):
    # file times are coarser than the server's clock: the last line can be stamped just after the file's mtime
    path = _write_log(tmp_path, [_line(_read_msg(1), at="2026-11-30 10:00:00.004 UTC")])
    line_at = datetime(2026, 11, 30, 10, 0, 0, 4000, tzinfo=timezone.utc)
    os.utime(path, (line_at.timestamp() - 0.003, line_at.timestamp() - 0.003))
    scan = aa.scan_log(tmp_path, line_at, datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert [e.statement_id for e in scan.entries] == [1]
    # a file last written long before the period is not read at all
    os.utime(path, (line_at.timestamp() - 86400, line_at.timestamp() - 86400))
    assert aa.scan_log(tmp_path, line_at, datetime(2026, 12, 1, tzinfo=timezone.utc)).files == []


def test_the_log_folder_named_by_the_environment_is_used_without_asking_the_server(monkeypatch, tmp_path):
    """docker-compose mounts the PostGIS container's log into the Airflow containers at another path."""
    monkeypatch.setenv(ar.LOG_DIR_ENV, str(tmp_path))
    # an address nothing answers: the server is never asked
    assert ar.log_dir_here("postgresql://x@127.0.0.1:9/none") == tmp_path
    monkeypatch.delenv(ar.LOG_DIR_ENV)
    monkeypatch.setattr(ar, "find_log_dir", lambda url, admin=None: Path("/asked") / url[-4:])
    assert ar.log_dir_here("postgresql://x@127.0.0.1:9/none") == Path("/asked/none")
