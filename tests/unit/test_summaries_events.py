"""What a load's asset events carry (table_assets.event_extra) and which feeds the refresh DAG recounts from them
(summaries.feeds_in_events)."""
from __future__ import annotations

import pytest

from csp_observatory import summaries, table_assets
from csp_observatory.schema_loading import load_schemas

pytestmark = pytest.mark.unit


def _schema(feed: str):
    return next(s for s in load_schemas() if s.feed == feed)


def test_a_loads_event_names_its_feed_table_and_the_rows_each_supply_put_there() -> None:
    prc = _schema("police_recorded_crime")
    offences, offenders, _ = table_assets.feed_assets(prc)
    loaded = [{"supply_id": "police_recorded_crime/202609", "feed": "police_recorded_crime", "period": "202609",
               "rows": {"depersonalised.prc_offences": 20, "depersonalised.prc_offenders": 7}}]
    assert table_assets.event_extra(prc, offences, loaded) == {
        "feed": "police_recorded_crime", "table": "depersonalised.prc_offences",
        "loaded": [{"supply_id": "police_recorded_crime/202609", "period": "202609", "rows": 20}]}
    assert table_assets.event_extra(prc, offenders, loaded)["loaded"][0]["rows"] == 7
    # a run that loaded nothing (held, refused) says so: its events name no supply
    assert table_assets.event_extra(prc, offences, [])["loaded"] == []


def test_the_refresh_recounts_only_feeds_whose_events_name_a_loaded_supply() -> None:
    prc, asb = _schema("police_recorded_crime"), _schema("council_asb")
    loaded = [{"supply_id": "police_recorded_crime/202609", "feed": "police_recorded_crime", "period": "202609",
               "rows": {}}]
    extras = [table_assets.event_extra(prc, a, loaded) for a in table_assets.feed_assets(prc)]
    extras += [table_assets.event_extra(asb, a, []) for a in table_assets.feed_assets(asb)]     # held: nothing
    extras += [{"feed": "police_recorded_crime", "loaded": [{"period": "202608"}]}, None]
    assert summaries.feeds_in_events(extras) == {"police_recorded_crime": ["202608", "202609"]}
    assert summaries.feeds_in_events([]) == {}


def test_table_assets_use_the_postgres_providers_uri_form() -> None:
    from urllib.parse import urlsplit

    for schema in load_schemas():
        for asset, feed_file in zip(table_assets.feed_assets(schema), schema.files):
            u = urlsplit(asset.uri)
            assert u.scheme == "postgres" and u.port == 5432
            assert u.path.split("/")[1:] == [table_assets.DATABASE, schema.db_schema, feed_file.table]
            assert asset.name == f"{schema.db_schema}.{feed_file.table}"
