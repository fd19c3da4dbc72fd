"""What the tests that start a real Airflow deployment share: free ports, the components' environment, starting
them and stopping them with nothing left behind, waiting with the components' logs at hand, the metadata DB and the
REST API as the UI uses it. (Not a test module: the integration tests import it from their own folder.)"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import psutil
import psycopg2

from csp_observatory import connections
from csp_observatory.config import load_settings
from csp_observatory.schema import REPO_ROOT

#: Airflow 3's own processes; the API server serves the UI and the REST API.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """An ``airflow`` command in the deployment's environment."""
    return subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


def base_env(home: Path, api_port: int, **overrides: str) -> dict[str, str]:
    """The components' environment: the repository's DAGs and plugins, the tests' services (the conftest pointed
    CSP_CONFIG at them), a metadata DB in ``home`` (SQLite unless overridden), ports of their own, quick looks and
    quick retries; ``overrides`` last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.pop("CSP_DATABASE_URL", None)
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
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The DAG files do not change while a test runs: parse each once at the start (and when a test asks, see
        # request_parse), not every 30 s, which on two cores takes CPU from the tasks the tests wait for. A file
        # whose first parse failed is still parsed again within the tests' waits.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
        "CSP_CONFIG": os.environ["CSP_CONFIG"],
        "CSP_SENSOR_POKE_S": "2",
        "CSP_SENSOR_TIMEOUT_S": "300",
        "CSP_RETRY_DELAY_S": "1",
        "GX_ANALYTICS_ENABLED": "false",
    })
    # The DAGs' tasks reach SFTP and PostGIS through the Airflow Connections csp_sftp and csp_postgis, always the
    # tests' services here (never the demo's, which .run/airflow.env may define).
    env.update(connections.env_vars(load_settings(Path(env["CSP_CONFIG"]))))
    env[connections.SOURCE_ENV] = connections.config_source(env["CSP_CONFIG"])
    env.update(overrides)
    return env


def celery_env(home: Path, api_port: int, cfg: dict[str, str], **overrides: str) -> dict[str, str]:
    """:func:`base_env` for the CeleryExecutor on the tests' broker and PostgreSQL metadata DB (``cfg``: set-up's
    ``.run/test/celery.yaml``), with docker-compose.yaml's Celery and scheduler settings: each worker imports the
    stages' modules once (``csp_observatory.worker_preload``), and the scheduler sleeps 0.25 s when idle."""
    return base_env(home, api_port, **{
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg["airflow_database_url"],
        "AIRFLOW__CELERY__BROKER_URL": cfg["broker_url"],
        "AIRFLOW__CELERY__RESULT_BACKEND": cfg["result_backend"],
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "csp_observatory.celery_config.CELERY_CONFIG",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
        **overrides})


def _plain_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg2://", "postgresql://", 1)


def reset_postgres_db(url: str) -> None:
    """An empty PostgreSQL metadata DB for a deployment (the role owns the database and its public schema)."""
    conn = psycopg2.connect(_plain_url(url), connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS public CASCADE")
            cur.execute("CREATE SCHEMA public")
    finally:
        conn.close()


def postgres_query(url: str, statement: str, *params: Any) -> list[tuple]:
    """A query of a PostgreSQL metadata DB (its SQLAlchemy URL)."""
    conn = psycopg2.connect(_plain_url(url), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def arrival_watchers(url: str) -> int:
    """How many supply arrival watchers the triggerer has been given (the ``trigger`` table of a PostgreSQL
    metadata DB)."""
    query = "SELECT count(*) FROM trigger WHERE classpath LIKE %s"
    return postgres_query(url, query, "%SupplyArrivalTrigger%")[0][0]


def tails(logs: Path | Iterable[Path], lines: int = 25) -> str:
    """The last lines of each log (a folder's ``*.log`` or the files given), for a failure's message."""
    files = sorted(logs.glob("*.log")) if isinstance(logs, Path) else list(logs)
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                     for p in files if p.exists())


def wait(what: str, check: Any, within: float, logs: Path | Iterable[Path], every: float = 1.0) -> Any:
    """``check()``'s first true answer within ``within`` seconds; a server or metadata DB that is not up yet
    counts as no answer. Fails with the components' log tails. (A look every second: each is one query or one API
    call, and a test waits in turn for many things.)"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            got = check()
        except (OSError, sqlite3.Error):
            got = None
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {within:.0f} s\n{tails(logs)}")


def sqlite_query(db: Path, statement: str, *params: Any) -> list[tuple]:
    """A read-only query of a SQLite metadata DB."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(statement, params).fetchall()


def start(env: dict[str, str], logs: Path, command: Sequence[str], name: str,
          procs: list[subprocess.Popen]) -> None:
    """Start ``airflow <command>`` in a process group of its own, its output in ``logs/<name>.log``."""
    with open(logs / f"{name}.log", "wb") as out:
        procs.append(subprocess.Popen([AIRFLOW, *command], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))


def stop(procs: list[subprocess.Popen], timeout_s: float = 30.0) -> None:
    """Stop every process group, then anything they started that is still alive (a task's process puts itself in
    a group of its own), so that no process of the deployment outlives the test."""
    family: list[psutil.Process] = []
    for p in procs:
        try:
            family += psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=max(deadline - time.monotonic(), 1))
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@contextmanager
def deployment(env: dict[str, str], logs: Path, names: Sequence[str] = COMPONENTS) -> Iterator[list[subprocess.Popen]]:
    """The components running (after ``airflow db migrate``) until the block ends; more processes (workers) may be
    added with :func:`start` to the list it yields, and are stopped with the rest."""
    migrated = airflow(env, "db", "migrate", timeout=600)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for name in names:
            start(env, logs, [name], name, procs)
        yield procs
    finally:
        stop(procs)


def request_parse(api: Api, dag_id: str) -> None:
    """Ask the DAG processor to parse ``dag_id``'s file now, as the UI's reparse button does: Airflow registers the
    asset watchers of a DAG that has just been unpaused only when its file is parsed again."""
    token = api.call("GET", f"/api/v2/dags/{dag_id}/details")["file_token"]
    api.call("PUT", f"/api/v2/parseDagFile/{token}")


class Api:
    """Airflow's REST API (and the UI's own API) as the UI calls it: with a token from the simple auth manager when
    a user is given, else as the simple auth manager's everyone-is-admin mode lets anyone in."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.base, self.username, self.password, self.token = f"http://127.0.0.1:{port}", username, password, ""

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        if auth and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def login(self) -> bool:
        """Take a token as the user; False while the API server is not up yet."""
        try:
            self.token = self.call("POST", "/auth/token", {"username": self.username, "password": self.password},
                                   auth=False)["access_token"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return bool(self.token)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def get_or_none(self, path: str) -> Any:
        """``get``, or None where the API answers 404 (not there yet)."""
        try:
            return self.get(path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body)
