"""A feed without a current information sharing agreement is refused where its files are first taken (guidance
2.2); one whose agreement is past its review date still loads, with the engineers warned. Real sshd, gpg, PostGIS
and the feed's DAG (dag.test), the register pointed at a copy through CSP_AGREEMENTS_DIR."""
from __future__ import annotations

import dataclasses
import json
import time
from datetime import date, timedelta

import pytest

from csp_observatory import agreements, demo, fixtures, postcodes_sources, sftp, staging
from csp_observatory.schema_loading import schema_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")]

FEED = "bus_incidents"
PERIOD = "202602"                 # this module's own month


@pytest.fixture()
def register(tmp_path, monkeypatch):
    """The machine's register copied without any agreement for FEED; the DAG's tasks read it (same process)."""
    folder = tmp_path / "agreements"
    for a in agreements.read_register().values():
        if FEED not in a.feeds:
            agreements.write_agreement(a, folder)
    monkeypatch.setenv("CSP_AGREEMENTS_DIR", str(folder))
    return folder


@pytest.fixture()
def supply(settings, db, forget_supply):
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    made = fixtures.make_supply(schema, PERIOD, postcodes_sources.shipped_reference(), n=12)
    names = demo.drop_demo_supply(settings, schema, PERIOD, files=made.files, metadata=made.metadata)
    yield schema, names
    forget_supply(db, schema, PERIOD)


def _ls(settings, folder: str) -> list[str]:
    with sftp.connect_observatory(settings) as client:
        return sorted(client.listdir(folder))


def _rows(db, schema) -> int:
    table = f"{schema.db_schema}.{schema.files[0].table}"
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        n = 0
        if cur.fetchone()[0]:                # the feed's table is made by its first load
            cur.execute(f"SELECT count(*) FROM {table} WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))
            n = cur.fetchone()[0]
    db.rollback()
    return n


def test_a_feed_without_a_current_agreement_is_refused_and_its_files_quarantined(settings, db, register, supply):
    schema, names = supply
    partner = settings.supplier(FEED, schema.partner.id)
    assert not agreements.standing(partner, FEED).current
    since = time.time()
    demo.run_feed_dag(FEED)
    quarantine = _ls(settings, settings.partner_folder(partner, "quarantine"))
    assert set(names) <= set(quarantine)
    for name in names:
        assert f"{name}.reason.txt" in quarantine
        with sftp.connect_observatory(settings) as client:
            with client.open(f"{settings.partner_folder(partner, 'quarantine')}/{name}.reason.txt") as fh:
                text = fh.read().decode()
        assert "information sharing agreement" in text and "2.2" in text
    assert not set(names) & set(_ls(settings, settings.inbox(partner)))
    assert _rows(db, schema) == 0                                     # nothing loaded
    with db.cursor() as cur:
        cur.execute("SELECT DISTINCT status FROM observatory.deliveries WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))
        assert cur.fetchall() == [("quarantined",)]
    db.rollback()
    report = json.loads(demo.latest_report(settings, FEED, PERIOD, since).read_text())
    assert report["outcome"]["level"] == "red" and report["supply"]["status"] == "refused"
    # the partner's copy of the report says why
    assert any(n.startswith(f"{FEED}_{PERIOD}_quality_") for n in _ls(settings, settings.partner_folder(partner,
                                                                                                          "reports")))


def test_an_agreement_past_its_review_date_still_lets_the_supply_load_and_is_noted(settings, db, register, supply):
    schema, _ = supply
    partner = settings.supplier(FEED, schema.partner.id)
    today = date.today()
    demo_one = next(a for a in agreements.demo_agreements(today) if FEED in a.feeds)
    overdue = dataclasses.replace(demo_one, id="overdue-bus", signed=today - timedelta(days=400),
                                  review_date=today - timedelta(days=1))
    agreements.write_agreement(overdue, register)
    st = agreements.standing(partner, FEED)
    assert st.current and st.warning
    demo.run_feed_dag(FEED)
    assert _rows(db, schema) > 0
    manifest = json.loads(staging.read_text(staging.supply_area(settings, FEED, PERIOD) / "manifest.json"))
    assert manifest["stages"]["agreement"]["id"] == "overdue-bus"
    assert manifest["stages"]["agreement"]["review_due"] is True
