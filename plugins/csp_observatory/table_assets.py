"""The Airflow assets of the observatory's PostGIS tables: what a feed's ``load`` task emits, and what the refresh
DAG (``dags/refresh.py``) is scheduled on.

One asset per feed table, named ``<db schema>.<table>`` with a ``postgres://`` URI (the postgres provider's scheme:
``postgres://host:port/database/schema/table``). The host and database in the URI are logical (``csp-postgis``,
the database behind the connection ``csp_postgis``): the URI is fixed when the DAG files are parsed, which must
not read a connection (a secrets backend is a network call), and it names the same table in every deployment.
"""
from __future__ import annotations

from typing import Any, Final, Iterable

from airflow.sdk import Asset

from csp_observatory.schema import FeedFile, FeedSchema

#: The logical host and database of the URIs: the PostGIS database the connection ``csp_postgis`` points at.
HOST: Final = "csp-postgis:5432"
DATABASE: Final = "csp_observatory"
GROUP: Final = "postgis-tables"


def table_asset(schema: FeedSchema, feed_file: FeedFile) -> Asset:
    """The asset of one feed file's table."""
    name = f"{schema.db_schema}.{feed_file.table}"
    return Asset(name=name, uri=f"postgres://{HOST}/{DATABASE}/{schema.db_schema}/{feed_file.table}", group=GROUP,
                 extra={"feed": schema.feed})


def feed_assets(schema: FeedSchema) -> list[Asset]:
    """The assets of every table a feed loads: the load task's outlets."""
    return [table_asset(schema, f) for f in schema.files]


def summarised_assets(schemas: Iterable[FeedSchema]) -> list[Asset]:
    """The tables with counts by ward and month (depersonalised files with a location): the refresh DAG's schedule."""
    from csp_observatory.ward_month import has_ward_month

    return [table_asset(s, f) for s in schemas for f in s.files if has_ward_month(s, f)]


def event_extra(schema: FeedSchema, asset: Asset, loaded: list[dict[str, Any]]) -> dict[str, Any]:
    """The extra of a load's event on one table asset: the feed, the table and each supply loaded (its id, period
    and the rows it put in that table). ``loaded`` is ``pipeline.loaded_supplies`` of the run: empty when the run
    loaded nothing, so that downstream refreshes know there is nothing to do."""
    return {"feed": schema.feed, "table": asset.name,
            "loaded": [{"supply_id": s["supply_id"], "period": s["period"], "rows": int(s["rows"].get(asset.name, 0))}
                       for s in loaded if s.get("feed") == schema.feed]}
