"""Who read personal data, when, and what: the server's audit log of the schema ``personal``, read per period.

``scripts/setup_audit.sh`` makes PostgreSQL log every statement that reads a table or view in ``personal``
(pgaudit's object audit: the role ``csp_auditor`` holds SELECT on each of them) as JSON lines (jsonlog). Each
line carries the login (the session user: ``SET ROLE`` does not hide who logged in), the database, the session,
the time and pgaudit's message::

    AUDIT: OBJECT,<statement id>,<substatement id>,<class>,<command>,<object type>,<schema.name>,<statement>,
           <parameters>[,<rows>]

This module reads those lines (jsonlog, or csvlog from a server set up that way) and keeps only the class,
command, object and row count: the statement's text and parameters are never read into a report, since a
WHERE clause can hold a person's name. One statement touching several personal tables is one read.
``access_report`` (``access_audit_report.py``) turns the reads into the Designated Liaison Officer's report.
"""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

AUDITED_SCHEMA: Final = "personal"
AUDIT_ROLE: Final = "csp_auditor"
#: Logins that read personal tables as a service (the loader's re-runs, retention, subject access), not a person.
SERVICE_LOGINS: Final = frozenset({"csp_loader"})
#: The cluster's superuser: an engineer on the database server itself.
ADMIN_LOGINS: Final = frozenset({"postgres"})
AUDIT_PREFIX: Final = "AUDIT: "
#: csvlog's columns (PostgreSQL 15) that the report uses.
CSV_COLUMNS: Final = {"timestamp": 0, "user": 1, "dbname": 2, "remote_host": 4, "session_id": 5, "message": 13,
                      "application_name": 22}
#: Zone abbreviations PostgreSQL may print in log timestamps (set-up sets log_timezone = UTC).
ZONES: Final = {"UTC": 0, "GMT": 0, "Z": 0, "BST": 1, "CET": 1, "CEST": 2}
MTIME_MARGIN: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class AuditEntry:
    """One relation of one audited statement, as one log line says it (no statement text)."""

    at: datetime
    login: str
    database: str
    session: str
    statement_id: int
    substatement_id: int
    audit_class: str       # READ, WRITE (an UPDATE or DELETE whose WHERE reads the table)
    command: str           # SELECT, DELETE, ...
    object_type: str       # TABLE, VIEW, ...
    schema: str
    relation: str
    rows: int | None       # rows retrieved or affected (pgaudit.log_rows), None when not logged
    client: str = ""
    application: str = ""

    @property
    def table(self) -> str:
        return f"{self.schema}.{self.relation}"


@dataclass(frozen=True)
class Read:
    """One statement that read personal data: every personal relation it touched."""

    at: datetime
    login: str
    database: str
    session: str
    statement_id: int
    command: str
    audit_class: str
    tables: tuple[str, ...]
    rows: int | None
    client: str
    application: str

    @property
    def kind(self) -> str:
        """person, service (the observatory's own login) or administrator."""
        return login_kind(self.login)


def login_kind(login: str, service_logins: Iterable[str] = SERVICE_LOGINS) -> str:
    """Whether a login is a person's, the observatory's service's, or the server's superuser."""
    if login in set(service_logins):
        return "service"
    return "administrator" if login in ADMIN_LOGINS else "person"


def split_qualified(name: str) -> tuple[str, str]:
    """``schema.relation`` as pgaudit prints it (identifiers double-quoted where needed) -> the two names."""
    parts: list[str] = []
    buf, quoted, i = [], False, 0
    while i < len(name):
        ch = name[i]
        if quoted:
            if ch == '"' and name[i + 1:i + 2] == '"':
                buf.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                buf.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == "." and len(parts) == 0:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])


def parse_audit_message(message: str) -> dict[str, Any] | None:
    """The fields of a pgaudit OBJECT message, without its statement and parameters; None for anything else."""
    if not message.startswith(AUDIT_PREFIX + "OBJECT,"):
        return None
    try:
        fields = next(csv.reader(io.StringIO(message[len(AUDIT_PREFIX):], newline="")))
    except (csv.Error, StopIteration):
        return None
    if len(fields) < 7 or not fields[1].isdigit() or not fields[2].isdigit():
        return None
    schema, relation = split_qualified(fields[6])
    # 7 fixed fields, then the statement and the parameters (each one CSV field, "<not logged>" when off), then
    # the rows when pgaudit.log_rows is on: the row count is the tenth field, never a guess from the statement.
    rows = int(fields[9]) if len(fields) == 10 and fields[9].isdigit() else None
    return {"statement_id": int(fields[1]), "substatement_id": int(fields[2]), "audit_class": fields[3],
            "command": fields[4], "object_type": fields[5], "schema": schema, "relation": relation, "rows": rows}


def parse_timestamp(text: str) -> datetime:
    """A log timestamp (``2026-11-30 02:30:42.135 UTC``, or with a numeric offset) as an aware UTC datetime."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*(\S+)?", text)
    if not m:
        raise ValueError(f"not a log timestamp: {text!r}")
    stamp, zone = m.group(1), m.group(2) or "UTC"
    at = datetime.fromisoformat(stamp.replace(" ", "T"))
    if zone.upper() in ZONES:
        offset = timedelta(hours=ZONES[zone.upper()])
    elif z := re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone):
        offset = timedelta(hours=int(z.group(2)), minutes=int(z.group(3) or 0)) * (1 if z.group(1) == "+" else -1)
    else:
        raise ValueError(f"unknown time zone {zone!r} in a log timestamp (set log_timezone = 'UTC')")
    return (at - offset).replace(tzinfo=timezone.utc)


def _entry(record: dict[str, Any]) -> AuditEntry | None:
    fields = parse_audit_message(record.get("message") or "")
    if fields is None:
        return None
    return AuditEntry(at=parse_timestamp(record["timestamp"]), login=record.get("user") or "",
                      database=record.get("dbname") or "", session=record.get("session_id") or "",
                      client=record.get("remote_host") or "", application=record.get("application_name") or "",
                      **fields)


def parse_json_line(line: str) -> AuditEntry | None:
    """One jsonlog line -> its audit entry, or None when it is not a pgaudit OBJECT line."""
    if "AUDIT: OBJECT," not in line:      # cheap: most server log lines are not audit lines
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return _entry(record) if isinstance(record, dict) else None


def parse_csv_record(row: list[str]) -> AuditEntry | None:
    """One csvlog record (a row of the csv module) -> its audit entry, or None."""
    if len(row) <= CSV_COLUMNS["message"]:
        return None
    record = {k: (row[i] if i < len(row) else "") for k, i in CSV_COLUMNS.items()}
    return _entry(record)


@dataclass
class LogScan:
    """What reading a log folder found: the entries of the period, and what could not be read."""

    entries: list[AuditEntry]
    files: list[Path]
    unreadable: list[str]


def scan_log(log_dir: Path, start: datetime, end: datetime, database: str | None = None,
             schema: str = AUDITED_SCHEMA) -> LogScan:
    """Every audited read of ``schema`` in ``[start, end)`` in the jsonlog (``*.json``) and csvlog (``*.csv``)
    files of ``log_dir``, of ``database`` only when given."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"no audit log folder {log_dir}")
    entries: list[AuditEntry] = []
    files: list[Path] = []
    unreadable: list[str] = []
    for path in sorted([*log_dir.glob("*.json"), *log_dir.glob("*.csv")]):
        try:
            # a file last written before the period holds nothing of it (the server only appends); with a margin,
            # as file times are coarser than the clock (a line written just after ``start`` can carry a time before)
            if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < start - MTIME_MARGIN:
                continue
            files.append(path)
            for entry in _read_file(path):
                if start <= entry.at < end and entry.schema == schema \
                        and (database is None or entry.database == database):
                    entries.append(entry)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            unreadable.append(f"{path.name}: {exc}")
    entries.sort(key=lambda e: (e.at, e.session, e.statement_id, e.substatement_id, e.table))
    return LogScan(entries, files, unreadable)


def _read_file(path: Path) -> Iterator[AuditEntry]:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        if path.suffix == ".csv":
            records: Iterable[AuditEntry | None] = (parse_csv_record(row) for row in csv.reader(fh))
        else:
            records = (parse_json_line(line) for line in fh)
        yield from (r for r in records if r is not None)


def group_reads(entries: Iterable[AuditEntry]) -> list[Read]:
    """One read per statement (session + statement id): the personal relations it touched, its largest row count."""
    groups: dict[tuple[str, str, int], list[AuditEntry]] = {}
    for e in entries:
        groups.setdefault((e.database, e.session, e.statement_id), []).append(e)
    reads = []
    for (database, session, statement_id), es in groups.items():
        rows = [e.rows for e in es if e.rows is not None]
        reads.append(Read(at=min(e.at for e in es), login=es[0].login, database=database, session=session,
                          statement_id=statement_id, command=es[0].command,
                          audit_class="/".join(sorted({e.audit_class for e in es})),
                          tables=tuple(sorted({e.table for e in es})), rows=max(rows) if rows else None,
                          client=es[0].client, application=es[0].application))
    return sorted(reads, key=lambda r: (r.at, r.session, r.statement_id))


def last_month(today: date) -> tuple[date, date]:
    """The first and last day of the month before ``today``'s."""
    end = today.replace(day=1) - timedelta(days=1)
    return end.replace(day=1), end


def period_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """``[first 00:00 UTC, the day after last 00:00 UTC)``: both days included."""
    if last < first:
        raise ValueError(f"the period ends ({last}) before it starts ({first})")
    start = datetime.combine(first, datetime.min.time(), timezone.utc)
    return start, datetime.combine(last + timedelta(days=1), datetime.min.time(), timezone.utc)


# ---------------------------------------------------------------- finding the cluster's log and its settings
def admin_url_for(database_url: str, socket_dir: str = "/var/run/postgresql") -> str:
    """The superuser's socket URL for the database ``database_url`` names (root or postgres on the server)."""
    u = urlsplit(database_url)
    port = u.port or (parse_qs(u.query).get("port") or ["5432"])[0]
    return f"postgresql://postgres@/{u.path.lstrip('/')}?host={socket_dir}&port={port}"


def database_name(database_url: str) -> str:
    """The database a URL names."""
    return urlsplit(database_url).path.lstrip("/")


def server_settings(admin_url: str) -> dict[str, str]:
    """The server's log and audit settings, read over the admin connection."""
    import psycopg2

    names = ("log_directory", "data_directory", "log_destination", "logging_collector", "shared_preload_libraries")
    with closing(psycopg2.connect(admin_url, connect_timeout=5)) as conn, conn.cursor() as cur:
        out = {}
        for name in names:
            cur.execute("SELECT current_setting(%s)", (name,))
            out[name] = cur.fetchone()[0]
        cur.execute("SELECT current_setting('pgaudit.role', true)")
        out["pgaudit.role"] = cur.fetchone()[0] or ""
        conn.rollback()
    return out


def audit_enabled(settings: dict[str, str]) -> bool:
    """Whether the server loads pgaudit with the audit role and writes a log this module reads."""
    return ("pgaudit" in re.split(r"[\s,]+", settings.get("shared_preload_libraries", ""))
            and settings.get("pgaudit.role") == AUDIT_ROLE
            and bool({"jsonlog", "csvlog"} & set(re.split(r"[\s,]+", settings.get("log_destination", "")))))


def log_dir_from_settings(settings: dict[str, str]) -> Path:
    """The absolute log folder: log_directory, relative to data_directory unless absolute."""
    return Path(settings["data_directory"]) / settings["log_directory"]


def log_dir_from_lsclusters(port: int) -> Path | None:
    """Without a database connection: the Debian cluster on ``port`` (pg_lsclusters), its log_directory from its
    config files (postgresql.conf, then conf.d in order: the last one wins)."""
    try:
        out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[2] == str(port):
            etc = Path("/etc/postgresql") / cols[0] / cols[1]
            value = "log"
            for conf in [etc / "postgresql.conf", *sorted((etc / "conf.d").glob("*.conf"))]:
                try:
                    for m in re.finditer(r"(?m)^\s*log_directory\s*=?\s*'([^']*)'", conf.read_text("utf-8")):
                        value = m.group(1)
                except OSError:
                    continue
            return Path(cols[5]) / value
    return None
