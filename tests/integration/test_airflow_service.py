"""scripts/airflow: the deployment starts with one command and stops with another, leaving no process behind,
even with a task running (a task's process puts itself in a process group of its own)."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from csp_observatory import airflow_service

REPO_ROOT = Path(__file__).resolve().parents[2]

SLEEPY_DAG = '''
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def sleepy():
    @task
    def nap():
        import time
        time.sleep(600)

    nap()


sleepy()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csp_observatory.airflow_service", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _wait(what: str, check: Any, within: float, home: Path) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(1)
    logs = home / "logs" / "components"
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                      for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"{what} did not happen within {within:.0f} s\n{tails}")


def _serialised(db: Path, dag_id: str) -> bool:
    """The DAG processor has stored ``dag_id`` in the metadata DB (what ``airflow dags trigger`` needs)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,)).fetchone() is not None
    except sqlite3.Error:
        return False


def _task_state(db: Path) -> str | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            row = conn.execute("SELECT state FROM task_instance WHERE dag_id = 'sleepy'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


@pytest.mark.integration
def test_start_then_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    home, dags = tmp_path / "airflow", tmp_path / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "sleepy.py").write_text(SLEEPY_DAG)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
    })
    os.environ["AIRFLOW_HOME"], saved = str(home), os.environ.get("AIRFLOW_HOME")
    try:
        started = _service(env, "start", "--port", str(port))
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        again = _service(env, "start", "--port", str(port))           # a second start starts nothing more
        assert again.returncode == 0 and again.stdout.count("already running") == len(airflow_service.COMPONENTS)

        airflow = str(Path(sys.executable).with_name("airflow"))
        # a cheap look first: each try of the CLI below is one more Airflow process to start
        _wait("the DAG processor parsing the test DAG", lambda: _serialised(home / "airflow.db", "sleepy"), 120, home)
        _wait("the test DAG triggered", lambda: subprocess.run(
            [airflow, "dags", "trigger", "sleepy"], env=env, capture_output=True).returncode == 0, 120, home)
        _wait("the task running", lambda: _task_state(home / "airflow.db") == "running", 180, home)
        running = airflow_service.members(home)
        groups = {os.getpgid(p.pid) for p in running if p.is_running()}
        # the task's own process group is among them: killing the components' groups alone would miss it
        component_groups = {int((home / "run" / f"{n}.pid").read_text()) for n in airflow_service.COMPONENTS}
        assert groups - component_groups, "no task process in a group of its own was found"

        stopped = _service(env, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "no process of it is left" in stopped.stdout
        alive = [p for p in running if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [p.cmdline() for p in alive]
        assert not airflow_service.members(home)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the API server still listens"
        status = _service(env, "status")
        assert status.returncode == 3 and status.stdout.count("stopped") == len(airflow_service.COMPONENTS)
    finally:
        _service(env, "stop")
        if saved is None:
            os.environ.pop("AIRFLOW_HOME", None)
        else:
            os.environ["AIRFLOW_HOME"] = saved
