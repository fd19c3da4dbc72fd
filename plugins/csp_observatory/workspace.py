"""An analyst's workspace: one QGIS project per CSP deployment, and GeoPackage exports of sanitised layers.

``qgis-project`` writes a QGIS project file (``.qgs``, XML) that opens every depersonalised layer the database
holds (EPSG:27700, styled by the category its schema names: ``ward_month.category_field``) and each layer's counts by ward
and month (``ward_month.ward_month_table``), grouped by feed. Its layers connect to PostGIS through a pg_service name
(``service='csp_observatory'``) or with host, port, database and user: never with a password, which stays in the
analyst's ``~/.pgpass`` (or QGIS asks for it). Every layer names ``fid`` as its key, the feature id QGIS and GDAL
take from the tables' primary key.

``export`` writes one feed's sanitised layers for one period to a GeoPackage (EPSG:27700, one layer per file of
the feed, the table's comment as its description) for analysts without database access. It refuses a personalised
feed before it connects, and writes only the columns the depersonalised table has by the schema (sanitising has
dropped the rest), never ``SELECT *``.

Both read the database with the analyst's login: ``--dsn``, else ``CSP_ANALYST_DSN``, else the project's own
connection (the service, or the host parameters with the password from ``~/.pgpass``). ``docs/ANALYSTS.md`` says
how to use them; ``scripts/qgis_project`` and ``scripts/export_gpkg`` run them with this clone's venv.

This module is the command line (``python -m csp_observatory.workspace``); the connection is
``workspace_connection.py``, the layers a project shows ``workspace_layers.py``, the project file
``workspace_project.py`` and the GeoPackage export ``workspace_export.py``.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from csp_observatory import ddl, ward_month
from csp_observatory.schema import SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schemas
from csp_observatory.workspace_connection import DEFAULT_SERVICE, DSN_ENV, Connection, connect, connection_from_demo
from csp_observatory.workspace_export import RefusedExport, export_gpkg, refuse_personalised
from csp_observatory.workspace_project import write_project


# --- command line -------------------------------------------------------------------------------------------------

def _schema(feed: str) -> FeedSchema:
    for schema in load_schemas(SCHEMA_DIR):
        if schema.feed == feed:
            return schema
    raise SystemExit(f"no feed {feed!r} in {SCHEMA_DIR}")


def _connection(args: argparse.Namespace) -> tuple[Connection, str | None]:
    dsn = args.dsn
    if args.demo_config:
        connection, url = connection_from_demo(args.demo_config)
        return connection, dsn or url
    if args.dbname:
        return Connection(service=None, host=args.host, port=args.port, dbname=args.dbname, user=args.user), dsn
    return Connection(service=args.service), dsn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csp_observatory.workspace", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("qgis-project", "export"):
        p = sub.add_parser(name)
        p.add_argument("--service", default=DEFAULT_SERVICE,
                       help=f"pg_service name the project connects with (default {DEFAULT_SERVICE})")
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--dbname", help="connect with host/port/dbname/user instead of a service")
        p.add_argument("--user")
        p.add_argument("--demo-config", type=Path,
                       help="a set-up's .run/demo.yaml: the analyst's host, port, database and user (and, for this "
                            "command only, the analyst URL)")
        p.add_argument("--dsn", help=f"libpq string or URL this command reads with (default ${DSN_ENV}, else the "
                                     f"project's connection); never written to a file")
        p.add_argument("--out", type=Path, required=True)
        if name == "qgis-project":
            p.add_argument("--title", default="CSP observatory")
            p.add_argument("--feeds", help="comma-separated feed ids (default: every feed)")
        else:
            p.add_argument("--feed", required=True)
            p.add_argument("--period", required=True, help="the supply period, e.g. 202609")
            p.add_argument("--file", action="append", help="one file of the feed (default: all of them)")
            p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            schema = _schema(args.feed)
            refuse_personalised(schema)     # before any connection is made
            connection, dsn = _connection(args)
            with closing(connect(dsn, connection)) as conn:
                result = export_gpkg(conn, schema, args.period, args.out, args.file, args.overwrite)
            for table, n in result.rows.items():
                print(f"{table}: {n} rows")
            print(f"wrote {result.out} (EPSG:{ddl.SRID})")
            return 0
        connection, dsn = _connection(args)
        schemas = load_schemas(SCHEMA_DIR)
        if args.feeds:
            feeds = set(args.feeds.split(","))
            unknown = feeds - {s.feed for s in schemas}
            if unknown:
                raise SystemExit(f"no such feed: {', '.join(sorted(unknown))}")
            schemas = [s for s in schemas if s.feed in feeds]
        layers = write_project(args.out, args.title, connection, dsn, schemas)
        print(f"wrote {args.out}: {len(layers)} layers in {len({la.group for la in layers})} groups, connecting "
              f"with {connection.qgis()} (no password in the file)")
        if connection.service:
            print(f"QGIS needs the service {connection.service!r} in ~/.pg_service.conf and the password in ~/.pgpass "
                  f"(docs/ANALYSTS.md)")
        return 0
    except RefusedExport as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
