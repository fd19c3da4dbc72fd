"""A supply that is not in by its due date raises the late-supply deadline alert in a running Airflow; one that
arrives in time raises none. Real scheduler, DAG processor, triggerer and API server (LocalExecutor, a metadata DB
of their own), real sshd, gpg and PostGIS.

The runs are real scheduled runs: unpausing a core feed's DAG (through the REST API) starts the run of its latest
fire (the 1st of this month), which waits for last month's supply. Only the due time is shortened, for the test:
``CSP_TEST_DUE_AFTER_S`` (read by dags/feeds.py) puts the deadline that many seconds after a run is queued, instead
of ``due_days`` after the period. The months are therefore last month's, whichever that is, cleared before and after.
"""
from __future__ import annotations

import stat
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest
from airflow_harness import Api, base_env, deployment, free_port, sqlite_query, tails, wait

from csp_observatory import alerts, demo, fixtures, postcodes_sources
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

MISSING = "council_asb"         # no supply ever arrives for its scheduled run's month
ON_TIME = "fire_incidents"      # its supply arrives while its scheduled run waits
# The test's due times, after each run is queued: the missing month's falls while its run still waits (it is judged
# only after that, and after the test has cleared the month, a few seconds after the run is queued); the on-time run
# has ample room to load its supply before its own, and is judged when it ends (a run that succeeds drops its
# deadline), so the test never waits for that one.
DUE_AFTER_S = {MISSING: 30, ON_TIME: 400}
# How long the runs wait for a supply: the missing one is still waiting when it falls due (the scheduler judges
# deadlines on every loop, i.e. within seconds), and the on-time supply, sent as soon as its run waits, is seen
# well within it. The missing run waits all of it, which is most of this module's time.
WINDOW_S = 60
START_WAIT_S = 180
RUN_WAIT_S = 600
CALLBACK_WAIT_S = 120


@pytest.fixture(scope="module")
def airflow_deployment(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[dict[str, Any]]:
    """Airflow's own processes on a metadata DB of their own, running the repository's DAGs against the tests'
    services with the test-only short due time; stopped (with everything they started) after the module."""
    home = tmp_path_factory.mktemp("airflow_late_supply")
    api_port = free_port()
    env = base_env(home, api_port, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
                   CSP_SENSOR_TIMEOUT_S=str(WINDOW_S),
                   CSP_TEST_DUE_AFTER_S=",".join(f"{feed}={s}" for feed, s in DUE_AFTER_S.items()))  # dags/feeds.py
    logs = home / "component-logs"
    with deployment(env, logs):
        yield {"env": env, "db": home / "airflow.db", "logs": logs, "api": Api(api_port)}


def _period_waited_for(logical_date: str) -> str:
    """The month a monthly run waits for: the one before its logical date's (worked out here, not by alerts.py)."""
    day = datetime.fromisoformat(logical_date).date() - timedelta(days=1)
    return f"{day.year}{day.month:02d}"


def _clean_supply(feed: str, period: str) -> tuple[dict[str, str], str]:
    """A supply with none of the fixture's deliberately bad rows, and a metadata file that matches it: it loads
    green, so its run succeeds."""
    schema = schema_for(feed)
    supply = fixtures.make_supply(schema, period, postcodes_sources.shipped_reference(), n=30)
    files = {}
    for name, text in supply.files.items():
        bad = {b["row"] for b in supply.bad_rows if b["file"] == name}
        header, *rows = text.splitlines(keepends=True)
        files[name] = header + "".join(r for i, r in enumerate(rows, start=1) if i not in bad)
    return files, fixtures.make_metadata(schema, period, files)


def _forget_alert(db, feed: str, period: str) -> None:
    alerts.ensure_table(db)
    with db.cursor() as cur:
        cur.execute(f"DELETE FROM {alerts.ALERTS_TABLE} WHERE supply_id = %s", (f"{feed}/{period}",))
    db.commit()


def _alert_rows(db, feed: str, period: str) -> list[dict[str, Any]]:
    with db.cursor() as cur:
        cur.execute(f"SELECT kind, feed, period, partner, supplier, due_at, message, dag_id, run_id "
                    f"FROM {alerts.ALERTS_TABLE} WHERE supply_id = %s", (f"{feed}/{period}",))
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    db.rollback()
    return rows


def _task_states(api: Api, dag_id: str, run_id: str) -> dict[str, str]:
    got = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in got["task_instances"]}


def _empty_folders(settings, partner_id: str) -> None:
    """Empty one partner's SFTP folders (the conftest's ``clean_partner_folders`` is per test; the runs are per
    module)."""
    from csp_observatory import sftp

    with sftp.connect_observatory(settings) as client:
        for sub in ("inbox", "quarantine", "processed", "reports"):
            folder = settings.partner_folder(partner_id, sub)
            for entry in client.listdir_attr(folder):
                if not stat.S_ISDIR(entry.st_mode or 0):
                    client.remove(f"{folder}/{entry.filename}")


@pytest.fixture(scope="module")
def runs(airflow_deployment, settings, reference_loaded, forget_supply) -> Iterator[dict]:
    """Each feed's scheduled run (unpausing a core feed's DAG starts the run of its latest fire), finished and past
    its due time; the months, the alerts and the partners' folders are cleared before and after."""
    api, db_file, logs = airflow_deployment["api"], airflow_deployment["db"], airflow_deployment["logs"]
    partners = {settings.supplier(feed, schema_for(feed).partner.id) for feed in (MISSING, ON_TIME)}
    started: dict[str, dict[str, Any]] = {}

    def forget() -> None:
        with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn:
            for feed, run in started.items():
                forget_supply(conn, schema_for(feed), run["period"])
                _forget_alert(conn, feed, run["period"])
        for partner_id in partners:
            _empty_folders(settings, partner_id)

    forget()
    try:
        _start_and_finish(api, db_file, logs, settings, started, forget)
        yield {**started, "api": api, "db_file": db_file, "logs": logs}
    finally:
        forget()


def _scheduled_run(api: Api, dag_id: str) -> dict[str, Any] | None:
    got = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns")
    return next((r for r in got["dag_runs"] if r["run_type"] == "scheduled"), None)


def _start_and_finish(api: Api, db_file: Path, logs: Path, settings, started: dict[str, dict[str, Any]],
                      forget: Any) -> None:
    for feed in (MISSING, ON_TIME):
        dag_id = f"feed_{feed}"
        wait(f"the DAG processor serialising {dag_id}",
              lambda: db_file.exists() and sqlite_query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id),
              START_WAIT_S, logs)
        wait("the API server answering", lambda: api.call("GET", f"/api/v2/dags/{dag_id}"), START_WAIT_S, logs)
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    for feed in (MISSING, ON_TIME):
        dag_id = f"feed_{feed}"
        run = wait(f"the scheduled run of {dag_id}", lambda: _scheduled_run(api, dag_id), START_WAIT_S, logs)
        started[feed] = {"dag_id": dag_id, "run_id": run["dag_run_id"], "logical_date": run["logical_date"],
                         "period": _period_waited_for(run["logical_date"])}
    forget()        # the months the runs wait for, now that they are known: nothing loaded, no alert yet
    # The partner sends the on-time supply while its run waits for it (made beforehand: the window runs meanwhile).
    on_time = started[ON_TIME]
    files, metadata = _clean_supply(ON_TIME, on_time["period"])
    wait("the on-time run waiting for its supply",
          lambda: _task_states(api, on_time["dag_id"], on_time["run_id"]).get("wait_for_supply") == "deferred",
          START_WAIT_S, logs)
    demo.drop_demo_supply(settings, schema_for(ON_TIME), on_time["period"], files=files, metadata=metadata)
    for feed, run in started.items():
        run["final"] = wait(f"the run of {feed} finishing", lambda: (got := api.call(
            "GET", f"/api/v2/dags/{run['dag_id']}/dagRuns/{run['run_id']}"))["state"] in ("success", "failed")
                             and got, RUN_WAIT_S, logs)
        run["due"] = datetime.fromisoformat(run["final"]["queued_at"]) + timedelta(seconds=DUE_AFTER_S[feed])
    # Past the missing month's due time, once the triggerer has run the callback the scheduler queued when it judged
    # the deadline missed (the on-time run has ended, before its due time: test_a_supply_loaded_in_time_raises_no_alert
    # checks it). The tests then check what the callback said and recorded; waiting for it here instead of a fixed
    # time lets them see it as soon as it is there.
    due = started[MISSING]["due"]
    time.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()))
    wait("the triggerer running the late-supply callback",
         lambda: sqlite_query(db_file, "SELECT count(*) FROM callback WHERE state IN ('success', 'failed')")[0][0],
         CALLBACK_WAIT_S, logs)


def test_a_month_whose_supply_never_arrives_raises_the_late_supply_alert_naming_the_partner(runs, db,
                                                                                           settings) -> None:
    feed, run, api = MISSING, runs[MISSING], runs["api"]
    schema, period = schema_for(feed), run["period"]
    # A scheduled run, which ends as a poll that finds nothing always has: its wait skipped, the rest skipped, the
    # run a success.
    assert run["final"]["run_type"] == "scheduled" and run["final"]["state"] == "success", run["final"]
    states = _task_states(api, run["dag_id"], run["run_id"])
    assert states["wait_for_supply"] == "skipped" and states["load"] == "skipped", states
    # The Airflow UI lists the run's deadline as missed, under a name that says whose supply is late.
    shown = api.call("GET", f"/ui/dags/{run['dag_id']}/dagRuns/{run['run_id']}/deadlines")
    assert shown["total_entries"] == 1, shown
    (deadline,) = shown["deadlines"]
    assert deadline["missed"] is True
    assert schema.partner.id in deadline["alert_name"] and schema.title in deadline["alert_name"]
    assert abs((datetime.fromisoformat(deadline["deadline_time"]) - run["due"]).total_seconds()) < 1
    # The DAG's own page lists the alert it carries.
    defined = api.call("GET", f"/ui/dags/{run['dag_id']}/deadlineAlerts")
    assert [a["name"] for a in defined["deadline_alerts"]] == [alerts.alert_name(schema)]
    # The triggerer ran the callback, and Airflow kept what it said: the partner, the period and the due date.
    outputs = [o for (o,) in sqlite_query(runs["db_file"], "SELECT output FROM callback WHERE state = 'success'")
               if o and feed in o]
    assert len(outputs) == 1, (outputs, tails(runs["logs"]))
    assert schema.partner.id in outputs[0] and period in outputs[0]
    # The observatory recorded it once, naming the partner, its current supplier, the feed, the period and when.
    (row,) = _alert_rows(db, feed, period)
    assert (row["kind"], row["feed"], row["period"], row["partner"]) == (alerts.LATE_SUPPLY, feed, period,
                                                                        schema.partner.id)
    assert row["supplier"] == settings.supplier(feed, schema.partner.id)
    assert abs((row["due_at"] - run["due"]).total_seconds()) < 1
    assert (row["dag_id"], row["run_id"]) == (run["dag_id"], run["run_id"])
    for part in (schema.partner.id, schema.partner.agency, period, f"{run['due']:%Y-%m-%d %H:%M}"):
        assert part in row["message"], (part, row["message"])
    assert row["message"] == outputs[0]


def test_a_supply_loaded_in_time_raises_no_alert(runs, db) -> None:
    feed, run, api = ON_TIME, runs[ON_TIME], runs["api"]
    period = run["period"]
    states = _task_states(api, run["dag_id"], run["run_id"])
    assert run["final"]["state"] == "success" and states["load"] == "success", (run["final"], states)
    with db.cursor() as cur:
        cur.execute("SELECT loaded_at FROM observatory.supplies WHERE supply_id = %s", (f"{feed}/{period}",))
        (loaded_at,) = cur.fetchone()
    db.rollback()
    assert loaded_at < run["due"]
    # The run succeeded before its due time: Airflow dropped its deadline, so the UI shows none missed ...
    shown = api.call("GET", f"/ui/dags/{run['dag_id']}/dagRuns/{run['run_id']}/deadlines")
    assert not [d for d in shown["deadlines"] if d["missed"]], shown
    # ... no callback raised an alert for it (the run an arrival starts after it may miss the test's deadline, which
    # only the test override gives it: it waits for no period, so it raises nothing), and none was recorded.
    said = [o for (o,) in sqlite_query(runs["db_file"], "SELECT output FROM callback") if o and feed in o]
    assert not [o for o in said if "Late supply" in o or period in o], said
    assert _alert_rows(db, feed, period) == []


def test_the_alert_is_judged_by_what_was_loaded_when_and_recorded_once(db, settings) -> None:
    """Without Airflow: a supply loaded by its due time raises nothing; one loaded after it, or never, is late,
    and a second run's alert for the same supply is not recorded twice."""
    schema = schema_for("police_recorded_crime")
    due = datetime(2097, 11, 17, tzinfo=timezone.utc)
    periods = {"209701": due - timedelta(days=1), "209702": due + timedelta(hours=1), "209703": None}

    def forget() -> None:
        alerts.ensure_table(db)
        with db.cursor() as cur:
            for period in periods:
                cur.execute("DELETE FROM observatory.supplies WHERE supply_id = %s", (f"{schema.feed}/{period}",))
                cur.execute(f"DELETE FROM {alerts.ALERTS_TABLE} WHERE supply_id = %s", (f"{schema.feed}/{period}",))
        db.commit()

    forget()
    try:
        with db.cursor() as cur:
            for period, loaded in periods.items():
                if loaded is not None:
                    cur.execute("INSERT INTO observatory.supplies (supply_id, feed, period, status, loaded_at) "
                                "VALUES (%s, %s, %s, 'loaded', %s)", (f"{schema.feed}/{period}", schema.feed, period,
                                                                      loaded))
        db.commit()
        late = {p: alerts.check_supply(db, alerts.late_supply(schema, p, due, settings, run_id=f"run_{p}"))
                for p in periods}
        assert late == {"209701": False, "209702": True, "209703": True}
        # a second run's deadline for the same supply: still late, recorded once, the first run's row kept
        assert alerts.check_supply(db, alerts.late_supply(schema, "209703", due, settings, run_id="again"))
        for period in periods:
            rows = _alert_rows(db, schema.feed, period)
            assert [r["run_id"] for r in rows] == ([] if not late[period] else [f"run_{period}"]), period
    finally:
        forget()
