"""A peripheral feed's DAG started by Airflow itself when a partner drops a supply: real scheduler, DAG processor,
triggerer and API server (LocalExecutor, a metadata DB of their own), real sshd, gpg and PostGIS.

Nothing here calls the DAG: the asset watcher in the triggerer sees the supply arrive, the scheduler starts the
asset-triggered run, and the executor's workers run its tasks, which load the supply into the tests' database.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from csp_observatory import demo, fixtures, postcodes
from csp_observatory.pipeline import schema_for
from csp_observatory.schema import REPO_ROOT

pytestmark = pytest.mark.integration

FEED = "bus_incidents"          # Table 2: as and when, started by the supply's arrival
PERIOD = "202604"               # this module's own month
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
START_WAIT_S = 120
RUN_WAIT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _airflow(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _query(db: Path, statement: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(statement, params).fetchall()


def _wait(what: str, check: Any, within: float, logs: Path, every: float = 1.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                      for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"{what} did not happen within {within:.0f} s\n{tails}")


@pytest.fixture(scope="module")
def airflow_deployment(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[dict[str, Any]]:
    """Airflow's own processes on a metadata DB of their own, running the repository's DAGs against the tests'
    services; stopped (their whole process groups) after the module."""
    home = tmp_path_factory.mktemp("airflow_deployment")
    api_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
        # the tests' services (the conftest pointed CSP_CONFIG at them), quick looks, quick retries
        "CSP_CONFIG": os.environ["CSP_CONFIG"],
        "CSP_SENSOR_POKE_S": "2",
        "CSP_SENSOR_TIMEOUT_S": "300",
        "CSP_RETRY_DELAY_S": "1",
        "GX_ANALYTICS_ENABLED": "false",
    })
    env.pop("CSP_DATABASE_URL", None)
    migrated = _airflow(env, "db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    logs = home / "component-logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        for name in COMPONENTS:
            out = open(logs / f"{name}.log", "wb")
            procs.append(subprocess.Popen([str(Path(sys.executable).with_name("airflow")), name], env=env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        yield {"env": env, "db": home / "airflow.db", "logs": logs, "procs": procs}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def _drop(settings, feed: str, period: str) -> list[str]:
    """As the feed's partner: a fixture supply with its metadata, encrypted, signed and uploaded to its inbox."""
    schema = schema_for(feed)
    supply = fixtures.make_supply(schema, period, postcodes.shipped_reference(), n=30)
    return demo.drop_demo_supply(settings, schema, period, files=supply.files, metadata=supply.metadata)


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_a_supply_arriving_starts_its_feed_dag_in_a_running_airflow(airflow_deployment, settings, db,
                                                                    forget_supply) -> None:
    env, db_file, logs = airflow_deployment["env"], airflow_deployment["db"], airflow_deployment["logs"]
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    dag_id = f"feed_{FEED}"
    # The DAG processor parses the repository's DAGs; a feed's DAG starts paused until its partner is onboarded.
    _wait("the DAG processor serialising the feed's DAG",
          lambda: db_file.exists() and _query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id),
          START_WAIT_S, logs)
    assert _query(db_file, "SELECT is_paused FROM dag WHERE dag_id = ?", dag_id) == [(1,)]
    unpaused = _airflow(env, "dags", "unpause", dag_id)
    assert unpaused.returncode == 0, unpaused.stderr[-2000:]

    # The watcher is registered with the triggerer; with nothing in the inbox, no run starts.
    _wait("the asset watcher reaching the triggerer",
          lambda: _query(db_file, "SELECT count(*) FROM trigger WHERE classpath LIKE ?",
                         "%SupplyArrivalTrigger%")[0][0] > 0, START_WAIT_S, logs)
    time.sleep(10)
    assert _query(db_file, "SELECT count(*) FROM dag_run WHERE dag_id = ?", dag_id) == [(0,)]

    dropped = _drop(settings, FEED, PERIOD)
    runs = _wait("an asset-triggered run of the feed's DAG finishing",
                 lambda: _query(db_file, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? AND state IN "
                                "('success', 'failed')", dag_id), RUN_WAIT_S, logs, every=2)
    (run_id, run_type, state), *more = runs
    assert run_type == "asset_triggered" and not more
    states = dict(_query(db_file, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
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
    assert len(_query(db_file, "SELECT run_id FROM dag_run WHERE dag_id = ?", dag_id)) == 1
    assert dropped
