"""A feed's DAG on the CeleryExecutor with two workers: real scheduler, DAG processor, triggerer and API server on a
PostgreSQL metadata database, a real Redis broker, two ``airflow celery worker`` processes, real sshd, gpg and
PostGIS.

Each worker has its own private folders, as if it were its own machine: its own ``TMPDIR``, its own
``CSP_STAGING_DIR`` (where it would stage if staging were local: the collect task downloads there) and its own
Airflow home. The stages of one supply are routed to the two workers in turn (``CSP_STAGE_QUEUES``), so every
hand-over from one stage to the next crosses workers: the run loads only if no task reads a file another task left
on its own disk. The only thing the workers share is the staging store (``CSP_STAGING_URL``, a folder standing in
for a shared volume or a bucket). The supply must load exactly as the same supply does with one worker (same rows
in PostGIS, same report outcome), and an engineer sees the run and its quality outcome through the REST API.

One stage's task process (``load``, see KILLED_STAGE) is SIGKILLed while it works (connected to PostGIS), as when a worker's machine loses
the process (the OOM killer, a node going away): Airflow retries the task (the DAG's default ``retries``) and the
supply still loads exactly once, with the same rows as the clean one-worker run (issue 11's fault matrix).

A second supply, of a feed with two files (``MULTI_FEED``), has each stage's files worked in forked processes
(``file_workers.py``) and its load on two connections (``loading.split_files``), as a large supply's are: the
deployment sets the size they start from to nothing. A Celery worker's pool processes are daemonic, and a task
process forked from one must still be able to fork its own (``multiprocessing`` refused it); the children's logs
must reach the task's log; the supply must load whole.

The workers run with the observatory's Celery settings (``csp_observatory.celery_config``), as in docker-compose.yaml:
each imports the stages' modules once, before it forks (``csp_observatory.worker_preload``).

Set-up (scripts/setup.sh) makes the broker and the metadata database and names them in ``.run/test/celery.yaml``.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import psutil
import psycopg2
import pytest
import yaml
from airflow_harness import (Api, arrival_watchers, celery_env, deployment, free_port, request_parse,
                             reset_postgres_db, start, tails, wait)

from csp_observatory import demo, fixtures, partitions, postcodes_sources
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "bus_incidents"          # Table 2: as and when, started by the supply's arrival
PERIOD = "202602"               # this module's own month
DAG_ID = f"feed_{FEED}"
WORKERS = ("a", "b")
# Each stage on the other worker from the stage before it (the sensor, the verdict and the rest on worker a).
ROUTES = {"collect": "a", "decrypt_and_verify": "b", "parse_and_validate": "a", "clean": "b", "geocode": "a",
          "sanitise": "b", "load": "a", "report_and_archive": "b"}
STAGES = ("collect", "decrypt_and_verify", "parse_and_validate", "clean", "geocode", "sanitise", "load",
          "report_and_archive")
START_WAIT_S = 180
RUN_WAIT_S = 420
# Columns that differ between two loads of the same records: the feature id, the load time and the encrypted
# file's hash (gpg encrypts the same text to new bytes each time).
VOLATILE = {"fid", "loaded_at", "source_sha256"}
DATA_SUFFIXES = (".csv", ".arrow", ".parquet", ".gpg")
# The stage whose task process is killed mid-run: the load, where a half-done task would matter most.
KILLED_STAGE = "load"
KILL_WAIT_S = 300
# As and when, two files (dumping, waste sites): each stage's two files in two processes. It is personalised, so its
# sanitise stage writes its files whole in the task's process (nothing to depersonalise): three stages fork.
MULTI_FEED = "environment_agency_crime"
MULTI_PERIOD = "202602"
FORKED_STAGES = ("parse_and_validate", "clean", "geocode")


def _celery_config() -> dict[str, str]:
    path = Path(os.environ["CSP_CONFIG"]).parent / "celery.yaml"
    if not path.exists():
        pytest.skip(f"{path} is missing: scripts/setup.sh writes it (not in CSP_DATABASE_URL mode)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _drop_supply(settings, supply: Any) -> list[str]:
    """As the feed's partner: the supply with its metadata, encrypted, signed and uploaded to its inbox."""
    return demo.drop_demo_supply(settings, schema_for(FEED), PERIOD, files=supply.files, metadata=supply.metadata)


def _loaded_rows(db, schema) -> dict[str, list[tuple]]:
    """Every loaded row of the supply, table by table, without the columns that differ between two loads."""
    out: dict[str, list[tuple]] = {}
    with db.cursor() as cur:
        for feed_file in schema.files:
            table = f"depersonalised.{feed_file.table}" if not schema.personalised else f"personal.{feed_file.table}"
            cur.execute(f"SELECT * FROM {table} WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))  # noqa: S608
            names = [d.name for d in cur.description]
            keep = [i for i, n in enumerate(names) if n not in VOLATILE]
            out[feed_file.table] = sorted((tuple(str(row[i]) for i in keep) for row in cur.fetchall()))
    db.rollback()
    return out


def _supply_status(db) -> str:
    with db.cursor() as cur:
        cur.execute("SELECT status FROM observatory.supplies WHERE supply_id = %s", (f"{FEED}/{PERIOD}",))
        row = cur.fetchone()
    db.rollback()
    return row[0] if row else ""


@pytest.fixture(scope="module")
def supply() -> Any:
    """One fixture supply (some bad rows among the good: it loads amber), dropped once per deployment."""
    return fixtures.make_supply(schema_for(FEED), PERIOD, postcodes_sources.shipped_reference(), n=30)


@pytest.fixture(scope="module")
def celery_deployment(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[dict[str, Any]]:
    """Airflow with the CeleryExecutor on the tests' services: the four components and two workers, each worker
    with private folders of its own; every process group stopped after the module."""
    cfg = _celery_config()
    root = tmp_path_factory.mktemp("celery_deployment")
    shared = root / "shared-staging"            # the one store every worker reaches
    shared.mkdir(mode=0o700)
    home = root / "airflow"
    home.mkdir()
    api_port = free_port()
    token = secrets.token_hex(4)                # this deployment's own queues: nothing stale on the broker
    queues = {w: f"csp-test-{w}-{token}" for w in WORKERS}
    password = secrets.token_hex(12)
    (home / "passwords.json").write_text(json.dumps({"engineer": password}))
    # a stand-in for "this machine's name": each worker reports its own, so the REST API shows who ran what
    (root / "worker_identity.py").write_text("import os\n\n\ndef hostname() -> str:\n"
                                             "    return os.environ['CSP_TEST_WORKER_NAME']\n")
    env = celery_env(home, api_port, cfg, **{
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queues["a"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "engineer:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "CSP_STAGING_URL": shared.as_uri(),
        "CSP_STAGE_QUEUES": ",".join([*(f"{t}={queues[w]}" for t, w in ROUTES.items()), f"*={queues['a']}"]),
        # A supply of two files or more is worked as a large one (file_workers.py, the load's second connection),
        # on any machine: from 0 MB, in two processes even on one core. One file (FEED's) stays in the task's.
        "CSP_FILE_WORKERS_MIN_MB": "0",
        "CSP_FILE_WORKERS": "2",
    })
    reset_postgres_db(cfg["airflow_database_url"])
    logs = root / "logs"
    workers: dict[str, dict[str, Path]] = {}
    worker_pids: dict[str, int] = {}
    with deployment(env, logs) as procs:
        for w in WORKERS:
            private = root / f"worker-{w}"        # this worker's own disk: nobody else is pointed at it
            dirs = {"tmp": private / "tmp", "staging": private / "staging", "home": private / "airflow"}
            for folder in dirs.values():
                folder.mkdir(parents=True, mode=0o700)
            workers[w] = dirs
            wenv = dict(env, TMPDIR=str(dirs["tmp"]), CSP_STAGING_DIR=str(dirs["staging"]),
                        AIRFLOW_HOME=str(dirs["home"]), CSP_TEST_WORKER_NAME=f"worker-{w}",
                        AIRFLOW__CORE__HOSTNAME_CALLABLE="worker_identity.hostname",
                        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
                        PYTHONPATH=os.pathsep.join([str(root), env["PYTHONPATH"]]))
            start(wenv, logs, ["celery", "worker", "--queues", queues[w], "--concurrency", "1",
                               "--celery-hostname", f"worker-{w}-{token}@%h"], f"worker-{w}", procs)
            worker_pids[w] = procs[-1].pid
        yield {"env": env, "cfg": cfg, "logs": logs, "api": Api(api_port, "engineer", password),
               "workers": workers, "shared": shared, "queues": queues, "worker_pids": worker_pids}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _one_worker(settings, db, supply) -> dict[str, Any]:
    """The supply loaded the way a single machine does it (one process, local staging): the rows and the report
    outcome the Celery deployment must reproduce."""
    since = time.time()
    _drop_supply(settings, supply)
    demo.run_feed_dag(FEED)
    report = json.loads(demo.latest_report(settings, FEED, PERIOD, since).read_text())
    rows = _loaded_rows(db, schema_for(FEED))
    assert _supply_status(db) == "loaded" and sum(map(len, rows.values())) > 0
    return {"rows": rows, "level": report["outcome"]["level"], "reasons": report["outcome"]["reasons"]}


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_two_celery_workers_load_a_supply_as_one_worker_does(request, settings, db, supply, forget_supply):
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    # Started first, so that its components start up while the one-worker run runs. The feed's DAG is paused until
    # the one-worker run is over, and Airflow registers an asset watcher only for an unpaused DAG: its arrival watcher
    # never sees the one-worker run's files.
    d = request.getfixturevalue("celery_deployment")
    one_worker = _one_worker(settings, db, supply)
    forget_supply(db, schema, PERIOD)
    api: Api = d["api"]
    logs = sorted(d["logs"].glob("*.log"))
    wait("the API server giving the engineer a token", api.login, START_WAIT_S, logs)
    wait("the DAG processor serialising the feed's DAG",
          lambda: api.get_or_none(f"/api/v2/dags/{DAG_ID}"), START_WAIT_S, logs)
    assert api.get(f"/api/v2/dags/{DAG_ID}")["is_paused"] is True     # until its partner is onboarded
    # no watcher yet, so none saw the one-worker run's supply
    assert arrival_watchers(d["cfg"]["airflow_database_url"]) == 0
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    request_parse(api, DAG_ID)
    wait("the asset watcher reaching the triggerer", lambda: arrival_watchers(d["cfg"]["airflow_database_url"]) > 0,
         START_WAIT_S, logs)

    _drop_supply(settings, supply)
    runs_path = f"/api/v2/dags/{DAG_ID}/dagRuns"
    # A worker loses the load's task process while it runs (SIGKILL: no clean-up of any kind).
    killed = _kill_task_process(api, runs_path, KILLED_STAGE, d["worker_pids"][ROUTES[KILLED_STAGE]],
                                settings.database_url, logs)
    done = wait("the supply's run finishing on the Celery workers",
                 lambda: [r for r in api.get(runs_path)["dag_runs"] if r["state"] in ("success", "failed")],
                 RUN_WAIT_S, logs)
    (run,) = done
    assert run["run_type"] == "asset_triggered"
    tis = {ti["task_id"]: ti for ti in
           api.get(f"{runs_path}/{run['dag_run_id']}/taskInstances")["task_instances"]}

    # Every stage ran, each on the worker its queue names: every hand-over crossed from one worker to the other.
    for stage in STAGES:
        ti = tis[stage]
        assert ti["state"] == "success", (stage, {k: v["state"] for k, v in tis.items()}, tails(logs))
        assert ti["queue"] == d["queues"][ROUTES[stage]], (stage, ti["queue"])
        assert ti["hostname"] == f"worker-{ROUTES[stage]}", (stage, ti["hostname"])
    assert {tis[s]["hostname"] for s in STAGES} == {"worker-a", "worker-b"}
    # Each worker imported the stages' modules once, before it forked its pool (csp_observatory.worker_preload, named
    # by celery_config.CELERY_CONFIG): its own process maps scipy's k-d tree, which only geocode and sanitise use.
    for w, pid in d["worker_pids"].items():
        assert any("_ckdtree" in m.path for m in psutil.Process(pid).memory_maps()), f"worker {w} preloaded nothing"
    # The killed try failed and Airflow ran the task again: the second try is the one that succeeded.
    assert tis[KILLED_STAGE]["try_number"] == killed["try_number"] + 1, (tis[KILLED_STAGE], killed)
    assert tis[KILLED_STAGE]["id"] != killed["id"]
    tries = api.get(f"{runs_path}/{run['dag_run_id']}/taskInstances/{KILLED_STAGE}/tries")["task_instances"]
    states = {t["try_number"]: t["state"] for t in tries}
    assert states[killed["try_number"]] in ("failed", "up_for_retry") and states[max(states)] == "success", states

    # The run's state and the quality outcome, as the engineer sees them: amber fails the verdict and the run.
    celery_outcome = api.get(f"{runs_path}/{run['dag_run_id']}/taskInstances/report_and_archive/xcomEntries/"
                             f"return_value?deserialize=true")["value"]
    if isinstance(celery_outcome, str):
        celery_outcome = json.loads(celery_outcome)
    (got,) = celery_outcome["supplies"]
    assert got["supply_id"] == f"{FEED}/{PERIOD}" and got["status"] == "loaded"
    assert got["level"] == one_worker["level"] and got["reasons"] == one_worker["reasons"]
    expected_state = "success" if one_worker["level"] == "green" else "failed"
    assert tis["verdict"]["state"] == expected_state and run["state"] == expected_state
    assert tis["stage_failed"]["state"] != "failed"

    # The same rows in PostGIS as with one worker.
    assert _supply_status(db) == "loaded"
    assert _loaded_rows(db, schema) == one_worker["rows"]

    # Nothing of the supply stayed on a worker's own disk (the collect task's download went into the shared store;
    # a worker may keep caches of its own, such as displacement maps, which any worker rebuilds), and no plaintext
    # or frame outlived the run in the shared store.
    for w, dirs in d["workers"].items():
        assert _files(dirs["staging"] / FEED) == [], (w, _files(dirs["staging"] / FEED))
        assert not [p for p in _files(dirs["tmp"]) if p.suffix in DATA_SUFFIXES or "csp-staging" in str(p)], w
    assert {p.name for p in _files(d["shared"])} == {"manifest.json"}


def _kill_task_process(api: Api, runs_path: str, task_id: str, worker_pid: int, database_url: str,
                       logs: list[Path]) -> dict[str, Any]:
    """SIGKILL the process running ``task_id`` of the feed's run on the worker ``worker_pid`` while it is connected
    to PostGIS (for the load: inside its work, not while Python starts); returns that try's task instance as the
    REST API showed it.

    Airflow's task runner calls itself ``airflow worker -- <task instance id>`` (setproctitle): the process is found
    among the worker's descendants by the id the REST API gives the running try, so no other task is hit."""
    worker = psutil.Process(worker_pid)
    db_port = urlsplit(database_url).port or 5432
    watcher = psycopg2.connect(database_url, connect_timeout=10)
    watcher.autocommit = True           # each look a statement of its own: pg_stat_activity as it is now

    def at_work(proc: psutil.Process) -> bool:
        """Connected to the observatory's database (not only holding the Airflow database's sockets, which a task
        process inherits from the worker it was forked from: both live in the same cluster)."""
        ports = [c.laddr.port for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == db_port]
        if not ports:
            return False
        with watcher.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND client_port = ANY(%s)", (ports,))
            return cur.fetchone()[0] > 0

    def running_try() -> dict[str, Any] | None:
        for run in api.get(runs_path)["dag_runs"]:
            ti = api.get_or_none(f"{runs_path}/{run['dag_run_id']}/taskInstances/{task_id}")
            if ti and ti["state"] == "running":
                return ti
        return None

    def kill() -> dict[str, Any] | None:
        ti = running_try()
        if ti is None:
            return None
        for proc in worker.children(recursive=True):
            try:
                if f"airflow worker -- {ti['id']}" in " ".join(proc.cmdline()):
                    deadline = time.monotonic() + KILL_WAIT_S
                    while not at_work(proc):
                        assert time.monotonic() < deadline, f"{task_id} never connected to PostGIS"
                        time.sleep(0.02)
                    proc.kill()
                    proc.wait(10)
                    return ti
            except psutil.NoSuchProcess:
                continue
        return None

    try:
        return wait(f"the {task_id} task's process running on its worker, to kill it", kill, KILL_WAIT_S, logs,
                    every=0.2)
    finally:
        watcher.close()


def _task_log(workers: dict[str, dict[str, Path]], dag_id: str, run_id: str, task_id: str) -> str:
    """The text of a task's log files (every try) as the worker that ran it wrote them, in its own Airflow home."""
    found = [p for dirs in workers.values() for p in (dirs["home"] / "logs").rglob("*.log")
             if f"dag_id={dag_id}" in str(p) and f"run_id={run_id}" in str(p) and f"task_id={task_id}" in str(p)]
    assert found, (task_id, [str(p) for dirs in workers.values() for p in (dirs["home"] / "logs").rglob("*.log")])
    return "\n".join(p.read_text(errors="replace") for p in found)


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_a_celery_task_works_a_supplys_files_in_forked_processes_and_loads_them_on_two_connections(
        request, settings, db, forget_supply):
    from csp_observatory.file_workers import usable_cores

    schema = schema_for(MULTI_FEED)
    dag_id = f"feed_{MULTI_FEED}"
    forget_supply(db, schema, MULTI_PERIOD)
    d = request.getfixturevalue("celery_deployment")
    api: Api = d["api"]
    logs = sorted(d["logs"].glob("*.log"))
    wait("the API server giving the engineer a token", api.login, START_WAIT_S, logs)
    wait("the DAG processor serialising the feed's DAG", lambda: api.get_or_none(f"/api/v2/dags/{dag_id}"),
         START_WAIT_S, logs)
    watchers = arrival_watchers(d["cfg"]["airflow_database_url"])
    api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})
    request_parse(api, dag_id)
    wait("the feed's asset watcher reaching the triggerer",
         lambda: arrival_watchers(d["cfg"]["airflow_database_url"]) > watchers, START_WAIT_S, logs)

    supply = fixtures.make_supply(schema, MULTI_PERIOD, postcodes_sources.shipped_reference(), n=30)
    assert len(supply.files) == 2
    try:
        demo.drop_demo_supply(settings, schema, MULTI_PERIOD, files=supply.files, metadata=supply.metadata)
        runs_path = f"/api/v2/dags/{dag_id}/dagRuns"
        (run,) = wait("the supply's run finishing on the Celery workers",
                      lambda: [r for r in api.get(runs_path)["dag_runs"] if r["state"] in ("success", "failed")],
                      RUN_WAIT_S, logs)
        tis = {ti["task_id"]: ti for ti in
               api.get(f"{runs_path}/{run['dag_run_id']}/taskInstances")["task_instances"]}
        for stage in STAGES:
            assert tis[stage]["state"] == "success", (stage, {k: v["state"] for k, v in tis.items()}, tails(logs))

        # Each stage's two files were worked in two processes of the task's own, forked in the Celery worker's task
        # process; each child's log records reached the task's log.
        names = [f.name for f in schema.files]
        for stage in FORKED_STAGES:
            text = _task_log(d["workers"], dag_id, run["dag_run_id"], stage)
            assert "2 files in 2 processes" in text, (stage, text[-3000:])
            pids = set()
            for name in names:
                done = [line for line in text.splitlines() if f"file {name}: done in" in line]
                assert done, (stage, name, text[-3000:])
                pids.add(done[-1].split(" in process ")[1].split()[0])
            assert len(pids) == 2, (stage, pids)
        # The load: the larger file's partition on the task's connection, the other's built on a second connection
        # in the schema loading, and moved into the feed's in the load's transaction (on a machine of two cores).
        load = _task_log(d["workers"], dag_id, run["dag_run_id"], "load")
        on_second = [f.table for f in schema.files if f"{partitions.LOADING_SCHEMA}.{f.table}_f" in load]
        assert len(on_second) == (1 if usable_cores() >= 2 else 0), (on_second, load[-3000:])

        # The supply loaded whole: every row the report counts is in the feed's tables, and none of its partitions was
        # left in the loading schema.
        with db.cursor() as cur:
            cur.execute("SELECT status, report FROM observatory.supplies WHERE supply_id = %s",
                        (f"{MULTI_FEED}/{MULTI_PERIOD}",))
            status, report = cur.fetchone()
            loaded = 0
            for f in schema.files:
                cur.execute(f"SELECT count(*) FROM {schema.db_schema}.{f.table} WHERE supply_id = %s",  # noqa: S608
                            (f"{MULTI_FEED}/{MULTI_PERIOD}",))
                n = cur.fetchone()[0]
                assert n > 0, f.table
                loaded += n
            cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND obj_description(c.oid, 'pg_class') = ANY(%s)",
                        (partitions.LOADING_SCHEMA, [partitions.partition_comment(schema.db_schema, f.table,
                                                                                  f"{MULTI_FEED}/{MULTI_PERIOD}")
                                                     for f in schema.files]))
            left = cur.fetchone()[0]
        db.rollback()
        assert status == "loaded" and loaded == report["summary"]["rows_loaded"] and left == 0
    finally:
        api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": True})
        forget_supply(db, schema, MULTI_PERIOD)
