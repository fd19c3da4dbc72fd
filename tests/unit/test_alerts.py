"""The late-supply alert without Airflow running: due times, the alert's text, the deadline each feed DAG carries, and
how long a run waits (it must still be waiting when its supply falls due)."""
from __future__ import annotations

import calendar
import os
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from csp_observatory import alerts
from csp_observatory.arrival import ARRIVAL_WAIT_S, wait_until
from csp_observatory.schema_loading import load_schemas, schema_for

pytestmark = pytest.mark.unit

DAGS = Path(__file__).resolve().parents[2] / "dags"
UTC = timezone.utc


@pytest.fixture(scope="module")
def police():
    return schema_for("police_recorded_crime")


def _last_day(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


@pytest.mark.parametrize("run_date, period", [
    (datetime(2026, 10, 1, 6, tzinfo=UTC), "202609"),
    (datetime(2026, 1, 1, 6, tzinfo=UTC), "202512"),
    (datetime(2026, 3, 1, 6, tzinfo=UTC), "202602"),
])
def test_a_scheduled_run_waits_for_the_period_before_it_and_its_due_date_follows_the_schema(police, run_date,
                                                                                           period) -> None:
    got_period, due = alerts.run_due(police, run_date)
    assert got_period == period
    # due_days whole days after the period's last day, at midnight UTC
    last = _last_day(int(period[:4]), int(period[4:]))
    assert due == datetime.combine(last, datetime.min.time(), UTC) + timedelta(days=police.due_days + 1)
    assert due > run_date


def test_the_deadline_interval_puts_every_monthly_run_s_deadline_on_its_due_time(police) -> None:
    interval = alerts.deadline_interval(police, datetime(2026, 1, 1, tzinfo=UTC))
    assert interval is not None
    # a year of the cron's fires: logical date + interval is exactly the supply's due time, long months or short
    for month in range(1, 13):
        fire = datetime(2027, month, 1, 6, tzinfo=UTC)
        assert fire + interval == alerts.run_due(police, fire)[1], month


def test_a_feed_without_a_due_date_gets_no_deadline(police) -> None:
    assert alerts.deadline_interval(schema_for("bus_incidents"), datetime(2026, 1, 1, tzinfo=UTC)) is None
    assert alerts.deadline_interval(replace(police, due_days=None), datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_where_the_gap_varies_the_deadline_is_never_before_the_due_time(police) -> None:
    # a yearly period on a monthly schedule: each run's due time is a different distance from its start
    yearly = replace(police, period_format="%Y")
    interval = alerts.deadline_interval(yearly, datetime(2026, 1, 1, tzinfo=UTC))
    gaps = [alerts.run_due(yearly, datetime(2027, m, 1, 6, tzinfo=UTC))[1] - datetime(2027, m, 1, 6, tzinfo=UTC)
            for m in range(1, 13)]
    assert len(set(gaps)) > 1 and interval == max(gaps)


def test_the_alert_names_the_partner_the_supplier_the_period_and_the_due_date(police) -> None:
    due = datetime(2026, 10, 17, tzinfo=UTC)
    same = alerts.late_supply(police, "202609", due, SimpleNamespace(supplier=lambda feed, default: default))
    text = same.message()
    for part in (police.partner.id, police.partner.agency, police.title, police.feed, "202609", "2026-10-17"):
        assert part in text, (part, text)
    assert same.supply_id == f"{police.feed}/202609"
    # the force's account has taken the feed over: the alert names both
    other = alerts.late_supply(police, "202609", due, SimpleNamespace(supplier=lambda feed, default: "force_x"))
    assert other.supplier == "force_x" and "force_x" in other.message() and police.partner.id in other.message()


def test_a_registry_that_cannot_say_who_supplies_the_feed_falls_back_to_the_schema_s_partner(police) -> None:
    def two_suppliers(feed: str, default: str) -> str:
        raise KeyError("supplied by more than one active partner")

    assert alerts.supplier_of(police, SimpleNamespace(supplier=two_suppliers)) == police.partner.id
    assert alerts.supplier_of(police, None) == police.partner.id


def test_the_alert_name_the_ui_lists_names_the_partner_and_fits_airflow_s_column() -> None:
    for schema in load_schemas():
        name = alerts.alert_name(schema)
        assert schema.partner.id in name and schema.title in name and len(name) <= 250


def test_the_callback_reads_the_run_s_period_and_the_deadline_s_time_from_its_context(police) -> None:
    settings = SimpleNamespace(supplier=lambda feed, default: default)
    deadline = datetime(2026, 10, 16, 23, 59, tzinfo=UTC)
    context = {"dag_run": {"dag_id": "feed_police_recorded_crime", "dag_run_id": "scheduled__2026-10-01",
                           "logical_date": "2026-10-01T06:00:00Z", "run_type": "scheduled"},
               "deadline": {"id": "x", "deadline_time": deadline}}
    alert = alerts.alert_for_run(police.feed, context, settings)
    assert alert is not None
    assert (alert.period, alert.due, alert.run_id) == ("202609", deadline, "scheduled__2026-10-01")
    # serialised to text on its way to the triggerer: the same alert
    context["deadline"]["deadline_time"] = deadline.isoformat()
    assert alerts.alert_for_run(police.feed, context, settings) == alert
    # without the deadline's time, the schema's due date
    del context["deadline"]
    assert alerts.alert_for_run(police.feed, context, settings).due == police.supply_due("202609")


def test_a_run_without_a_logical_date_raises_no_alert(police) -> None:
    context = {"dag_run": {"dag_id": "feed_police_recorded_crime", "dag_run_id": "asset_triggered__x",
                           "logical_date": None, "run_type": "asset_triggered"}}
    assert alerts.alert_for_run(police.feed, context, None) is None


def test_a_scheduled_run_waits_at_least_until_its_supply_is_due() -> None:
    now = datetime(2026, 10, 1, 6, tzinfo=UTC)
    due_after = 10 * 86400.0
    # the window outlasts the due time: unchanged
    assert wait_until(now, 16 * 86400.0, "scheduled", now, due_after) == now + timedelta(days=16)
    # a window shorter than the due time is stretched past it, so Airflow judges the deadline while the run waits
    end = wait_until(now, 86400.0, "scheduled", now, due_after)
    assert end > now + timedelta(seconds=due_after)
    # no due date: the window alone
    assert wait_until(now, 86400.0, "scheduled", now, None) == now + timedelta(days=1)


def test_a_run_an_arrival_or_a_person_started_still_waits_only_briefly() -> None:
    now = datetime(2026, 10, 5, tzinfo=UTC)
    for run_type in ("asset_triggered", "manual"):
        assert wait_until(now, 16 * 86400.0, run_type, now, 10 * 86400.0) == now + timedelta(seconds=ARRIVAL_WAIT_S)


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_scheduled_feed_dag_carries_the_late_supply_deadline_and_no_other_does(dagbag) -> None:
    if os.environ.get("CSP_TEST_DUE_AFTER_S"):
        pytest.skip("the test-only deadline override is set in this environment")
    for schema in load_schemas():
        dag = dagbag.dags[f"feed_{schema.feed}"]
        if schema.on_arrival or schema.due_days is None:
            assert not dag.deadline, schema.feed
            continue
        (alert,) = dag.deadline
        assert type(alert.reference).__name__ == "DagRunLogicalDateDeadline"
        assert alert.name == alerts.alert_name(schema)
        assert alert.callback.path == "csp_observatory.alerts.late_supply_alert"
        assert alert.callback.kwargs == {"feed": schema.feed}
        fire = datetime(2027, 2, 1, 6, tzinfo=UTC)
        assert fire + alert.interval == alerts.run_due(schema, fire)[1], schema.feed
        assert "Supply due:" in dag.doc_md and f"{schema.due_days} days" in dag.doc_md


def test_without_services_the_callback_reaches_postgis_through_the_settings_services(monkeypatch) -> None:
    """No ``services``: the check runs on a connection from ``pipeline_supply.SettingsServices(settings).db()``,
    which is closed after it."""
    from contextlib import contextmanager

    from csp_observatory import pipeline_supply

    settings, conn, used = SimpleNamespace(database_url="postgresql://nowhere/none"), object(), []

    class FakeServices:
        def __init__(self, given: object) -> None:
            used.append(("settings", given))

        @contextmanager
        def db(self):
            yield conn
            used.append(("closed", conn))

    monkeypatch.setattr(pipeline_supply, "SettingsServices", FakeServices)
    alert = SimpleNamespace(message=lambda: "late!", supply_id="x/202609", due=datetime(2026, 10, 12, tzinfo=UTC))
    monkeypatch.setattr(alerts, "alert_for_run", lambda feed, context, s: alert)
    monkeypatch.setattr(alerts, "check_supply", lambda c, a: used.append(("checked", c)) or True)
    assert alerts.raise_if_late("police_recorded_crime", {}, settings) == "late!"
    assert used == [("settings", settings), ("checked", conn), ("closed", conn)]
