"""The Designated Liaison Officer's report of access to personal data for a period (``scripts/access_report``).

Every read of a table or view in the schema ``personal`` that the server's audit logged (``access_audit``): when,
the login (and the person's name, from the register of people ``governance.people`` when it exists), the personal
tables, the statement's class and command, and the rows it read; then totals per login and per table. The
observatory's own service reads (``csp_loader``: re-runs of loads, retention, subject access) are listed apart.
Written as CSV (one row per read) and Markdown, 0600, into a folder the engineer names; statement text is never
in it. The governance DAG writes last month's into ``<reports_dir>/access/`` (``write_monthly``).
"""
from __future__ import annotations

import argparse
import csv
import getpass
import os
import sys
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from csp_observatory import access_audit as aa
from csp_observatory.spreadsheet import text_cell

ACCESS_FOLDER: Final = "access"     # under the observatory's reports_dir
#: The server's audit log folder as this machine sees it, where it is not the server's own path (docker-compose
#: mounts the PostGIS container's log volume into the Airflow containers); else it is asked of the cluster.
LOG_DIR_ENV: Final = "CSP_AUDIT_LOG_DIR"


def log_dir_here(database_url: str, admin_url: str | None = None) -> Path:
    """The audit log folder: ``CSP_AUDIT_LOG_DIR`` when set, else asked of the cluster (:func:`find_log_dir`)."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    return find_log_dir(database_url, admin_url)
CSV_HEADER: Final = ("when_utc", "login", "name", "kind", "database", "tables", "command", "class", "rows",
                     "client", "application", "session", "statement_id")


@dataclass
class AccessReport:
    """The reads of one period, with where they were read from."""

    first: date
    last: date
    database: str | None
    log_dir: Path
    reads: list[aa.Read]
    names: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    service_logins: frozenset[str] = aa.SERVICE_LOGINS

    def kind(self, read: aa.Read) -> str:
        return aa.login_kind(read.login, self.service_logins)

    def by_kind(self, service: bool) -> list[aa.Read]:
        return [r for r in self.reads if (self.kind(r) == "service") == service]

    def per_login(self) -> list[tuple[str, str, int, int]]:
        """(login, kind, reads, rows) for each login, people first."""
        reads, rows = Counter[str](), Counter[str]()
        for r in self.reads:
            reads[r.login] += 1
            rows[r.login] += r.rows or 0
        return sorted(((login, aa.login_kind(login, self.service_logins), n, rows[login])
                       for login, n in reads.items()), key=lambda t: (t[1] == "service", t[0]))

    def per_table(self) -> list[tuple[str, int, int]]:
        """(table, reads by people and administrators, reads by services) for each table."""
        people, services = Counter[str](), Counter[str]()
        for r in self.reads:
            for t in r.tables:
                (services if self.kind(r) == "service" else people)[t] += 1
        return [(t, people[t], services[t]) for t in sorted(set(people) | set(services))]


#: Registers of people (login, name), in the order looked for: scripts/people's, then an older name for it.
PEOPLE_TABLES: Final = (("governance", "people"), ("observatory", "people"))


def people_names(url: str) -> dict[str, str] | None:
    """login -> name from the register of people (``PEOPLE_TABLES``): empty when there is none, None when this
    connection cannot tell (no login, no access)."""
    import psycopg2
    from psycopg2 import sql

    try:
        with closing(psycopg2.connect(url, connect_timeout=5)) as conn, conn.cursor() as cur:
            for schema, table in PEOPLE_TABLES:
                # the catalogue, which every login reads: whether the table is there even where it may not read it
                cur.execute("SELECT count(*) = 2 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                            "AND a.attname IN ('login', 'name') AND NOT a.attisdropped", (schema, table))
                if cur.fetchone()[0]:
                    cur.execute(sql.SQL("SELECT login, name FROM {} WHERE login IS NOT NULL")
                                .format(sql.Identifier(schema, table)))
                    out = {str(login): str(name or "") for login, name in cur.fetchall()}
                    conn.rollback()
                    return out
            return {}
    except psycopg2.Error:
        return None


def build(first: date, last: date, log_dir: Path, database: str | None, names_urls: Sequence[str] = (),
          service_logins: Sequence[str] = ()) -> AccessReport:
    """Read the log folder for ``first``..``last`` (both included) and name the logins (from the first of
    ``names_urls`` that can read the register of people)."""
    start, end = aa.period_bounds(first, last)
    scan = aa.scan_log(log_dir, start, end, database)
    reads = aa.group_reads(scan.entries)
    names: dict[str, str] = {}
    for url in names_urls if reads else ():
        if (found := people_names(url)) is not None:
            names = found
            break
    return AccessReport(first, last, database, Path(log_dir), reads, names, scan.unreadable,
                        aa.SERVICE_LOGINS | frozenset(service_logins))


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: a login or client name can begin with = + - @."""
    return text_cell("" if value is None else str(value))


def _md(value: Any) -> str:
    return ("" if value is None else str(value)).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _when(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _open_private(path: Path) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)        # an older file of the same name keeps no wider mode
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def write(report: AccessReport, out_dir: Path) -> list[Path]:
    """``access_<first>_<last>.csv`` and ``.md`` in ``out_dir`` (made 0700 if missing), each 0600."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        out_dir.mkdir(parents=True, mode=0o700)
    stem = out_dir / f"access_{report.first.isoformat()}_{report.last.isoformat()}"
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with _open_private(csv_path) as fh:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        for r in report.reads:
            w.writerow([_cell(v) for v in (_when(r.at), r.login, report.names.get(r.login, ""), report.kind(r),
                                           r.database, ";".join(r.tables), r.command, r.audit_class,
                                           "" if r.rows is None else r.rows, r.client, r.application, r.session,
                                           r.statement_id)])
    with _open_private(md_path) as fh:
        fh.write(markdown(report))
    return [csv_path, md_path]


def _reads_table(report: AccessReport, reads: list[aa.Read]) -> list[str]:
    if not reads:
        return ["None.", ""]
    lines = ["| when (UTC) | login | name | kind | tables | command | class | rows | client |",
             "|---|---|---|---|---|---|---|---:|---|"]
    for r in reads:
        lines.append("| " + " | ".join(_md(v) for v in (
            _when(r.at), r.login, report.names.get(r.login, ""), report.kind(r), ", ".join(r.tables), r.command,
            r.audit_class,
            "" if r.rows is None else r.rows, r.client)) + " |")
    return [*lines, ""]


def markdown(report: AccessReport) -> str:
    """The report as Markdown: people's reads, totals per login and per table, then the service's reads."""
    people, services = report.by_kind(False), report.by_kind(True)
    lines = [f"# Access to personal data, {report.first.isoformat()} to {report.last.isoformat()}", "",
             f"Database: {_md(report.database or 'all databases')}. Audit log: `{report.log_dir}`. Written "
             f"{_when(datetime.now(timezone.utc))} UTC by {_md(getpass.getuser())}.", "",
             "Every statement that read a table or view in the schema `personal`, as the database server's audit "
             "(pgaudit) logged it: who logged in, when, which personal tables, the kind of statement and the rows "
             "it read. The statements' text is never copied here.", ""]
    lines += [f"**Warning: {_md(w)}**\n" for w in report.warnings]
    if report.unreadable:
        lines += ["**Some log files could not be read; reads in them are missing from this report:**", "",
                  *(f"- {_md(u)}" for u in report.unreadable), ""]
    lines += [f"## Reads by people ({len(people)})", "", *_reads_table(report, people),
              "## Totals per login", ""]
    totals = report.per_login()
    if totals:
        lines += ["| login | name | kind | reads | rows |", "|---|---|---|---:|---:|",
                  *(f"| {_md(login)} | {_md(report.names.get(login, ''))} | {kind} | {n} | {rows} |"
                    for login, kind, n, rows in totals), ""]
    else:
        lines += ["No reads in this period.", ""]
    lines += ["## Totals per table", ""]
    if tables := report.per_table():
        lines += ["| table | reads by people | reads by the observatory's services |", "|---|---:|---:|",
                  *(f"| {_md(t)} | {p} | {s} |" for t, p, s in tables), ""]
    else:
        lines += ["No personal table was read.", ""]
    lines += [f"## The observatory's own service reads ({len(services)}; logins "
              f"{', '.join(sorted(report.service_logins))})", "",
              "Loads that replace a supply, retention and subject access searches read personal tables as the "
              "service's login.", "", *_reads_table(report, services)]
    return "\n".join(lines)


def find_log_dir(database_url: str, admin_url: str | None = None) -> Path:
    """The cluster's log folder: asked over the admin socket connection, else found with pg_lsclusters."""
    import psycopg2

    try:
        return aa.log_dir_from_settings(aa.server_settings(admin_url or aa.admin_url_for(database_url)))
    except (psycopg2.Error, KeyError):
        port = urlsplit(database_url).port or 5432
        if (found := aa.log_dir_from_lsclusters(port)) is not None:
            return found
    raise FileNotFoundError("cannot find the database server's log folder (run as root on the database server, "
                            "or give --log-dir)")


def audit_warnings(database_url: str, admin_url: str | None = None) -> list[str]:
    """Why the log may hold no reads even if there were some: the server does not audit as set-up makes it do.
    Nothing when the server cannot be asked (then only the log is known)."""
    import psycopg2

    try:
        server = aa.server_settings(admin_url or aa.admin_url_for(database_url))
    except (psycopg2.Error, KeyError):
        return []
    if aa.audit_enabled(server):
        return []
    return ["the database server does not audit reads of personal data now (pgaudit not loaded, pgaudit.role not "
            f"{aa.AUDIT_ROLE}, or no jsonlog/csvlog): reads made while it did not are not in this report"]


def write_monthly(settings: Any = None, today: date | None = None) -> list[Path]:
    """Last month's report into ``<reports_dir>/access/``, once (a month already written is kept as it is)."""
    from csp_observatory.config import load_settings

    settings = settings or load_settings()
    first, last = aa.last_month(today or datetime.now(timezone.utc).date())
    out_dir = Path(settings.reports_dir) / ACCESS_FOLDER
    done = [out_dir / f"access_{first.isoformat()}_{last.isoformat()}{s}" for s in (".csv", ".md")]
    if all(p.exists() for p in done):
        return done
    report = build(first, last, log_dir_here(settings.database_url), aa.database_name(settings.database_url),
                   names_urls=[aa.admin_url_for(settings.database_url), settings.database_url],
                   service_logins=[urlsplit(settings.database_url).username or ""])
    report.warnings = audit_warnings(settings.database_url)
    return write(report, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/access_report [--from DATE] [--to DATE] [--out DIR] [--log-dir DIR] [--all-databases]``."""
    from csp_observatory.config import load_settings

    p = argparse.ArgumentParser(prog="scripts/access_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="first", type=date.fromisoformat, help="first day, YYYY-MM-DD (default: the "
                   "first of last month)")
    p.add_argument("--to", dest="last", type=date.fromisoformat, help="last day, included (default: the end of "
                   "the month --from is in, or of last month)")
    p.add_argument("--out", type=Path, help="folder to write the CSV and Markdown into (made 0700; files 0600)")
    p.add_argument("--log-dir", type=Path, help="the server's log folder (default: asked of the cluster)")
    p.add_argument("--admin-url", help="superuser connection to ask the cluster (default: its local socket)")
    p.add_argument("--all-databases", action="store_true", help="every database of the cluster, not only the "
                   "observatory's")
    args = p.parse_args(argv)
    settings = load_settings()
    first, last = aa.last_month(datetime.now(timezone.utc).date())
    if args.first:
        first = args.first
        last = args.last or aa.last_month(date(first.year + first.month // 12, first.month % 12 + 1, 1))[1]
    elif args.last:
        first, last = args.last.replace(day=1), args.last
    try:
        log_dir = args.log_dir or log_dir_here(settings.database_url, args.admin_url)
        report = build(first, last, log_dir, None if args.all_databases else aa.database_name(settings.database_url),
                       names_urls=[args.admin_url or aa.admin_url_for(settings.database_url),
                                   settings.database_url],
                       service_logins=[urlsplit(settings.database_url).username or ""])
    except (ValueError, FileNotFoundError) as exc:
        print(f"scripts/access_report: {exc}", file=sys.stderr)
        return 2
    if not args.log_dir:
        report.warnings = audit_warnings(settings.database_url, args.admin_url)
    print(markdown(report))
    if args.out:
        for path in write(report, args.out):
            print(f"written: {path}", file=sys.stderr)
    return 1 if report.unreadable or report.warnings else 0


if __name__ == "__main__":
    sys.exit(main())
