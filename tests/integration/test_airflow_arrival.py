"""A peripheral feed's DAG started by Airflow itself when a partner drops a supply: real scheduler, DAG processor,
triggerer and API server (LocalExecutor, a metadata DB of their own), real sshd, gpg and PostGIS.

Nothing here calls the DAG: the asset watcher in the triggerer sees the supply arrive, the scheduler starts the
asset-triggered run, and the executor's workers run its tasks, which load the supply into the tests' database.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from airflow_harness import airflow, base_env, deployment, free_port, sqlite_query, wait

from csp_observatory import demo, fixtures, postcodes_sources
from csp_observatory.pipeline import schema_for

pytestmark = pytest.mark.integration

FEED = "bus_incidents"          # Table 2: as and when, started by the supply's arrival
PERIOD = "202604"               # this module's own month
START_WAIT_S = 120
RUN_WAIT_S = 300


@pytest.fixture(scope="module")
def airflow_deployment(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[dict[str, Any]]:
    """Airflow's own processes on a metadata DB of their own, running the repository's DAGs against the tests'
    services; stopped (with everything they started) after the module."""
    home = tmp_path_factory.mktemp("airflow_deployment")
    env = base_env(home, free_port())
    logs = home / "component-logs"
    with deployment(env, logs) as procs:
        yield {"env": env, "db": home / "airflow.db", "logs": logs, "procs": procs}


def _drop(settings, feed: str, period: str) -> list[str]:
    """As the feed's partner: a fixture supply with its metadata, encrypted, signed and uploaded to its inbox."""
    schema = schema_for(feed)
    supply = fixtures.make_supply(schema, period, postcodes_sources.shipped_reference(), n=30)
    return demo.drop_demo_supply(settings, schema, period, files=supply.files, metadata=supply.metadata)


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_a_supply_arriving_starts_its_feed_dag_in_a_running_airflow(airflow_deployment, settings, db,
                                                                    forget_supply) -> None:
    env, db_file, logs = airflow_deployment["env"], airflow_deployment["db"], airflow_deployment["logs"]
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    dag_id = f"feed_{FEED}"
    # The DAG processor parses the repository's DAGs; a feed's DAG starts paused until its partner is onboarded.
    wait("the DAG processor serialising the feed's DAG",
          lambda: db_file.exists() and sqlite_query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id),
          START_WAIT_S, logs)
    assert sqlite_query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id) == [(1,)]
    unpaused = airflow(env, "dags", "unpause", dag_id)
    assert unpaused.returncode == 0, unpaused.stderr[-2000:]

    # The watcher is registered with the triggerer; with nothing in the inbox, no run starts.
    wait("the asset watcher reaching the triggerer",
          lambda: sqlite_query(db_file, "SELECT count(*) FROM trigger WHERE classpath LIKE ?",
                         "%SupplyArrivalTrigger%")[0][0] > 0, START_WAIT_S, logs)
    time.sleep(10)
    assert sqlite_query(db_file, "SELECT count(*) FROM dag_run WHERE dag_id = ?", dag_id) == [(0,)]

    dropped = _drop(settings, FEED, PERIOD)
    runs = wait("an asset-triggered run of the feed's DAG finishing",
                lambda: sqlite_query(db_file, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? AND "
                                     "state IN ('success', 'failed')", dag_id), RUN_WAIT_S, logs, every=2)
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
    # The files were taken: the inbox is empty, the originals are in processed/, nothing started a second run.
    time.sleep(8)
    assert len(sqlite_query(db_file, "SELECT run_id FROM dag_run WHERE dag_id = ?", dag_id)) == 1
    assert dropped
