"""A peripheral feed's DAG started by Airflow itself when a partner drops a supply: real scheduler, DAG processor,
triggerer and API server (LocalExecutor, a metadata DB of their own), real sshd, gpg and PostGIS.

Nothing here calls the DAG: the asset watcher in the triggerer sees the supply arrive, the scheduler starts the
asset-triggered run, and the executor's workers run its tasks, which load the supply into the tests' database.

The components' settings name a database that does not exist (``CSP_DATABASE_URL``): the tasks reach PostGIS only
through the Airflow Connection ``csp_postgis`` (and SFTP through ``csp_sftp``), defined as ``AIRFLOW_CONN_*``
variables by the harness. The load's asset event then starts the refresh DAG, which recounts that feed's summary.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from airflow_harness import Api, base_env, deployment, free_port, request_parse, sqlite_query, wait

from csp_observatory import demo, fixtures, postcodes_sources
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "bus_incidents"          # Table 2: as and when, started by the supply's arrival
PERIOD = "202604"               # this module's own month
START_WAIT_S = 180
RUN_WAIT_S = 300
REFRESH_WAIT_S = 120
# How long nothing must happen where no run may start: five of the watcher's looks (CSP_SENSOR_POKE_S, 2 s).
QUIET_S = 10
NO_DATABASE = "postgresql://csp_loader:not-the-password@127.0.0.1:1/not_the_observatory"


@pytest.fixture(scope="module")
def airflow_deployment(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[dict[str, Any]]:
    """Airflow's own processes on a metadata DB of their own, running the repository's DAGs against the tests'
    services; stopped (with everything they started) after the module."""
    home = tmp_path_factory.mktemp("airflow_deployment")
    api_port = free_port()
    # Nothing listens on port 1: a task that used the settings' database instead of the connection would fail.
    env = base_env(home, api_port, CSP_DATABASE_URL=NO_DATABASE, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True")
    logs = home / "component-logs"
    with deployment(env, logs) as procs:
        yield {"env": env, "db": home / "airflow.db", "logs": logs, "procs": procs, "api": Api(api_port),
               "home": home}


def _drop(settings, feed: str, period: str, supply: Any) -> list[str]:
    """As the feed's partner: the fixture supply with its metadata, encrypted, signed and uploaded to its inbox."""
    return demo.drop_demo_supply(settings, schema_for(feed), period, files=supply.files, metadata=supply.metadata)


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_a_supply_arriving_starts_its_feed_dag_in_a_running_airflow(airflow_deployment, settings, db,
                                                                    forget_supply) -> None:
    db_file, logs = airflow_deployment["db"], airflow_deployment["logs"]
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    dag_id = f"feed_{FEED}"
    # The DAG processor parses the repository's DAGs; a feed's DAG starts paused until its partner is onboarded.
    wait("the DAG processor serialising the feed's DAG",
          lambda: db_file.exists() and sqlite_query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id),
          START_WAIT_S, logs)
    assert sqlite_query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id) == [(1,)]
    # unpaused as the UI does it, through the REST API (not the CLI: one more Airflow process to start)
    api = airflow_deployment["api"]
    wait("the API server answering", lambda: api.get(f"/api/v2/dags/{dag_id}"), START_WAIT_S, logs)
    assert api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})["is_paused"] is False
    request_parse(api, dag_id)

    # The watcher is registered with the triggerer; with nothing in the inbox, no run starts (the partner's supply
    # is made meanwhile: only its upload is the arrival).
    wait("the asset watcher reaching the triggerer",
          lambda: sqlite_query(db_file, "SELECT count(*) FROM trigger WHERE classpath LIKE ?",
                         "%SupplyArrivalTrigger%")[0][0] > 0, START_WAIT_S, logs)
    registered = time.monotonic()
    supply = fixtures.make_supply(schema, PERIOD, postcodes_sources.shipped_reference(), n=30)
    time.sleep(max(0.0, registered + QUIET_S - time.monotonic()))
    assert sqlite_query(db_file, "SELECT count(*) FROM dag_run WHERE dag_id = ?", dag_id) == [(0,)]

    dropped = _drop(settings, FEED, PERIOD, supply)
    runs = wait("an asset-triggered run of the feed's DAG finishing",
                lambda: sqlite_query(db_file, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? AND "
                                     "state IN ('success', 'failed')", dag_id), RUN_WAIT_S, logs)
    finished = time.monotonic()
    (run_id, run_type, state), *more = runs
    assert run_type == "asset_triggered" and not more
    states = dict(sqlite_query(db_file, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                         dag_id, run_id))
    for stage in ("wait_for_supply", "collect", "decrypt_and_verify", "parse_and_validate", "clean", "geocode",
                  "sanitise", "load", "report_and_archive"):
        assert states[stage] == "success", (stage, states)
    # The fixture supply has bad rows among the good: loaded, amber, so the run does not read as a plain success.
    assert states["verdict"] == "failed" and state == "failed", states
    with db.cursor() as cur:
        cur.execute("SELECT status FROM observatory.supplies WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))
        assert cur.fetchone()[0] == "loaded"
        cur.execute(f"SELECT count(*) FROM depersonalised.{schema.files[0].table} WHERE supply_id = %s",
                    (f"{FEED}/{PERIOD}",))
        assert cur.fetchone()[0] > 0
    db.rollback()
    # The stages' SFTP sessions came from the connection csp_sftp, with its pinned host key (hooks.HookServices).
    collect_logs = list((airflow_deployment["home"] / "logs").glob(f"dag_id={dag_id}/run_id=*/task_id=collect/*"))
    assert any("through the Airflow connection csp_sftp" in p.read_text(errors="replace") for p in collect_logs), \
        collect_logs
    # The arrival event carried the sizes the watcher saw hold: the sensor's look trusted them instead of waiting a
    # poll interval for them to hold again (arrival.arrival_certificate), and the collect task trusted the sensor's.
    for task_id in ("wait_for_supply", "collect"):
        task_logs = list((airflow_deployment["home"] / "logs").glob(f"dag_id={dag_id}/run_id=*/task_id={task_id}/*"))
        assert any("held since an earlier look: not polled again" in p.read_text(errors="replace")
                   for p in task_logs), (task_id, task_logs)

    # The load emitted its table's asset, with the supply it loaded in the event's extra; the event started the
    # refresh DAG, which recounted that feed's counts by ward and month, and no other feed's.
    table = f"{schema.db_schema}.{schema.files[0].table}"
    events = api.get(f"/api/v2/assets/events?source_dag_id={dag_id}&source_run_id={quote(run_id)}")["asset_events"]
    assert {e["name"] for e in events} == {f"{schema.db_schema}.{f.table}" for f in schema.files}, events
    (event,) = [e for e in events if e["name"] == table]
    assert event["source_task_id"] == "load" and event["uri"].startswith("postgres://")
    assert event["extra"]["feed"] == FEED and [s["supply_id"] for s in event["extra"]["loaded"]] == [f"{FEED}/{PERIOD}"]
    refresh_runs = wait("the refresh DAG run the load's asset event started finishing",
                        lambda: sqlite_query(db_file, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = "
                                             "'refresh_summaries' AND state IN ('success', 'failed')"),
                        REFRESH_WAIT_S, logs)
    (refresh_run, refresh_type, refresh_state), = refresh_runs
    assert refresh_type == "asset_triggered" and refresh_state == "success", refresh_runs
    started = api.get(f"/api/v2/assets/events?source_dag_id={dag_id}&source_run_id={quote(run_id)}")["asset_events"]
    assert {r["run_id"] for e in started for r in e["created_dagruns"]} == {refresh_run}
    value = api.get(f"/api/v2/dags/refresh_summaries/dagRuns/{quote(refresh_run)}/taskInstances/refresh_counts/"
                    f"xcomEntries/return_value")["value"]
    refreshed = json.loads(value) if isinstance(value, str) else value
    counts = f"{table}_ward_month"
    assert list(refreshed) == [FEED] and set(refreshed[FEED]) == {counts}, refreshed
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*), sum(records) FROM {counts}")      # noqa: S608 (the schema's own names)
        rows, records = cur.fetchone()
        cur.execute(f"SELECT count(*) FROM {table}")                      # noqa: S608
        loaded = cur.fetchone()[0]
    db.rollback()
    assert refreshed[FEED][counts] == rows > 0 and records == loaded

    # The files were taken: the inbox is empty, the originals are in processed/, nothing started a second run
    # (in the QUIET_S since the run finished, most of which the refresh and the checks above took).
    time.sleep(max(0.0, finished + QUIET_S - time.monotonic()))
    assert len(sqlite_query(db_file, "SELECT run_id FROM dag_run WHERE dag_id = ?", dag_id)) == 1
    assert dropped
