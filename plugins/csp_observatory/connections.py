"""The observatory's two Airflow Connections, made from its settings: ``csp_sftp`` (the partners' SFTP server, host
key pinned) and ``csp_postgis`` (the loader's PostGIS account).

In a deployment the DAG layer reaches SFTP and PostGIS only through these connections (``hooks.py``: the
providers' ``SFTPHook`` and ``PostgresHook``), so an operator can keep them in any Airflow secrets backend. On
one machine they are ``AIRFLOW_CONN_*`` environment variables in Airflow's JSON form, which this module writes
from the settings ``scripts/setup.sh`` made::

    python -m csp_observatory.connections env [--config .run/observatory.yaml]

prints ``export AIRFLOW_CONN_CSP_SFTP='...'`` and ``export AIRFLOW_CONN_CSP_POSTGIS='...'`` lines (they hold the
loader's password, as the settings file does: never commit their output). No Airflow import here: the CLI, the
tests and ``demo.run_feed_dag`` use it without Airflow's machinery.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any, Final, MutableMapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from csp_observatory.config import DEFAULT_CONFIG, Settings, load_settings

SFTP_CONN_ID: Final = "csp_sftp"
POSTGIS_CONN_ID: Final = "csp_postgis"
#: Names the settings file the ``AIRFLOW_CONN_*`` variables beside it were made from (see :func:`ensure_env`).
SOURCE_ENV: Final = "CSP_CONNECTIONS_FROM"
#: What libpq calls its connection parameters in a URL's query (``?sslmode=verify-full&sslrootcert=...``): all go
#: into the connection's extras, which PostgresHook passes to the driver as they are.
_URL_SCHEMES: Final = ("postgresql", "postgres")


def env_name(conn_id: str) -> str:
    """The environment variable Airflow reads a connection from: ``AIRFLOW_CONN_<ID>``."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def postgis_connection(database_url: str) -> dict[str, Any]:
    """A PostgreSQL URL (``postgresql://user:password@host:port/db?sslmode=...``) as an Airflow connection (JSON
    form): login and password unquoted, the database as ``schema`` (Airflow's name for it), every query parameter
    in ``extra``."""
    u = urlsplit(database_url)
    if u.scheme not in _URL_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL (scheme {u.scheme!r}): expected postgresql://user@host:port/db")
    conn: dict[str, Any] = {"conn_type": "postgres", "host": u.hostname or "", "port": u.port or 5432,
                            "login": unquote(u.username or ""), "schema": unquote(u.path.lstrip("/"))}
    if u.password is not None:
        conn["password"] = unquote(u.password)
    extra = dict(parse_qsl(u.query, keep_blank_values=True))
    if extra:
        conn["extra"] = extra
    return conn


def database_url(conn: dict[str, Any]) -> str:
    """The PostgreSQL URL of a ``csp_postgis``-style connection: the inverse of :func:`postgis_connection`."""
    auth = quote(conn.get("login") or "", safe="")
    if conn.get("password") is not None:
        auth += ":" + quote(conn["password"], safe="")
    query = urlencode(conn.get("extra") or {}, safe="/")
    return (f"postgresql://{auth}{'@' if auth else ''}{conn.get('host') or ''}:{conn.get('port') or 5432}"
            f"/{quote(conn.get('schema') or '', safe='')}" + (f"?{query}" if query else ""))


def pinned_host_key(host_key: str) -> str:
    """``"ssh-ed25519 AAAA..."`` from an OpenSSH public key line or a known_hosts line (comment and host dropped):
    the form SFTPHook's ``host_key`` extra takes."""
    fields = host_key.split()
    if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        fields = fields[1:]                 # "[127.0.0.1]:2222 ssh-ed25519 AAAA..."
    if len(fields) < 2:
        raise ValueError(f"host key {host_key[:40]!r} is not of the form 'ssh-ed25519 AAAA...'")
    return f"{fields[0]} {fields[1]}"


def sftp_connection(settings: Settings) -> dict[str, Any]:
    """The observatory's SFTP account as an Airflow connection (JSON form) with the server's host key pinned.

    ``no_host_key_check: false`` with ``host_key``: SFTPHook then knows only that key and refuses any other server
    (its default would trust any host key). ``look_for_keys: false``: only the observatory's own key is offered.
    """
    return {"conn_type": "sftp", "host": settings.sftp_host, "port": int(settings.sftp_port),
            "login": settings.sftp_user,
            "extra": {"key_file": str(settings.sftp_key_file), "host_key": pinned_host_key(settings.sftp_host_key),
                      "no_host_key_check": False, "allow_host_key_change": False, "look_for_keys": False,
                      "conn_timeout": 10}}


def env_vars(settings: Settings) -> dict[str, str]:
    """The two connections as ``AIRFLOW_CONN_*`` variables (JSON values)."""
    return {env_name(SFTP_CONN_ID): json.dumps(sftp_connection(settings)),
            env_name(POSTGIS_CONN_ID): json.dumps(postgis_connection(settings.database_url))}


def config_source(path: Path | str | None = None) -> str:
    """The settings file a set of connections is made from (``path``, else ``CSP_CONFIG``, else the default), as an
    absolute path: recorded beside them in :data:`SOURCE_ENV`."""
    return str(Path(path or os.environ.get("CSP_CONFIG") or DEFAULT_CONFIG).resolve())


def ensure_env(settings: Settings, environ: MutableMapping[str, str] | None = None,
               source: str | None = None) -> list[str]:
    """Define each connection in ``environ`` (default ``os.environ``) from ``settings`` unless it is already defined
    there; returns the variables set.

    A connection an operator defined is left as it is. One this module made from another settings file
    (:data:`SOURCE_ENV` names another ``source``: ``.run/airflow.env`` holds the demo's, and the tests point
    ``CSP_CONFIG`` at their own services) is replaced, so that a run never loads into the other's database.
    """
    environ = os.environ if environ is None else environ
    source = source or config_source()
    made_from = environ.get(SOURCE_ENV)
    stale = made_from is not None and made_from != source
    added = []
    for name, value in env_vars(settings).items():
        if stale or not environ.get(name):
            environ[name] = value
            added.append(name)
    if added:
        environ[SOURCE_ENV] = source
    return added


def export_lines(settings: Settings, source: str) -> list[str]:
    """``export AIRFLOW_CONN_...='...'`` lines for a shell (or ``.run/airflow.env``), and the settings file they
    were made from (:data:`SOURCE_ENV`)."""
    values = {**env_vars(settings), SOURCE_ENV: source}
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="print export lines defining the connections from the settings")
    env.add_argument("--config", type=Path, help="the settings file (default: $CSP_CONFIG, else .run/observatory.yaml)")
    args = parser.parse_args(argv)
    if args.command == "env":
        print("\n".join(export_lines(load_settings(args.config), config_source(args.config))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
