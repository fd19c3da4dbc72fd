"""Retention on the real services: a supply past its feed's retention is deleted whole (rows and the observatory's
records in PostGIS, its original in the partner's processed/, its reports) with every deletion logged, while a
recent supply of the same feed stays. Both supplies go through the feed's DAG from an SFTP drop."""
from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest

from csp_observatory import demo, fixtures, partitions, postcodes_sources, retention, sftp
from csp_observatory.schema_loading import schema_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")]

FEED = "fire_incidents"
TODAY = date.today()
_month_start = TODAY.replace(day=1)
# a month just past its rows' retention (60 months by default, plus a margin), and last month
_KEPT = retention.RETENTION_DEFAULTS["depersonalised"].rows_months
OLD = retention.add_months(_month_start, -(_KEPT + 2)).strftime("%Y%m")
RECENT = retention.add_months(_month_start, -1).strftime("%Y%m")
# Each session's own run id: the retention log keeps every run's rows, and this test reads back only its own.
RUN_ID = f"test_retention_{TODAY.isoformat()}_{uuid.uuid4().hex[:8]}"


def _count(db, sql: str, *args) -> int:
    with db.cursor() as cur:
        cur.execute(sql, args)
        n = cur.fetchone()[0]
    db.rollback()
    return n


def _partitions(db, schema, period: str) -> int:
    """How many partitions of the feed's first table hold the supply (found by their comment, as a load does)."""
    f = schema.files[0]
    comment = partitions.partition_comment(schema.db_schema, f.table, f"{schema.feed}/{period}")
    return _count(db, "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = to_regclass(%s) "
                      "AND obj_description(i.inhrelid, 'pg_class') = %s", f"{schema.db_schema}.{f.table}", comment)


def _ls(settings, folder: str) -> list[str]:
    with sftp.connect_observatory(settings) as client:
        return sorted(client.listdir(folder))


@pytest.fixture()
def two_supplies(settings, db, forget_supply, clean_partner_folders):
    """Two supplies of the feed loaded through its DAG, one past retention; the partners' folders start empty, so
    that what retention finds in processed/ is this test's own."""
    schema = schema_for(FEED)
    for period in (OLD, RECENT):
        forget_supply(db, schema, period)
    for period in (OLD, RECENT):
        made = fixtures.make_supply(schema, period, postcodes_sources.shipped_reference(), n=12)
        demo.drop_demo_supply(settings, schema, period, files=made.files, metadata=made.metadata)
        demo.run_feed_dag(FEED)
    yield schema
    for period in (OLD, RECENT):
        forget_supply(db, schema, period)


def test_a_supply_past_retention_is_deleted_and_logged_while_a_recent_one_stays(settings, db, two_supplies):
    schema = two_supplies
    table = f"{schema.db_schema}.{schema.files[0].table}"
    partner = settings.supplier(FEED, schema.partner.id)
    processed, reports = settings.partner_folder(partner, "processed"), settings.partner_folder(partner, "reports")
    assert retention.past(schema, OLD, "rows", TODAY) and not retention.past(schema, RECENT, "originals", TODAY)

    def held(period: str) -> dict[str, int]:
        sid = f"{FEED}/{period}"
        return {
            "rows": _count(db, f"SELECT count(*) FROM {table} WHERE supply_id = %s", sid),
            "supplies": _count(db, "SELECT count(*) FROM observatory.supplies WHERE supply_id = %s", sid),
            "ledger": _count(db, "SELECT count(*) FROM observatory.deliveries WHERE supply_id = %s", sid),
            "originals": sum(schema.files[0].match(n) == period for n in _ls(settings, processed)),
            "partner_reports": sum(n.startswith(f"{FEED}_{period}_quality_") for n in _ls(settings, reports)),
            "reports": len(list((Path(settings.reports_dir) / FEED / period).glob("*.json"))),
        }

    before = {p: held(p) for p in (OLD, RECENT)}
    for period in (OLD, RECENT):
        assert all(n > 0 for n in before[period].values()), (period, before[period])

    out = retention.apply(settings, today=TODAY, feeds=[FEED], run_id=RUN_ID)

    assert f"{FEED}/{OLD}" in out["supplies_past_rows_retention"]
    assert f"{FEED}/{RECENT}" not in out["supplies_past_rows_retention"]
    assert held(OLD) == {k: 0 for k in before[OLD]}
    assert held(RECENT) == before[RECENT]
    # the old supply's partition is dropped, not left empty; the recent one's stays
    assert _partitions(db, schema, OLD) == 0 and _partitions(db, schema, RECENT) == 1
    # every deletion is in the log, with why; nothing of the recent supply
    with db.cursor() as cur:
        cur.execute("SELECT kind, item, count, reason FROM observatory.retention_log WHERE run_id = %s "
                    "AND supply_id = %s", (RUN_ID, f"{FEED}/{OLD}"))
        logged = cur.fetchall()
        cur.execute("SELECT count(*) FROM observatory.retention_log WHERE run_id = %s AND supply_id = %s",
                    (RUN_ID, f"{FEED}/{RECENT}"))
        assert cur.fetchone()[0] == 0
    db.rollback()
    rows = {item: n for kind, item, n, _ in logged if kind == "rows"}
    assert rows[table] == before[OLD]["rows"]
    assert {"observatory.supplies", "observatory.deliveries"} <= set(rows)
    assert sum(1 for kind, item, _, _ in logged if kind == "originals" and item.startswith("sftp:")) == \
        before[OLD]["originals"] + 1                                  # the data file and the metadata file
    assert any(kind == "reports" and item.startswith("sftp:") for kind, item, _, _ in logged)
    assert any(kind == "reports" and item.endswith(f"{FEED}/{OLD}") for kind, item, _, _ in logged)
    assert all(f"kept until {retention.kept_until(schema, OLD, kind)}" in why for kind, _, _, why in logged)
    # a second run finds nothing more to delete
    again = retention.apply(settings, today=TODAY, feeds=[FEED], run_id=RUN_ID + "_again")
    assert again["deleted"] == {"rows": 0, "originals": 0, "reports": 0}
