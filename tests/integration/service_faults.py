"""Faults of the services the integration tests run on, made on purpose (tests/integration/test_fault_matrix.py):
the project's sshd stopped and started again, an SFTP session's server side killed mid-transfer, the PostGIS cluster
restarted, a small tmpfs for a full disk. (Not a test module: the fault tests import it from their own folder.)
Use them only in a test that holds the machine's integration test lock, and bring each service back in a finally.
"""
from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import psutil
import psycopg2
import pytest

from csp_observatory import sftp

# ------------------------------------------------------------------ the project's sshd


def sshd_listener(port: int) -> psutil.Process:
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "sshd" and any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                                                   for c in proc.net_connections("tcp")):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pytest.skip(f"no sshd of this machine listens on port {port} that this test may restart")


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def sshd_stopped(settings) -> Iterator[None]:
    """The project's sshd stopped (sessions in progress go on), started again as it was on the way out."""
    listener = sshd_listener(settings.sftp_port)
    # sshd shows its command line as its title: "sshd: /usr/sbin/sshd -f CONFIG -E LOG [listener] ..."
    words = listener.cmdline()
    argv = words[1: words.index("[listener]")] if "[listener]" in words else words
    assert argv and argv[0].startswith("/"), words
    listener.terminate()
    listener.wait(10)
    try:
        yield
    finally:
        # Its own session, no pipe of this process: the daemon must hold nothing of the test's.
        subprocess.run(argv, check=True, timeout=30, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not listening(settings.sftp_host, settings.sftp_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        with sftp.connect_observatory(settings) as client:       # back, with the pinned host key
            client.listdir(settings.inbox("police"))


def kill_session(client: Any) -> list[int]:
    """SIGKILL the sshd processes serving this SFTP session (the connection drops as if the network failed)."""
    port = client.get_channel().get_transport().sock.getsockname()[1]
    killed = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "sshd" and any(c.raddr and c.raddr.port == port
                                                   for c in proc.net_connections("tcp")):
                proc.kill()
                killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


class DroppingFile:
    """The remote file, read without prefetch; after the first block the server side of the session is killed."""

    def __init__(self, real: Any, client: Any, killed: list[int]) -> None:
        self.real, self.client, self.killed, self.reads = real, client, killed, 0

    def __enter__(self) -> DroppingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.real.close()
        except Exception:  # noqa: BLE001  the session is gone
            pass

    def prefetch(self, *args: Any) -> None:
        """No read-ahead: the transfer is under way, block by block, when the session dies."""

    def read(self, size: int) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return self.real.read(4096)
        if not self.killed:
            self.killed += kill_session(self.client)
        return self.real.read(size)


# ------------------------------------------------------------------ PostGIS


def postgis_cluster(settings) -> list[str]:
    """pg_ctlcluster's version and name of the project's cluster serving the tests' database."""
    port = urlsplit(settings.database_url).port or 5432
    try:
        listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("pg_lsclusters is not here: the tests' database is not a cluster of this machine")
    for line in listing.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == str(port):
            return [version, name]
    pytest.skip(f"no cluster of this machine listens on port {port} (CSP_DATABASE_URL names another server)")


def restart_postgis(cluster: list[str], settings) -> None:
    # No pipe of this process: the postmaster it starts must not hold one open (subprocess.run would wait on it).
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart", "-m", "fast"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, timeout=120)
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg2.connect(settings.database_url, connect_timeout=5).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)



@contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    folder.mkdir(mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs as the staging folder here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
