"""Retention: delete what a feed keeps longer than its schema allows, and record each deletion.

The Data Protection Act's fifth principle (guidance 2.4.2.5) keeps personal information no longer than
necessary, and guidance 4.3.6 asks that supplied data be stored, and so disposed of, under agreed rules. Each feed's
schema says how long it keeps its rows, its original files and its reports, in months after a supply's period
ends (``retention:``, ``schema.Retention``; defaults in ``schema.RETENTION_DEFAULTS``, docs/GOVERNANCE.md).

:func:`apply` (the ``retention`` DAG, ``dags/retention.py``, daily; or ``python -m csp_observatory.retention``):

- rows: a supply whose period is past ``rows_months`` goes whole, in one transaction per supply, from its feed's
  tables and the observatory's supply-bound records (ledger, supplies, rejected rows, validation results, supply
  metadata, the dq stamp), the feed's counts by ward and month recounted in the same transaction;
- originals: files of the feed in every active partner's ``processed/`` whose period is past ``originals_months``;
- reports: the observatory's copies (``<reports_dir>/<feed>/<period>/``), the supply's staging folder (its
  manifest and report copy) and the partner's copies in ``reports/``, past ``reports_months``.

Every deletion is a row of ``observatory.retention_log``: what, which supply and file, when, why (never content).
"""
from __future__ import annotations

import argparse
import calendar
import logging
import re
import shutil
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Final

from psycopg2 import sql

from csp_observatory.schema import RETENTION_DEFAULTS, FeedSchema, Retention, period_bounds, valid_period

log = logging.getLogger(__name__)

LOG_TABLE: Final = "observatory.retention_log"
#: The observatory's records that belong to one supply (``supply_id``), deleted with its rows.
SUPPLY_TABLES: Final = ("observatory.deliveries", "observatory.supplies", "observatory.rejected_rows",
                        "observatory.validation_results", "observatory.supply_metadata", "dq.supplies")
KINDS: Final = ("rows", "originals", "reports")

DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    feed        text NOT NULL,
    supply_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('rows', 'originals', 'reports')),
    item        text NOT NULL,
    count       bigint NOT NULL,
    reason      text NOT NULL,
    run_id      text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS retention_log_supply_idx ON {LOG_TABLE} (supply_id);
COMMENT ON TABLE {LOG_TABLE} IS
    'What retention deleted (csp_observatory.retention): rows per table, original and report files, per supply, '
    'with when and why; never any content';
"""


@dataclass(frozen=True)
class Deleted:
    """One deletion: ``count`` rows of table ``item``, or one file ``item``."""

    feed: str
    supply_id: str
    kind: str
    item: str
    count: int
    reason: str


def rules(schema: FeedSchema) -> Retention:
    """The feed's retention: its schema's, else the default of its dataset type."""
    return schema.retention or RETENTION_DEFAULTS[schema.dataset_type]


def add_months(day: date, months: int) -> date:
    """``day`` moved on by whole months, kept within the month (31 January + 1 month = 28/29 February); a month's
    last day moves to the last day (30 September + 1 month = 31 October: a period ends on its month's last day)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    month_end = day.day == calendar.monthrange(day.year, day.month)[1]
    return day.replace(year=year, month=month + 1, day=last if month_end else min(day.day, last))


def kept_until(schema: FeedSchema, period: str, kind: str) -> date | None:
    """The last day a supply's ``kind`` (rows, originals, reports) is kept; None when the period cannot be read
    (then nothing of it is deleted: a wrong guess would delete too early)."""
    bounds = period_bounds(schema.period_format, period)
    if bounds is None:
        return None
    return add_months(bounds[1], getattr(rules(schema), f"{kind}_months"))


def past(schema: FeedSchema, period: str, kind: str, today: date) -> bool:
    """Whether a supply's ``kind`` is past its retention on ``today``."""
    until = kept_until(schema, period, kind)
    return until is not None and today > until


def reason(schema: FeedSchema, period: str, kind: str) -> str:
    """Why a supply's ``kind`` was deleted, for the log."""
    months = getattr(rules(schema), f"{kind}_months")
    source = (f"the default for {schema.dataset_type} feeds" if rules(schema) == RETENTION_DEFAULTS[schema.dataset_type]
              else "its schema's retention block")
    return (f"{schema.feed} keeps {kind} {months} months after a period ends ({source}, docs/GOVERNANCE.md); "
            f"period {period} was kept until {kept_until(schema, period, kind)}")


def ensure_log(conn: Any) -> None:
    """Create ``observatory.retention_log`` if missing (no commit)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOG_TABLE,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS observatory")
        cur.execute(DDL)


def record(conn: Any, deleted: Iterable[Deleted], run_id: str = "") -> None:
    """Write deletions to the log (no commit: the caller's transaction, with the deletion itself)."""
    with conn.cursor() as cur:
        for d in deleted:
            cur.execute(f"INSERT INTO {LOG_TABLE} (feed, supply_id, kind, item, count, reason, run_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (d.feed, d.supply_id, d.kind, d.item, d.count, d.reason, run_id))


def _exists(cur: Any, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    return bool(cur.fetchone()[0])


def _feed_tables(schema: FeedSchema) -> list[str]:
    return [f"{schema.db_schema}.{f.table}" for f in schema.files]


def periods_in_database(conn: Any, schema: FeedSchema) -> set[str]:
    """Every period of the feed with rows or records in the database."""
    prefix = f"{schema.feed}/"
    found: set[str] = set()
    with conn.cursor() as cur:
        for table in [*_feed_tables(schema), *SUPPLY_TABLES]:
            if _exists(cur, table):
                schema_name, name = table.split(".")
                cur.execute(sql.SQL("SELECT DISTINCT supply_id FROM {} WHERE starts_with(supply_id, %s)").format(
                    sql.Identifier(schema_name, name)), (prefix,))
                found |= {r[0][len(prefix):] for r in cur.fetchall()}
    return {p for p in found if valid_period(schema.period_format, p)}


def delete_supply(conn: Any, schema: FeedSchema, period: str, why: str, run_id: str = "") -> list[Deleted]:
    """Delete one supply's rows from its feed's tables and the observatory's records, recount the feed's counts by
    ward and month, and log it: all in one transaction, committed here (rolled back on any error)."""
    from csp_observatory import partitions, ward_month

    supply_id = f"{schema.feed}/{period}"
    deleted: list[Deleted] = []
    try:
        ensure_log(conn)
        with conn.cursor() as cur:
            # one deleter of a supply at a time (two retention runs, or a load of the same period)
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"retention {supply_id}",))
            for table in [*_feed_tables(schema), *SUPPLY_TABLES]:
                if not _exists(cur, table):
                    continue
                schema_name, name = table.split(".")
                if partitions.is_partitioned(cur, schema_name, name):
                    # a feed table: drop the supply's partition, so no empty one is left behind
                    n = partitions.swap(cur, schema_name, name, supply_id, None)
                else:
                    cur.execute(sql.SQL("DELETE FROM {} WHERE supply_id = %s").format(
                        sql.Identifier(schema_name, name)), (supply_id,))
                    n = cur.rowcount
                if n:
                    deleted.append(Deleted(schema.feed, supply_id, "rows", table, n, why))
        if deleted:
            ward_month.refresh_ward_month(conn, schema)
            record(conn, deleted, run_id)
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    return deleted


# --------------------------------------------------------------------------------------------------------- files

def _report_period(feed: str, name: str) -> str | None:
    m = re.fullmatch(rf"{re.escape(feed)}_(?P<period>[0-9]+)_quality_[0-9A-Za-z]+\.(?:html|json)", name)
    return m.group("period") if m else None


def _remote_files(client: Any, folder: str) -> list[str]:
    try:
        return sorted(e.filename for e in client.listdir_attr(folder) if stat.S_ISREG(e.st_mode or 0))
    except FileNotFoundError:
        return []


def delete_remote_files(client: Any, settings: Any, schema: FeedSchema, today: date,
                        listings: dict[str, list[str]] | None = None) -> list[Deleted]:
    """Originals in each active partner's processed/, and the partner's reports/, past the feed's retention.
    ``listings`` keeps each folder's listing across feeds (one SFTP listing per folder and run)."""
    from csp_observatory import intake

    listings = {} if listings is None else listings
    deleted: list[Deleted] = []
    for partner_id in sorted(settings.partners):
        for sub, kind in (("processed", "originals"), ("reports", "reports")):
            folder = settings.partner_folder(partner_id, sub)
            if folder not in listings:
                listings[folder] = _remote_files(client, folder)
            for name in list(listings[folder]):
                if kind == "originals":
                    hit = intake.classify(schema, name)
                    period = hit[1] if hit else None
                else:
                    period = _report_period(schema.feed, name)
                if period is None or not past(schema, period, kind, today):
                    continue
                client.remove(f"{folder}/{name}")
                listings[folder].remove(name)
                deleted.append(Deleted(schema.feed, f"{schema.feed}/{period}", kind, f"sftp:{folder}/{name}", 1,
                                       reason(schema, period, kind)))
    return deleted


def delete_local_reports(settings: Any, schema: FeedSchema, today: date) -> list[Deleted]:
    """The observatory's report folders (``<reports_dir>/<feed>/<period>/``) and the supplies' staging folders
    (manifest and report copy) past the feed's report retention; a supply still in flight is left alone."""
    from csp_observatory import staging

    deleted: list[Deleted] = []
    folder = Path(settings.reports_dir) / schema.feed
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            if valid_period(schema.period_format, sub.name) and past(schema, sub.name, "reports", today):
                files = sum(1 for p in sub.rglob("*") if p.is_file())
                shutil.rmtree(sub)
                deleted.append(Deleted(schema.feed, f"{schema.feed}/{sub.name}", "reports", str(sub), files,
                                       reason(schema, sub.name, "reports")))
    area = staging.root(settings) / schema.feed
    if staging.is_local(area) and area.is_dir():
        for sub in sorted(p for p in area.iterdir() if p.is_dir() and not p.is_symlink()):
            period = sub.name
            manifest = sub / "work" / "manifest.json"
            in_flight = manifest.exists() and '"status": "collected"' in manifest.read_text(encoding="utf-8")
            if valid_period(schema.period_format, period) and past(schema, period, "reports", today) \
                    and not in_flight:
                files = sum(1 for p in sub.rglob("*") if p.is_file())
                staging.remove(sub)
                deleted.append(Deleted(schema.feed, f"{schema.feed}/{period}", "reports", f"staging:{sub}", files,
                                       reason(schema, period, "reports")))
    return deleted


# ------------------------------------------------------------------------------------------------------- the run

def apply(settings: Any = None, today: date | None = None, feeds: Sequence[str] | None = None,
          run_id: str = "", dry_run: bool = False, services: Any = None) -> dict[str, Any]:
    """Delete everything past retention for every feed (or ``feeds``); returns what was (or would be) deleted.
    ``services`` (``pipeline_supply.Services``: the DAG hands the Airflow Connections') reach PostGIS and SFTP; by default
    the settings'."""
    from csp_observatory import pipeline_supply
    from csp_observatory.config import load_settings
    from csp_observatory.schema_loading import load_schemas

    settings = settings or load_settings()
    svc = services if services is not None else pipeline_supply.SettingsServices(settings)
    today = today or datetime.now(timezone.utc).date()
    schemas = [s for s in load_schemas() if feeds is None or s.feed in feeds]
    done: list[Deleted] = []
    due: list[str] = []
    with svc.db() as conn:
        ensure_log(conn)
        conn.commit()
        for schema in schemas:
            for period in sorted(periods_in_database(conn, schema)):
                if past(schema, period, "rows", today):
                    due.append(f"{schema.feed}/{period}")
                    if not dry_run:
                        done += delete_supply(conn, schema, period, reason(schema, period, "rows"), run_id)
        if not dry_run:
            files: list[Deleted] = []
            with svc.sftp() as client:
                listings: dict[str, list[str]] = {}
                for schema in schemas:
                    files += delete_remote_files(client, settings, schema, today, listings)
                    files += delete_local_reports(settings, schema, today)
            record(conn, files, run_id)
            conn.commit()
            done += files
    for d in done:
        log.info("retention: deleted %s %s of %s (%s)", d.count, d.item, d.supply_id, d.kind)
    summary = {kind: sum(d.count for d in done if d.kind == kind) for kind in KINDS}
    return {"today": today.isoformat(), "dry_run": dry_run, "supplies_past_rows_retention": due,
            "deleted": summary, "items": [d.__dict__ for d in done]}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csp_observatory.retention [--dry-run] [--feed F ...] [--today YYYY-MM-DD]``."""
    p = argparse.ArgumentParser(prog="csp_observatory.retention", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list the supplies past row retention; delete nothing")
    p.add_argument("--feed", action="append", help="only this feed (repeatable)")
    p.add_argument("--today", type=date.fromisoformat, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = apply(today=args.today, feeds=args.feed, dry_run=args.dry_run)
    print(f"{'would delete' if args.dry_run else 'deleted'}: {len(out['supplies_past_rows_retention'])} supplies "
          f"past row retention; {out['deleted']}")
    for sid in out["supplies_past_rows_retention"]:
        print(f"  {sid}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
