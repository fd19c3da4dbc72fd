"""Start and stop this clone's Airflow as a real deployment runs it, with one command each (``scripts/airflow``).

``airflow standalone`` is a development toy: killing it leaves its scheduler's, DAG processor's and API server's
children behind (about 30 processes). Here each component (scheduler, DAG processor, triggerer, API server with
the UI) runs in its own session and process group. A running task's process puts itself in a group of its own,
so signalling the components' groups is not enough: ``stop`` first takes every descendant of the components (and
any process whose environment carries the deployment's marker ``CSP_AIRFLOW_SERVICE``, which children inherit
unless setproctitle has overwritten it), then signals the groups, waits, and kills whatever of those is still
alive, so that nothing is left behind. It reports what it had to kill.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

import psutil

#: Airflow 3's components, each its own process group. The API server serves the UI and the REST API.
COMPONENTS: Final = ("scheduler", "dag-processor", "triggerer", "api-server")
MARKER: Final = "CSP_AIRFLOW_SERVICE"
DEFAULT_PORT: Final = 8080


def _home() -> Path:
    home = os.environ.get("AIRFLOW_HOME")
    if not home:
        raise SystemExit("AIRFLOW_HOME is not set: source .run/airflow.env (scripts/airflow does) first")
    return Path(home).resolve()


def _run_dir(home: Path) -> Path:
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    return run


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _env(home: Path, port: int, host: str) -> dict[str, str]:
    """The components' environment: one JWT secret for all (they must trust each other's tokens), the execution
    API on this deployment's port, and the marker that lets ``stop`` find every process of it."""
    secret_file = home / ".csp-jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    env = dict(os.environ)
    env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    # Airflow's default (32 tasks at once, each LocalExecutor worker a process) is for a big machine.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(max(4, 2 * (os.cpu_count() or 1))))
    env.update({
        "AIRFLOW__API__HOST": host, "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        MARKER: str(home),
    })
    return env


def _pid(home: Path, name: str) -> int | None:
    try:
        pid = int((_run_dir(home) / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def members(home: Path, known: list[psutil.Process] | None = None) -> list[psutil.Process]:
    """Every live process of the deployment at ``home``, but this one: the components, their descendants (a
    task's process puts itself in a group of its own), those carrying the marker (where setproctitle has not
    overwritten their environment) and any of ``known`` still alive (a task process orphaned by its worker)."""
    found: dict[int, psutil.Process] = {}
    for name in COMPONENTS:
        if pid := _pid(home, name):
            try:
                top = psutil.Process(pid)
                found.update({p.pid: p for p in [top, *top.children(recursive=True)]})
            except psutil.NoSuchProcess:
                continue
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARKER) == str(home):
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    found.update({p.pid: p for p in known or [] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE})
    found.pop(os.getpid(), None)
    return list(found.values())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as r:
            return r.status == 200 and "metadatabase" in json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(port: int = DEFAULT_PORT, host: str = "127.0.0.1", wait_s: float = 180.0) -> int:
    """Start every component not already running; wait until the API server answers. Returns 0 when it does."""
    home = _home()
    env = _env(home, port, host)
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env and not (home / "airflow.db").exists():
        subprocess.run([_airflow(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    logs = home / "logs" / "components"
    logs.mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        if _pid(home, name):
            print(f"  {name:<14} already running (pid {_pid(home, name)})")
            continue
        with open(logs / f"{name}.log", "ab") as out:
            p = subprocess.Popen([_airflow(), name], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=home)
        (_run_dir(home) / f"{name}.pid").write_text(str(p.pid))
        print(f"  {name:<14} started (pid {p.pid}; log {logs / (name + '.log')})")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _healthy(port):
            passwords = home / "simple_auth_manager_passwords.json.generated"
            print(f"Airflow is up: http://{host}:{port} (user admin; password in {passwords})")
            return 0
        if not _pid(home, "api-server"):
            break
        time.sleep(1)
    print(f"the API server did not answer on port {port}: see {logs}/api-server.log", file=sys.stderr)
    return 1


def stop(timeout_s: float = 30.0) -> int:
    """Stop every component (SIGTERM to each process group, then SIGKILL), then end any process left that
    carries the deployment's marker. Returns 0 when nothing of the deployment is left."""
    home = _home()
    # Taken before any signal: once a worker dies, its task processes are re-parented and no longer its children.
    known = members(home)
    groups = [pid for name in COMPONENTS if (pid := _pid(home, name))]
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and members(home, known):
        time.sleep(0.5)
    left = members(home, known)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    for name in COMPONENTS:
        (_run_dir(home) / f"{name}.pid").unlink(missing_ok=True)
    remaining = members(home, known)
    if left:
        print(f"  {len(left)} process(es) did not stop within {timeout_s:g} s and were killed")
    if remaining:
        print("still running: " + ", ".join(str(p.pid) for p in remaining), file=sys.stderr)
        return 1
    print("Airflow stopped: no process of it is left")
    return 0


def status() -> int:
    """Print each component's state and the number of the deployment's processes; 0 if all are running."""
    home = _home()
    up = 0
    for name in COMPONENTS:
        pid = _pid(home, name)
        up += bool(pid)
        print(f"  {name:<14} {'running (pid %d)' % pid if pid else 'stopped'}")
    print(f"  {len(members(home))} processes in all")
    return 0 if up == len(COMPONENTS) else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/airflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start the scheduler, DAG processor, triggerer and API server (UI)")
    s.add_argument("--port", type=int, default=int(os.environ.get("CSP_AIRFLOW_PORT", DEFAULT_PORT)))
    s.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: loopback only)")
    sub.add_parser("stop", help="stop them all, leaving no process behind")
    sub.add_parser("status", help="show what is running")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(args.port, args.host)
    return stop() if args.command == "stop" else status()


if __name__ == "__main__":
    sys.exit(main())
