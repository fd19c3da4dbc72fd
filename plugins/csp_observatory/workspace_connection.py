"""How an analyst's workspace reaches PostGIS: a pg_service name or host, port, database and user, never a password.

:class:`Connection` is what a QGIS project's layers connect with (it has no password field, so none can reach a
project file); :func:`connect` opens the command's own connection as the analyst (``--dsn``, else
``CSP_ANALYST_DSN``, else the project's); :func:`service_stanza` is the ``pg_service.conf`` section an analyst adds.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


#: The pg_service name a project connects with unless told otherwise (docs/ANALYSTS.md shows the stanza).
DEFAULT_SERVICE: Final = "csp_observatory"
DSN_ENV: Final = "CSP_ANALYST_DSN"


# --- connection ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    """How a project's layers reach PostGIS: a pg_service name, or host/port/database/user. It has no password
    field, so none can reach a project file."""

    service: str | None = DEFAULT_SERVICE
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    #: "verify-full" where PostGIS takes TCP logins over TLS only (docs/GOVERNANCE.md): QGIS and libpq then check
    #: the server's certificate against the CA (``sslrootcert``, else ~/.postgresql/root.crt)
    sslmode: str | None = None
    #: the CA certificate's path, for libpq and pg_service.conf only: a QGIS data source has no such key (QGIS
    #: takes the CA from its authentication settings or ~/.postgresql/root.crt)
    sslrootcert: str | None = None

    def __post_init__(self) -> None:
        if not self.service and not self.dbname:
            raise ValueError("a connection needs a pg_service name or a database name")

    def _pairs(self) -> list[tuple[str, str]]:
        if self.service:
            return [("service", self.service)]
        pairs = [("dbname", self.dbname or ""), ("host", self.host or ""),
                 ("port", str(self.port) if self.port else ""), ("user", self.user or ""),
                 ("sslmode", self.sslmode or "")]
        return [(k, v) for k, v in pairs if v]

    def libpq(self) -> str:
        """A libpq connection string (for psycopg2 and GDAL's ``PG:``); libpq finds the password in ~/.pgpass."""
        pairs = self._pairs() + ([("sslrootcert", self.sslrootcert)] if self.sslrootcert and not self.service else [])
        return " ".join(f"{k}={_quote(v)}" for k, v in pairs)

    def qgis(self) -> str:
        """The connection part of a QGIS PostGIS data source."""
        return " ".join(f"{k}={_quote(v, always=k in ('service', 'dbname', 'user'))}" for k, v in self._pairs())


def _quote(value: str, always: bool = False) -> str:
    if always or not value or re.search(r"[\s'\\]", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def connection_from_demo(path: Path) -> tuple[Connection, str]:
    """The analyst's connection from a set-up's demo config (``.run/demo.yaml``): the parameters for the project,
    and the analyst URL (with its password) for the command itself, which never reaches the project."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    conn = Connection(service=None, host=raw.get("analyst_host"), port=raw.get("analyst_port"),
                      dbname=raw.get("analyst_database"), user=raw.get("analyst_user"),
                      sslmode=raw.get("analyst_sslmode"), sslrootcert=raw.get("analyst_sslrootcert"))
    return conn, raw["analyst_url"]


def connect(dsn: str | None, connection: Connection) -> Any:
    """A psycopg2 connection as the analyst: ``dsn``, else ``CSP_ANALYST_DSN``, else the project's connection."""
    import psycopg2

    return psycopg2.connect(dsn or os.environ.get(DSN_ENV) or connection.libpq(), connect_timeout=10)


def service_stanza(connection: Connection, name: str = DEFAULT_SERVICE) -> str:
    """The ``pg_service.conf`` section an analyst adds for a project that uses a service (no password: that goes
    in ``~/.pgpass``, or QGIS asks)."""
    lines = [f"[{name}]"]
    lines += [f"{k}={v}" for k, v in (("host", connection.host), ("port", connection.port),
                                      ("dbname", connection.dbname), ("user", connection.user),
                                      ("sslmode", connection.sslmode), ("sslrootcert", connection.sslrootcert)) if v]
    return "\n".join(lines) + "\n"
