"""SFTP and PostGIS for the DAG layer, through Airflow Connections and the providers' hooks.

``dags/feeds.py`` and ``dags/refresh.py`` hand :class:`HookServices` to the stages (``pipeline_supply.Services``: a
``db()`` and an ``sftp()`` context manager), so that in a deployment the stages reach PostGIS and SFTP as the
connections ``csp_postgis`` and ``csp_sftp`` say (``AIRFLOW_CONN_*`` variables or any secrets backend;
``connections.py`` writes them from the settings), never through the settings file's own URL and keys. The stage
modules stay free of Airflow: only this module and ``dags/`` import the hooks.
"""
from __future__ import annotations

import logging
from contextlib import closing, contextmanager
from typing import Any, Iterator

import psycopg2
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.providers.sftp.hooks.sftp import SFTPHook, SFTPHookAsync

from csp_observatory.connections import POSTGIS_CONN_ID, SFTP_CONN_ID

log = logging.getLogger(__name__)


def unpinned(conn_id: str) -> ValueError:
    """The error for an SFTP connection that does not pin the server's host key (the project refuses to use it)."""
    return ValueError(f"the Airflow connection {conn_id!r} does not pin the SFTP server's host key: set its extras "
                      f"host_key ('ssh-ed25519 AAAA...') and no_host_key_check false "
                      f"(python -m csp_observatory.connections env)")


class PinnedSFTPHookAsync(SFTPHookAsync):
    """The provider's asyncssh hook (the one its own ``SFTPTrigger`` uses), for the triggerer's event loop; refuses
    a connection that does not pin the server's host key, as :meth:`HookServices.sftp` does.

    With a ``host_key`` extra and ``no_host_key_check`` false the hook hands asyncssh that one key as its
    known_hosts (bytes), so a server with any other key is refused (``asyncssh.HostKeyNotVerifiable``). Without it
    the hook would trust ``~/.ssh/known_hosts`` or, with ``no_host_key_check``, any server: that is refused here,
    after the provider's own reading of the extras and before any connection is made.
    """

    def _parse_extras(self, conn: Any) -> None:
        super()._parse_extras(conn)
        if not isinstance(self.known_hosts, bytes):
            raise unpinned(self.sftp_conn_id)


class PostGISHook(PostgresHook):
    """PostgresHook whose connections are psycopg2's.

    With SQLAlchemy 2 and psycopg 3 installed (Airflow pulls both in), PostgresHook connects with psycopg 3; the
    stages compose SQL with ``psycopg2.sql`` and COPY with psycopg2's cursor, so the driver is kept. Everything
    else (host, login, password, database, every extra such as ``sslmode``/``sslrootcert``) is the hook's own
    reading of the connection: only the final ``connect`` call is psycopg2's.
    """

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        return psycopg2.connect(**conn_args)


class HookServices:
    """``pipeline_supply.Services`` through Airflow Connections: ``db()`` with :class:`PostGISHook`, ``sftp()`` with
    SFTPHook (one SSH session per block; the hook's managed connection)."""

    def __init__(self, sftp_conn_id: str = SFTP_CONN_ID, postgis_conn_id: str = POSTGIS_CONN_ID) -> None:
        self.sftp_conn_id = sftp_conn_id
        self.postgis_conn_id = postgis_conn_id

    @contextmanager
    def db(self) -> Iterator[Any]:
        """A psycopg2 connection from ``csp_postgis``, closed after the block (the caller commits)."""
        with closing(PostGISHook(postgres_conn_id=self.postgis_conn_id).get_conn()) as conn:
            yield conn

    @contextmanager
    def sftp(self) -> Iterator[Any]:
        """A paramiko SFTP client from ``csp_sftp``; refuses a connection that does not pin the server's host key."""
        # One connection attempt per task try: the task's own retries (retry_delay, each try and its log in the UI)
        # are the retry policy. The hook's default, three attempts 3-5 s apart inside each try, hid two attempts from
        # the UI and made a refused login nine logins and half a minute before the run could fail.
        hook = SFTPHook(ssh_conn_id=self.sftp_conn_id, conn_retry_attempts=1)
        # The SSH hook compresses with zlib unless told not to: the files are gpg output (compressed, then
        # encrypted), so zlib gains nothing and held a 1M-offence supply's download to 14-19 MB/s (63-88 without)
        hook.compress = False
        if hook.host_key is None or hook.no_host_key_check:
            raise unpinned(self.sftp_conn_id)
        log.info("SFTP through the Airflow connection %s (%s@%s:%s, host key pinned: %s %s)", self.sftp_conn_id,
                 hook.username, hook.remote_host, hook.port, hook.host_key.get_name(),
                 hook.host_key.fingerprint)
        with hook.get_managed_conn() as client:
            yield client
