"""The summaries analysts read, refreshed after a feed's tables change: each layer's counts by ward, month and
category (``depersonalised.<table>_ward_month``, ``ward_month.refresh_ward_month``; docs/ANALYSTS.md).

``dags/refresh.py`` runs :func:`refresh` when a feed's load emits its tables' Airflow assets, for the feeds named
in those asset events only (:func:`feeds_in_events`). No Airflow import here: the DAG hands it the events' extras
and a ``pipeline_supply.Services``.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from csp_observatory.config import Settings, load_settings

log = logging.getLogger(__name__)


def feeds_in_events(extras: Iterable[Mapping[str, Any] | None]) -> dict[str, list[str]]:
    """The feeds whose load committed something, with the periods loaded, from the asset events' extras (what
    ``dags/feeds.py`` puts there: ``{"feed", "table", "loaded": [{"supply_id", "period", "rows"}]}``). An event of a
    load that loaded nothing (a held or refused supply) names no period and refreshes nothing."""
    feeds: dict[str, set[str]] = {}
    for extra in extras:
        extra = extra or {}
        periods = {str(s.get("period")) for s in extra.get("loaded") or [] if s.get("period")}
        if extra.get("feed") and periods:
            feeds.setdefault(str(extra["feed"]), set()).update(periods)
    return {feed: sorted(periods) for feed, periods in sorted(feeds.items())}


def refresh(feeds: Iterable[str], settings: Settings | None = None, services: Any = None) -> dict[str, dict[str, int]]:
    """Recount each named feed's layers by ward, month and category, one transaction per feed; returns the rows
    written per counts table, per feed (a feed with no counts table, a personalised one, writes none)."""
    from csp_observatory import pipeline_supply, ward_month
    from csp_observatory.schema_loading import schema_for

    svc = services if services is not None else pipeline_supply.SettingsServices(settings or load_settings())
    written: dict[str, dict[str, int]] = {}
    with svc.db() as conn:
        for feed in feeds:
            schema = schema_for(feed)
            try:
                written[feed] = ward_month.refresh_ward_month(conn, schema)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            log.info("%s: counts by ward and month refreshed: %s", feed, written[feed])
    return written
