"""One DAG per partner feed, made from the feed schemas in ``include/schemas/``.

Adding a feed means adding a schema file, not code. Each DAG runs the observatory's stages in order:
wait for a complete supply on SFTP, collect, decrypt and verify, parse and validate, clean, geocode,
sanitise, load, and report and archive. The work itself lives in ``csp_observatory.pipeline``, which names each
stage from its module (``pipeline_collect``, ``pipeline_parse``, ``pipeline_geo``, ``pipeline_load``,
``pipeline_report``); between tasks a supply is its ``pipeline_supply.Manifest`` (one record from the download,
``intake_download.collect``, to the report, ``reporting.build_report``), passed as its work folder. This file only
wires tasks, and imports nothing heavy at parse time.

Core datasets (the guidance's Table 1) run monthly on their schema's schedule, and wait through the supply window
for the supply; peripheral datasets (Table 2) have no schedule: the supply's arrival in the partner's inbox starts
them (an Airflow asset with a watcher in the triggerer, ``csp_observatory.arrival``). Either way the wait is
deferred, so no worker slot is held while nothing has arrived.

The run's state follows the supply: ``verdict`` fails when a supply was not loaded (red) or loaded with
problems (amber), naming each and why in its log; ``stage_failed`` fails the run when any stage failed, even
when no report could be written (for example SFTP refused the login). A window with no supply ends with the
remaining tasks skipped.

A scheduled feed's supply is due ``supply_cycle.due_days`` after its period ends: each run carries an Airflow
deadline alert at that time (``csp_observatory.alerts``). If the run has not succeeded by then, the UI lists the
deadline as missed and the triggerer calls ``alerts.late_supply_alert``, which raises the late-supply alert (a log
line and a row in ``observatory.alerts`` naming the partner, the feed, the period and the due date) unless the
supply was loaded in time.

The stages reach SFTP and PostGIS through the Airflow Connections ``csp_sftp`` (host key pinned) and
``csp_postgis``, read with the providers' hooks (``csp_observatory.hooks``), never through the settings file's own
URL and keys. The ``load`` task emits an asset for each of the feed's tables (``csp_observatory.table_assets``),
with the supplies it loaded in the event's extra: ``dags/refresh.py`` refreshes the analysts' summaries on them.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from airflow.sdk import (DAG, AssetOrTimeSchedule, AsyncCallback, CronTriggerTimetable, DeadlineAlert,
                         DeadlineReference, Param, TriggerRule, dag, get_parsing_context, task)

from csp_observatory import alerts, metadata_docs, schema_docs, table_assets
from csp_observatory.arrival import SupplySensor, supply_asset
from csp_observatory.config import stage_queue, stage_queues
from csp_observatory.schema import FeedSchema
from csp_observatory.schema_loading import load_schemas

OWNER: Final = "observatory-data-engineering"
START: Final = datetime(2026, 1, 1, tzinfo=timezone.utc)
# A supply is waited for through its schema's window (supply_cycle.wait_hours); one that never arrives ends the
# run's remaining tasks as "skipped", not failed. The demo and tests (dag.test, one process) shorten the window,
# so a supply that never arrives ends a run in seconds, not in days.
SENSOR_TIMEOUT_S: Final = os.environ.get("CSP_SENSOR_TIMEOUT_S")
# How often the triggerer looks at an inbox: one SFTP listing, in the triggerer, holding no worker slot.
SENSOR_POKE_S: Final = float(os.environ.get("CSP_SENSOR_POKE_S", "60"))
# Transient failures (SFTP or PostGIS unreachable) are retried; the demo and tests shorten the wait.
RETRY_DELAY: Final = timedelta(seconds=float(os.environ.get("CSP_RETRY_DELAY_S", "300")))
# Where the loads cache each feed's partner caveats for the docs below: found once per parse, not once per feed.
DAG_DOCS_DIR: Final = metadata_docs.dag_docs_dir()
# TEST ONLY (tests/integration/test_late_supply.py): the late-supply deadline falls this many seconds after a run is
# queued, instead of the schema's due date after the run's logical date, so a test sees it fire in minutes (and a
# scheduled run waits only its window, not until the real due date): "N" for every feed, or "feed=N,feed=N" for
# those feeds only. Never set it in a deployment.
TEST_DUE_AFTER_S: Final = os.environ.get("CSP_TEST_DUE_AFTER_S")


def due_after_for_test(feed: str, spec: str | None = TEST_DUE_AFTER_S) -> timedelta | None:
    """The test-only due time of a feed's runs after they are queued (``CSP_TEST_DUE_AFTER_S``), or None."""
    if not spec:
        return None
    if "=" not in spec:
        return timedelta(seconds=float(spec))
    per_feed = dict(part.split("=", 1) for part in spec.split(","))
    return timedelta(seconds=float(per_feed[feed])) if feed in per_feed else None


def _services() -> Any:
    """SFTP and PostGIS for a stage, through the Airflow Connections ``csp_sftp`` and ``csp_postgis`` and the
    providers' hooks (``csp_observatory.hooks``); imported when a task runs, never at parse time."""
    from csp_observatory.hooks import HookServices

    return HookServices()


def schedule_of(schema: FeedSchema) -> object:
    """A peripheral feed runs when a supply arrives; a core feed on its monthly schedule, and also when a supply
    arrives (a late supply, a corrected re-send, the metadata file a first supply waits for are taken at once)."""
    arrival = supply_asset(schema.feed, SENSOR_POKE_S)
    if schema.on_arrival:
        return [arrival]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(schema.schedule, timezone="UTC"), assets=[arrival])


def late_supply_deadline(schema: FeedSchema, interval: timedelta | None) -> DeadlineAlert | None:
    """The deadline alert of a scheduled feed's runs: the supply is due ``interval`` after the run's logical date
    (``due_days`` after the period it waits for); None for a feed with no due date (as and when)."""
    if interval is None:
        return None
    reference = DeadlineReference.DAGRUN_LOGICAL_DATE
    if (test_interval := due_after_for_test(schema.feed)) is not None:
        reference, interval = DeadlineReference.DAGRUN_QUEUED_AT, test_interval
    return DeadlineAlert(reference=reference, interval=interval, name=alerts.alert_name(schema),
                         callback=AsyncCallback(alerts.late_supply_alert, kwargs={"feed": schema.feed}))


def build_feed_dag(schema: FeedSchema) -> DAG:
    """The DAG for one feed schema."""
    feed = schema.feed
    due_after = alerts.deadline_interval(schema, START)
    tables = table_assets.feed_assets(schema)

    @dag(
        dag_id=f"feed_{feed}",
        dag_display_name=f"Feed: {schema.title}",
        description=f"{schema.partner.agency}: {schema.title} (guidance {schema.guidance_section})",
        schedule=schedule_of(schema),
        start_date=START,
        catchup=False,
        max_active_runs=1,  # two runs of one feed must never take the same files
        # A new feed waits, paused, until its partner is onboarded (SFTP account, key) and an engineer unpauses it.
        is_paused_upon_creation=True,
        deadline=late_supply_deadline(schema, due_after),
        default_args={"owner": OWNER, "retries": 2, "retry_delay": RETRY_DELAY},
        # the partner's own caveats (section 3.4) from the last load's cache file: no database at parse time
        doc_md=schema_docs.doc_md(schema) + (metadata_docs.dag_doc(feed, DAG_DOCS_DIR) if DAG_DOCS_DIR else ""),
        params={"confirm_replace": Param(
            [], type="array", items={"type": "string"},
            description="Periods (e.g. 202609) whose re-send may replace most of the rows loaded for that period. "
                        "A supply that would do so is otherwise held for an engineer to confirm.")},
        tags=["feed", schema.dataset_type, schema.partner.id, *schema.tags],
    )
    def feed_dag() -> None:
        # Done when every file of a supply is in the inbox and no longer being written.
        waiting = SupplySensor(
            task_id="wait_for_supply", feed=feed, poke_interval=SENSOR_POKE_S, soft_fail=True,
            due_after_s=due_after.total_seconds() if due_after and due_after_for_test(feed) is None else None,
            timeout=float(SENSOR_TIMEOUT_S) if SENSOR_TIMEOUT_S else schema.wait_hours * 3600,
            doc_md="Waits, deferred to the triggerer, until every file of a supply is in the partner's inbox and "
                   "no longer being written; skipped when the window closes with nothing ready.")

        @task
        def collect(periods: list[str], run_id: str | None = None, ti: Any = None) -> list[str]:
            from csp_observatory import pipeline
            from csp_observatory.arrival import SETTLED_XCOM

            # the sizes the sensor saw hold: files still as it saw them are not waited on again
            settled = ti.xcom_pull(task_ids=waiting.task_id, key=SETTLED_XCOM) if ti is not None else None
            return pipeline.collect(feed, periods, run_id or "manual", services=_services(), settled=settled)

        @task
        def decrypt_and_verify(supplies: list[str]) -> list[str]:
            from csp_observatory import pipeline

            return pipeline.decrypt_and_verify(supplies, services=_services())

        @task
        def parse_and_validate(supplies: list[str]) -> list[str]:
            from csp_observatory import pipeline

            return pipeline.parse_and_validate(supplies, services=_services())

        @task
        def clean(supplies: list[str]) -> list[str]:
            from csp_observatory import pipeline

            return pipeline.clean(supplies, services=_services())

        @task
        def geocode(supplies: list[str]) -> list[str]:
            from csp_observatory import pipeline

            return pipeline.geocode(supplies, services=_services())

        @task
        def sanitise(supplies: list[str]) -> list[str]:
            from csp_observatory import pipeline

            return pipeline.sanitise(supplies, services=_services())

        # Emits an asset event for each of the feed's tables (dags/refresh.py refreshes the summaries on them); the
        # event's extra names the supplies the load committed, none when it loaded nothing.
        @task(outlets=tables)
        def load(supplies: list[str], params: dict | None = None, outlet_events: Any = None) -> list[str]:
            from csp_observatory import pipeline

            out = pipeline.load(supplies, confirmed=[str(p) for p in (params or {}).get("confirm_replace") or []],
                                services=_services())
            loaded = pipeline.loaded_supplies(out)
            for asset in tables:
                outlet_events[asset].extra = table_assets.event_extra(schema, asset, loaded)
            return out

        # Runs even when an earlier stage failed, so the partner always hears what happened and
        # plaintext never outlives the run.
        @task(trigger_rule=TriggerRule.ALL_DONE)
        def report_and_archive(supplies: list[str] | None) -> dict:
            from csp_observatory import pipeline

            return pipeline.report_and_archive(feed, supplies, services=_services())

        # No retries: the verdict is about the data, and the same data gives the same verdict.
        @task(retries=0)
        def verdict(outcome: dict) -> str:
            """Green passes; amber (loaded with problems) and red (not loaded) fail, saying which supply and why."""
            from airflow.sdk.exceptions import AirflowFailException

            from csp_observatory import pipeline

            try:
                return pipeline.verdict(outcome)
            except (pipeline.SupplyNotLoaded, pipeline.SupplyHasProblems) as bad:
                raise AirflowFailException(f"{type(bad).__name__}: {bad}") from None

        @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
        def stage_failed() -> None:
            """Runs only when a stage failed: the run must then fail too, not end green on the report task."""
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("a stage of this run failed: see the failed task's log")

        waited = waiting.output
        collected = collect(waited)
        decrypted = decrypt_and_verify(collected)
        stages = [parse_and_validate(decrypted)]
        for step in (clean, geocode, sanitise, load):
            stages.append(step(stages[-1]))
        done = report_and_archive(collected)
        stages[-1] >> done
        verdict(done)
        [waiting, collected, decrypted, *stages, done] >> stage_failed()

    built = feed_dag()
    # With the CeleryExecutor each task goes to the queue CSP_STAGE_QUEUES names for it (else Airflow's default
    # queue): a supply's work area is in the staging store every worker reaches, so any worker can run any stage.
    queues = stage_queues()
    for t in built.tasks:
        t.queue = stage_queue(t.task_id, t.queue, queues)
    return built


# A task's process parses this file to find its own DAG, and Airflow names that DAG in the parsing context: build
# only it there (Airflow's advice for generated DAGs), not all of them. The DAG processor names none: it builds every
# feed's DAG.
_PARSING_FOR: Final = get_parsing_context().dag_id
for _schema in load_schemas():
    if _PARSING_FOR is None or _PARSING_FOR == f"feed_{_schema.feed}":
        globals()[f"feed_{_schema.feed}"] = build_feed_dag(_schema)
