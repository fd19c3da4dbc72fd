"""Subject access: every record about one person in the restricted (``personal``) schema, exported, and logged.

A person may ask for the personal information held about them (Data Protection Act, guidance 2.4.2.4-2.4.2.5:
personal information "is generally only available to the person who is the subject of the information"). Only
personalised feeds hold people's identities; depersonalised tables hold no names, dates of birth or addresses.

The identifiers searched are taken from the feed schemas' datafield roles, never hard-coded: ``name`` and
``date_of_birth`` (together when both are given and the table has both), the ``reference_number`` and ``link``
datafields of a file about people (one with a ``name`` datafield: offender and person ids), and an ``nhs_number``
role should a feed add one. Each table with matches is exported (CSV or JSON, 0600, into a 0700 folder), and the
run is recorded in ``observatory.subject_access_log``: who ran it, when, which kinds of identifier and their
SHA-256 (never the identifiers or the data), how many records were found per table. docs/GOVERNANCE.md gives the
steps (identity checks, the originating partner's consent, the one-month deadline).
"""
from __future__ import annotations

import argparse
import csv
import getpass
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from psycopg2 import sql

from csp_observatory.schema import FeedFile, FeedSchema
from csp_observatory.schema_loading import load_schemas
from csp_observatory.spreadsheet import text_cell

LOG_TABLE: Final = "observatory.subject_access_log"
#: Datafield role -> the kind of identifier it holds.
IDENTIFIER_ROLES: Final = {"name": "name", "date_of_birth": "date_of_birth", "reference_number": "reference",
                           "link": "reference", "nhs_number": "nhs_number"}
FORMATS: Final = ("csv", "json")

DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_at              timestamptz NOT NULL DEFAULT now(),
    requested_by        text NOT NULL,
    os_user             text NOT NULL,
    identifier_kinds    text[] NOT NULL,
    identifiers_sha256  text NOT NULL,
    tables_searched     integer NOT NULL,
    records_found       integer NOT NULL,
    found_by_table      jsonb NOT NULL,
    export_format       text NOT NULL
);
COMMENT ON TABLE {LOG_TABLE} IS
    'Each subject access search (csp_observatory.subject_access): who, when, which kinds of identifier (hashed), '
    'how many records per table; never the identifiers or the data';
"""


@dataclass(frozen=True)
class Identifiers:
    """What the person gave to be found by; at least a name, a reference or an NHS number."""

    name: str | None = None
    date_of_birth: date | None = None
    references: tuple[str, ...] = ()
    nhs_numbers: tuple[str, ...] = ()

    def normalised(self) -> dict[str, Any]:
        return {"name": normal_name(self.name) if self.name else None,
                "date_of_birth": self.date_of_birth.isoformat() if self.date_of_birth else None,
                "references": sorted({r.strip().upper() for r in self.references}),
                "nhs_numbers": sorted({re.sub(r"\D", "", n) for n in self.nhs_numbers})}

    def kinds(self) -> list[str]:
        n = self.normalised()
        return [k for k in ("name", "date_of_birth", "references", "nhs_numbers") if n[k]]

    def digest(self) -> str:
        """SHA-256 of the normalised identifiers: the same request gives the same hash, the log holds no name."""
        return hashlib.sha256(json.dumps(self.normalised(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Target:
    """One personal table and its identifier columns by kind."""

    schema: FeedSchema
    feed_file: FeedFile
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return f"{self.schema.db_schema}.{self.feed_file.table}"


def normal_name(name: str) -> str:
    """A name as compared: lower case, single spaces, no spaces at either end."""
    return re.sub(r"\s+", " ", name.strip()).lower()


def targets(schemas: Sequence[FeedSchema] | None = None) -> list[Target]:
    """Every table of a personalised feed that holds an identifier, with its identifier columns (from roles)."""
    out = []
    for s in schemas if schemas is not None else load_schemas():
        if not s.personalised:
            continue
        for f in s.files:
            about_people = any(d.role == "name" for d in f.datafields)
            cols: dict[str, list[str]] = {}
            for d in f.datafields:
                kind = IDENTIFIER_ROLES.get(d.role)
                if kind == "reference" and not about_people:
                    continue            # a reference to a site or an incident is not about a person
                if kind:
                    cols.setdefault(kind, []).append(d.name)
            if cols:
                out.append(Target(s, f, {k: tuple(v) for k, v in cols.items()}))
    return out


def condition(target: Target, ids: Identifiers) -> sql.Composable | None:
    """The WHERE clause finding the person in one table, or None when the table holds none of the identifiers."""
    I, L = sql.Identifier, sql.Literal  # noqa: E741
    n = ids.normalised()
    ors: list[sql.Composable] = []
    names, dobs = target.columns.get("name", ()), target.columns.get("date_of_birth", ())
    if n["name"] and names:
        by_name = sql.SQL(" OR ").join(sql.SQL("lower(regexp_replace(btrim({}), '\\s+', ' ', 'g')) = {}").format(
            I(c), L(n["name"])) for c in names)
        clause = sql.SQL("({})").format(by_name)
        if n["date_of_birth"] and dobs:
            clause = sql.SQL("({} AND ({}))").format(clause, sql.SQL(" OR ").join(
                sql.SQL("{} = {}::date").format(I(c), L(n["date_of_birth"])) for c in dobs))
        ors.append(clause)
    for kind, given, normal in (("reference", n["references"], "upper(btrim({}))"),
                                ("nhs_number", n["nhs_numbers"], "regexp_replace({}, '\\D', '', 'g')")):
        for c in target.columns.get(kind, ()):
            if given:
                ors.append(sql.SQL(normal + " = ANY({})").format(I(c), L(list(given))))
    return sql.SQL(" OR ").join(ors) if ors else None


def _columns(cur: Any, target: Target) -> list[str]:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                "ORDER BY ordinal_position", (target.schema.db_schema, target.feed_file.table))
    return [r[0] for r in cur.fetchall()]


def search(conn: Any, ids: Identifiers, schemas: Sequence[FeedSchema] | None = None
           ) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every record about the person, per table (``schema.table`` -> rows as dicts, the point as WKT); and the
    number of tables searched."""
    found: dict[str, list[dict[str, Any]]] = {}
    searched = 0
    with conn.cursor() as cur:
        for t in targets(schemas):
            where = condition(t, ids)
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (t.table,))
            if where is None or not cur.fetchone()[0]:
                continue
            searched += 1
            cols = _columns(cur, t)
            picked = [sql.SQL("ST_AsText({}) AS geom_wkt").format(sql.Identifier(c)) if c == "geom" else
                      sql.Identifier(c) for c in cols]
            cur.execute(sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY supply_id, fid").format(
                sql.SQL(", ").join(picked), sql.Identifier(t.schema.db_schema, t.feed_file.table), where))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
            found[t.table] = rows
    return found, searched


def _private_file(path: Path) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def export(found: dict[str, list[dict[str, Any]]], folder: Path, fmt: str = "csv") -> list[Path]:
    """One file per table with records (``<schema>.<table>.csv|json``, 0600) in ``folder`` (made 0700); an
    existing file is never overwritten."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for table, rows in sorted(found.items()):
        if not rows:
            continue
        path = folder / f"{table}.{fmt}"
        with _private_file(path) as fh:
            if fmt == "json":
                json.dump(rows, fh, indent=1, default=str)
            else:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                # a partner's text may look like a formula: the officer opens this file in a spreadsheet
                w.writerows({k: text_cell(v) for k, v in r.items()} for r in rows)
        written.append(path)
    return written


def ensure_log(conn: Any) -> None:
    """Create ``observatory.subject_access_log`` if missing (no commit)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOG_TABLE,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS observatory")
        cur.execute(DDL)


def log_run(conn: Any, ids: Identifiers, found: dict[str, list[dict[str, Any]]], searched: int, requested_by: str,
            fmt: str) -> int:
    """Record the search (no identifiers, no data) and commit; returns the log row's id."""
    ensure_log(conn)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {LOG_TABLE} (requested_by, os_user, identifier_kinds, identifiers_sha256, "
                    "tables_searched, records_found, found_by_table, export_format) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (requested_by, getpass.getuser(), ids.kinds(), ids.digest(), searched,
                     sum(len(r) for r in found.values()), json.dumps({t: len(r) for t, r in found.items()}), fmt))
        row_id = cur.fetchone()[0]
    conn.commit()
    return int(row_id)


def run(ids: Identifiers, out: Path, fmt: str = "csv", requested_by: str | None = None,
        settings: Any = None) -> dict[str, Any]:
    """Search, export and log one subject access request; returns counts per table, the files and the log id."""
    from csp_observatory.config import load_settings
    from csp_observatory.pipeline_supply import SettingsServices

    if not (ids.name or ids.references or ids.nhs_numbers):
        raise ValueError("give a name (with the date of birth where known), a reference or an NHS number")
    settings = settings or load_settings()
    with SettingsServices(settings).db() as conn:
        found, searched = search(conn, ids)
        conn.rollback()
        files = export(found, out, fmt)
        log_id = log_run(conn, ids, found, searched, requested_by or getpass.getuser(), fmt)
    return {"found": {t: len(r) for t, r in found.items()}, "files": [str(p) for p in files],
            "tables_searched": searched, "log_id": log_id}


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/subject_access --name NAME [--dob YYYY-MM-DD] [--reference REF] [--nhs-number N] --out DIR``."""
    p = argparse.ArgumentParser(prog="scripts/subject_access", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", help="the person's name as the partners record it")
    p.add_argument("--dob", type=date.fromisoformat, help="date of birth, YYYY-MM-DD (narrows a name)")
    p.add_argument("--reference", action="append", default=[], help="a person or offender id (repeatable)")
    p.add_argument("--nhs-number", action="append", default=[], help="an NHS number (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="folder for the export (made 0700; files 0600)")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--requested-by", help="who asked for the search (default: your OS user)")
    args = p.parse_args(argv)
    ids = Identifiers(name=args.name, date_of_birth=args.dob, references=tuple(args.reference),
                      nhs_numbers=tuple(args.nhs_number))
    try:
        out = run(ids, args.out, args.format, args.requested_by)
    except (ValueError, FileExistsError) as exc:
        print(f"scripts/subject_access: {exc}", file=sys.stderr)
        return 2
    for table, n in sorted(out["found"].items()):
        print(f"{table}: {n} record(s)")
    print(f"{sum(out['found'].values())} record(s) in {out['tables_searched']} table(s) searched; exported to "
          f"{args.out} ({len(out['files'])} file(s)); logged as observatory.subject_access_log id {out['log_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
