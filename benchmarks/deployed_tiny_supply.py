"""A tiny police recorded crime supply through a real deployment, as a partner's daily drop meets it (issue 9).

``end_to_end.py`` runs every task in one process (``dag.test``). In a deployment each task is its own process,
forked by a Celery worker, and the scheduler hands each task on to the next: this measures that. It starts Airflow's
scheduler, DAG processor, triggerer and API server on the tests' PostgreSQL metadata DB, and one ``airflow celery
worker`` (concurrency 4) on the tests' Redis broker: the CeleryExecutor, as docker-compose.yaml has it. One
deployment per setup (``--setups``, all by default), in the same run:

- ``airflow``: Airflow's own Celery settings and scheduler idle sleep (1 s): the way it was;
- ``preload``: each worker imports the stages' modules once (``csp_observatory.worker_preload``), so no task
  process imports pandas, pyarrow or Great Expectations again;
- ``compose``: docker-compose.yaml's settings: the preload, and a scheduler that sleeps 0.25 s between loops
  when it has nothing to do, so it hands a finished task's successor on sooner.

Per deployment it unpauses the feed's DAG (which starts the scheduled run of the latest month: its sensor waits,
deferred), measures the scheduler's CPU for 10 s while nothing runs, marks that scheduled run failed (its month's
supply never comes), then drops ``--runs`` supplies of ``--offences`` offences in turn (each its own period,
encrypted, signed, uploaded to SFTP; each drop's arrival starts its own run). Per run, from the task instances in the
metadata DB:

- **sensor start to report end**: the ``wait_for_supply`` task's start (or the drop's end, when the run was
  already waiting) to ``report_and_archive``'s end: the issue's figure, at most 10 s;
- **drop to report end**: from the upload's end, so the triggerer's look and the run's queueing count too;
- each task's wall time (its process's start to its end: the DAG file's parse, its imports, its work), and the
  time between tasks (the scheduler seeing a task end and queueing the next, the worker starting it).

The last line reads ``tiny supply, sensor start to report end: airflow A s, preload P s, compose C s``: medians
of the runs after each deployment's first (the first also pays for the worker's pool starting).

Uses the tests' services (``.run/test/observatory.yaml``, ``.run/test/celery.yaml``: set-up writes them) and takes
the integration tests' lock. About 6 minutes:

    . .run/airflow.env && .venv/bin/python benchmarks/deployed_tiny_supply.py > benchmarks/out/deployed_tiny.log
"""
from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Final

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "tests" / "integration")]

from end_to_end import FEED, STAGES, TINY, _tests_lock, _use_config, drop, forget  # noqa: E402

DAG_ID = f"feed_{FEED}"
START_WAIT_S = 240
RUN_WAIT_S = 300
FIRST_PERIOD = 208001           # the benchmark's own months, apart from the tests' and end_to_end's


def _tasks_of_run(cfg: dict[str, str], run_id: str) -> dict[str, dict[str, Any]]:
    from airflow_harness import postgres_query

    rows = postgres_query(cfg["airflow_database_url"], "SELECT task_id, state, extract(epoch FROM start_date), "
                          "extract(epoch FROM end_date) FROM task_instance WHERE dag_id = %s AND run_id = %s",
                          DAG_ID, run_id)

    def seconds(value: Any) -> float | None:
        return float(value) if value is not None else None

    return {t: {"state": state, "start": seconds(s), "end": seconds(e)} for t, state, s, e in rows}


def _one_run(cfg: dict[str, str], logs: list[Path], period: str, offences: int) -> dict[str, Any]:
    """Drop one supply; find the run that loaded it (the one its arrival started, or a run already waiting, such as
    the scheduled run that unpausing starts) and read its task instances' times from the metadata DB."""
    from airflow_harness import postgres_query, wait

    drop(offences, period)
    dropped = time.time()

    def loaded_by() -> str | None:
        rows = postgres_query(cfg["airflow_database_url"], "SELECT run_id FROM task_instance WHERE dag_id = %s AND "
                              "task_id = 'load' AND state = 'success' AND end_date > to_timestamp(%s)", DAG_ID,
                              dropped)
        return rows[0][0] if rows else None

    run_id = wait(f"a run loading supply {period}", loaded_by, RUN_WAIT_S, logs, every=0.5)
    tasks = wait(f"the report of supply {period}",
                 lambda: (t := _tasks_of_run(cfg, run_id)) and t["report_and_archive"]["end"] and t,
                 RUN_WAIT_S, logs, every=0.5)
    times = {t: (tasks[t]["start"], tasks[t]["end"]) for t in STAGES}
    walls = {t: end - start for t, (start, end) in times.items()}
    gaps = sum(times[b][0] - times[a][1] for a, b in zip(STAGES, STAGES[1:]))
    sensor_start = times["wait_for_supply"][0]
    report_end = times["report_and_archive"][1]
    return {"period": period, "run_id": run_id, "waiting": sensor_start < dropped,
            "sensor_to_report_s": report_end - max(sensor_start, dropped), "drop_to_report_s": report_end - dropped,
            "walls": walls, "gaps_s": gaps}


#: What each deployment changes from docker-compose.yaml's settings (``airflow_harness.celery_env`` has those):
#: Airflow's own Celery settings (no preload) and scheduler idle sleep (1 s), then each of ours in turn.
SETUPS: Final = {
    "airflow": {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": None, "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1"},
    "preload": {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1"},
    "compose": {},
}
IDLE_WINDOW_S: Final = 10.0
# Task slots of the one worker: a run's tasks never queue behind the previous run's verdict or the refresh DAG's
# task (docker-compose runs two workers of Airflow's default 16).
WORKER_CONCURRENCY: Final = 4


def _idle_cpu(proc: Any, seconds: float) -> float:
    """The share of one core a process and its children use over ``seconds`` (the scheduler, with nothing to run)."""
    import psutil

    def used() -> float:
        total = 0.0
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    before = used()
    time.sleep(seconds)
    return (used() - before) / seconds


def deployed(setup: str, runs: int, offences: int, periods: list[str], settings: Any) -> dict[str, Any]:
    """One deployment (four components and one Celery worker) with ``setup``'s settings, ``runs`` supplies through
    it; per run its times, and the scheduler's CPU while nothing runs."""
    import yaml
    from airflow_harness import (COMPONENTS, Api, arrival_watchers, celery_env, deployment, free_port, request_parse,
                                 reset_postgres_db, start, wait)

    cfg = yaml.safe_load((REPO / ".run" / "test" / "celery.yaml").read_text(encoding="utf-8"))
    root = Path(tempfile.mkdtemp(prefix="csp-deployed-tiny-"))
    home = root / "airflow"
    home.mkdir()
    api_port = free_port()
    password = secrets.token_hex(12)
    (home / "passwords.json").write_text('{"engineer": "%s"}' % password)
    queue = f"csp-bench-{secrets.token_hex(4)}"             # this deployment's own queue: nothing stale on it
    env = celery_env(home, api_port, cfg, **{
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "engineer:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })
    for key, value in SETUPS[setup].items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    reset_postgres_db(cfg["airflow_database_url"])
    logs_dir = root / "logs"
    print(f"{setup}: the components' logs are in {logs_dir} (kept)", flush=True)
    out = []
    with deployment(env, logs_dir) as procs:
        start(env, logs_dir, ["celery", "worker", "--queues", queue, "--concurrency", str(WORKER_CONCURRENCY)],
              "worker", procs)
        logs = sorted(logs_dir.glob("*.log"))
        api = Api(api_port, "engineer", password)
        wait("the API server", api.login, START_WAIT_S, logs)
        wait("the feed's DAG", lambda: api.get_or_none(f"/api/v2/dags/{DAG_ID}"), START_WAIT_S, logs)
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        request_parse(api, DAG_ID)
        wait("the arrival watcher", lambda: arrival_watchers(cfg["airflow_database_url"]) > 0, START_WAIT_S, logs)
        # the deployment as it is most of the time: the scheduled run's sensor deferred, nothing to run
        idle = _idle_cpu(procs[COMPONENTS.index("scheduler")], IDLE_WINDOW_S)
        print(f"{setup}: the scheduler idle uses {idle:.1%} of a core", flush=True)
        # End the scheduled run that unpausing started (its month's supply is overdue and never comes): otherwise it
        # takes the first drop, and each arrival's run then takes the next drop, not the one whose arrival it was.
        _end_waiting_runs(api, logs)
        try:
            for period in periods[:runs]:
                forget(settings, period)
                got = _one_run(cfg, logs, period, offences)
                forget(settings, period)
                out.append(got)
                print(_line(setup, len(out), got), flush=True)
        finally:
            _forget_alerts(settings, cfg)
    return {"runs": out, "idle_cpu": idle}


def _forget_alerts(settings: Any, cfg: dict[str, str]) -> None:
    """Remove the late-supply alerts this deployment's runs raised (unpausing starts the run of the latest month,
    whose supply is overdue) from the tests' database."""
    import psycopg2
    from airflow_harness import postgres_query

    from csp_observatory import alerts

    run_ids = [r[0] for r in postgres_query(cfg["airflow_database_url"], "SELECT run_id FROM dag_run")]
    with closing(psycopg2.connect(settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (alerts.ALERTS_TABLE,))
        if cur.fetchone()[0]:
            cur.execute(f"DELETE FROM {alerts.ALERTS_TABLE} WHERE dag_id = %s AND run_id = ANY(%s)",  # noqa: S608
                        (DAG_ID, run_ids))
        conn.commit()


def _end_waiting_runs(api: Any, logs: list[Path]) -> None:
    """Mark the feed's unfinished runs failed, as an engineer would in the UI, and wait until none is left."""
    from airflow_harness import wait

    runs_path = f"/api/v2/dags/{DAG_ID}/dagRuns"

    def unfinished() -> list[dict[str, Any]]:
        return [r for r in api.get(runs_path)["dag_runs"] if r["state"] not in ("success", "failed")]

    for run in wait("the scheduled run that unpausing starts", unfinished, START_WAIT_S, logs):
        api.patch(f"{runs_path}/{run['dag_run_id']}", {"state": "failed"})
    wait("no run of the feed left waiting", lambda: not unfinished(), START_WAIT_S, logs)


def _line(setup: str, n: int, got: dict[str, Any]) -> str:
    walls = ", ".join(f"{t} {s:.2f}" for t, s in got["walls"].items())
    start = "the drop (the run was already waiting)" if got["waiting"] else "sensor start"
    return (f"{setup} run {n} ({got['run_id']}): {start} to report end "
            f"{got['sensor_to_report_s']:.2f} s, drop to report end {got['drop_to_report_s']:.2f} s; between tasks "
            f"{got['gaps_s']:.2f} s; per task: {walls}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="supplies per deployment (the first warms the worker)")
    parser.add_argument("--offences", type=int, default=TINY)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"some of {', '.join(SETUPS)}")
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups: {sorted(unknown)}")
    # a stopped benchmark stops its deployment too (deployment()'s clean-up runs on SystemExit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _use_config("test")
    from csp_observatory.config import load_settings

    settings = load_settings()
    results: dict[str, dict[str, Any]] = {}
    with _tests_lock("test"):
        named = ", ".join(f"{k} {v or {}}" for k, v in SETUPS.items() if k in setups)
        print(f"# A {args.offences}-offence supply through a deployment (CeleryExecutor, 1 worker of concurrency "
              f"{WORKER_CONCURRENCY}), {args.runs} runs per deployment; setups: {named}", flush=True)
        for i, setup in enumerate(setups):
            periods = [str(FIRST_PERIOD + 100 * i + k) for k in range(1, args.runs + 1)]
            results[setup] = deployed(setup, args.runs, args.offences, periods, settings)
    medians = {}
    for setup, got in results.items():
        later = got["runs"][1:] or got["runs"]

        def median(key: str, runs: list[dict[str, Any]] = later) -> float:
            return statistics.median(r[key] for r in runs)

        medians[setup] = median("sensor_to_report_s")
        print(f"{setup}: median of runs 2-{len(got['runs'])}: sensor start to report end {medians[setup]:.2f} s, drop "
              f"to report end {median('drop_to_report_s'):.2f} s, between tasks {median('gaps_s'):.2f} s; "
              f"parse_and_validate {statistics.median(r['walls']['parse_and_validate'] for r in later):.2f} s; "
              f"scheduler idle {got['idle_cpu']:.1%} of a core")
    print("tiny supply, sensor start to report end: " + ", ".join(f"{s} {m:.2f} s" for s, m in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
