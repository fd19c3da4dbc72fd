"""The analysts' summaries, refreshed when a feed's tables change: scheduled on the tables' Airflow assets, not on a
clock.

Each feed's ``load`` task emits an asset event for each of its tables (``csp_observatory.table_assets``), whose extra
names the supplies it loaded. This DAG runs on any of those events and recounts, by ward, month and category
(``depersonalised.<table>_ward_month``, docs/ANALYSTS.md), only the feeds those events name as having loaded
something (``csp_observatory.summaries``). Thin: the work is in ``summaries.refresh``. A run by hand refreshes the
feeds in its configuration's ``feeds`` (every summarised feed when none is given).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Final

from airflow.sdk import AssetAny, Param, dag, task

from csp_observatory.schema_loading import load_schemas
from csp_observatory.table_assets import summarised_assets

OWNER: Final = "observatory-data-engineering"
SCHEMAS: Final = load_schemas()
ASSETS: Final = summarised_assets(SCHEMAS)


@dag(
    dag_id="refresh_summaries",
    dag_display_name="Analysts: refresh counts by ward and month",
    description="Recounts a feed's layers by ward, month and category after its load emits the tables' assets",
    schedule=AssetAny(*ASSETS),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # two recounts of one counts table take turns anyway (ddl locks it); no queue of runs
    # It only follows loads, and a feed loads nothing until its partner is onboarded: no reason to start paused.
    is_paused_upon_creation=False,
    default_args={"owner": OWNER, "retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__ + "\n\nScheduled on the tables:\n\n" + "\n".join(f"- `{a.name}` (`{a.uri}`)" for a in ASSETS),
    params={"feeds": Param([], type="array", items={"type": "string"},
                           description="For a run by hand: the feeds to refresh (empty: every summarised feed).")},
    tags=["refresh", "analysts", "ward-month"],
)
def refresh_summaries() -> None:
    @task
    def refresh_counts(triggering_asset_events: Any = None, params: dict | None = None) -> dict:
        """Recount the feeds the triggering loads name (or, by hand, the configured ones); returns rows per table."""
        from csp_observatory import summaries
        from csp_observatory.hooks import HookServices

        events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
        if events:
            feeds = summaries.feeds_in_events(e.extra for e in events)
        else:
            feeds = {f: [] for f in ((params or {}).get("feeds") or sorted({s.feed for s in SCHEMAS
                                                                             if summarised_assets([s])}))}
        return summaries.refresh(feeds, services=HookServices())

    refresh_counts()


refresh_summaries()
