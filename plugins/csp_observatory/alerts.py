"""Late or missing supplies: when a scheduled feed's supply is due, and the alert raised when it is not loaded by then.

A core feed's DAG runs on its schedule (the 1st of the month) and waits for the previous period's supply. The
supply is due ``supply_cycle.due_days`` after its period ends (:meth:`FeedSchema.supply_due`). ``dags/feeds.py``
gives each scheduled feed's DAG an Airflow deadline alert at that time (the run's logical date plus
:func:`deadline_interval`); when a run is still unfinished then, or finished failed, Airflow marks the deadline
missed (the UI's *Deadlines* and the dashboard's *Missed Deadlines* show it, named by :func:`alert_name`) and the
triggerer calls :func:`late_supply_alert`. That callback looks in ``observatory.supplies``: a supply loaded by its
due time raises nothing; otherwise the alert naming the partner, the supplier, the feed, the period and the due
date is logged and recorded once in ``observatory.alerts`` (this module's own table).

No Airflow import at module level: the logic is tested without it (the callback alone imports the hooks).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from csp_observatory.schema import FeedSchema
from csp_observatory.schema_loading import schema_for

log = logging.getLogger(__name__)

ALERTS_TABLE: Final = "observatory.alerts"
#: The kind of alert this module raises (the table may hold other kinds later).
LATE_SUPPLY: Final = "late_supply"
#: How many of a schedule's fires :func:`deadline_interval` compares (a year of a monthly feed, twice).
FIRES_COMPARED: Final = 24


@dataclass(frozen=True)
class LateSupply:
    """A supply not loaded by its due time: who should have sent what, and when."""

    feed: str
    title: str
    partner: str        # the schema's partner id (its SFTP account)
    agency: str         # the schema's source agency, e.g. "Local police force"
    supplier: str       # the partner the registry says supplies the feed now (may differ from ``partner``)
    period: str
    due: datetime
    dag_id: str = ""
    run_id: str = ""

    @property
    def supply_id(self) -> str:
        return f"{self.feed}/{self.period}"

    def message(self) -> str:
        """One line an engineer can act on."""
        who = self.agency if self.supplier == self.partner else f"{self.agency}, now supplied by {self.supplier}"
        return (f"Late supply: {self.title} ({self.feed}) for {self.period} from partner {self.partner} ({who}) "
                f"was due by {self.due:%Y-%m-%d %H:%M} UTC and has not been loaded")


def alert_name(schema: FeedSchema) -> str:
    """The deadline alert's name, as the Airflow UI lists it beside each missed run (at most 250 characters)."""
    return (f"Late supply: {schema.title} from partner {schema.partner.id} ({schema.partner.agency}), "
            f"due {schema.due_days} days after its period")[:250]


def period_before(schema: FeedSchema, run_date: datetime) -> str:
    """The period a scheduled run starting at ``run_date`` waits for: the one holding the day before it (a run on
    the 1st of October waits for September)."""
    return (run_date.astimezone(timezone.utc).date() - timedelta(days=1)).strftime(schema.period_format)


def run_due(schema: FeedSchema, run_date: datetime) -> tuple[str, datetime | None]:
    """The period a scheduled run waits for and when its supply is due (None: the feed has no due date)."""
    period = period_before(schema, run_date)
    return period, schema.supply_due(period)


def deadline_interval(schema: FeedSchema, start: datetime, fires: int = FIRES_COMPARED) -> timedelta | None:
    """How long after a scheduled run's logical date its supply is due, or None for a feed with no due date.

    Airflow's deadline is the logical date plus one fixed interval. For a monthly feed on a monthly schedule it is
    the same for every run; where it is not (say a yearly period on a monthly schedule), the latest one is taken, so
    the alert never fires before a supply is due (the callback then judges by the run's own due time).
    """
    from croniter import croniter

    if schema.on_arrival or schema.due_days is None:
        return None
    it = croniter(schema.schedule, start.astimezone(timezone.utc))
    gaps = []
    for _ in range(fires):
        fire = it.get_next(datetime)
        due = run_due(schema, fire)[1]
        if due is not None:
            gaps.append(due - fire)
    return max(gaps) if gaps else None


def supplier_of(schema: FeedSchema, settings: Any | None) -> str:
    """The partner the registry says supplies the feed, else the schema's partner (never raises)."""
    try:
        if settings is not None:
            return str(settings.supplier(schema.feed, schema.partner.id))
    except Exception as exc:       # noqa: BLE001  (two active suppliers: the alert still names the schema's)
        log.warning("could not tell who supplies %s: %s", schema.feed, exc)
    return schema.partner.id


def late_supply(schema: FeedSchema, period: str, due: datetime, settings: Any | None = None, dag_id: str = "",
                run_id: str = "") -> LateSupply:
    """The alert for ``schema``'s supply of ``period``, due at ``due``."""
    return LateSupply(feed=schema.feed, title=schema.title, partner=schema.partner.id, agency=schema.partner.agency,
                      supplier=supplier_of(schema, settings), period=period, due=due.astimezone(timezone.utc),
                      dag_id=dag_id, run_id=run_id)


def ensure_table(conn: Any) -> None:
    """Create ``observatory.alerts`` if missing (no commit). One row per alert kind and supply."""
    with conn.cursor() as cur:
        # Only what is missing: a table that exists may belong to a role that set it up, not to this one.
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (ALERTS_TABLE,))
        if cur.fetchone()[0]:
            return
        cur.execute("SELECT to_regnamespace('observatory') IS NULL")
        if cur.fetchone()[0]:
            cur.execute("CREATE SCHEMA observatory")
        cur.execute(f"""
            CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (
                kind text NOT NULL,
                supply_id text NOT NULL,
                feed text NOT NULL,
                period text NOT NULL,
                partner text NOT NULL,
                supplier text NOT NULL,
                due_at timestamptz NOT NULL,
                message text NOT NULL,
                dag_id text NOT NULL DEFAULT '',
                run_id text NOT NULL DEFAULT '',
                raised_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (kind, supply_id)
            )""")
        cur.execute(f"COMMENT ON TABLE {ALERTS_TABLE} IS %s",
                    ("Alerts raised for engineers, e.g. a supply not loaded by its due date (csp_observatory.alerts)",))


def loaded_at(conn: Any, supply_id: str) -> datetime | None:
    """When a supply was loaded (``observatory.supplies``), or None if it never was."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supplies') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT loaded_at FROM observatory.supplies WHERE supply_id = %s AND loaded_at IS NOT NULL",
                    (supply_id,))
        row = cur.fetchone()
    return row[0] if row else None


def record(conn: Any, alert: LateSupply) -> bool:
    """Record the alert (no commit); False when this supply's late alert was recorded before (a second run)."""
    ensure_table(conn)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {ALERTS_TABLE} (kind, supply_id, feed, period, partner, supplier, due_at, message, dag_id, "
            "run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (kind, supply_id) DO NOTHING",
            (LATE_SUPPLY, alert.supply_id, alert.feed, alert.period, alert.partner, alert.supplier, alert.due,
             alert.message(), alert.dag_id, alert.run_id))
        return bool(cur.rowcount)


def check_supply(conn: Any, alert: LateSupply) -> bool:
    """Raise ``alert`` unless its supply was loaded by the due time: log it and record it (committed).
    Returns whether the supply is late."""
    when = loaded_at(conn, alert.supply_id)
    if when is not None and when <= alert.due:
        log.info("%s was loaded on %s, by its due time: no late-supply alert", alert.supply_id, when)
        return False
    log.warning("%s", alert.message())
    if not record(conn, alert):
        log.info("the late-supply alert for %s was recorded before", alert.supply_id)
    conn.commit()
    return True


def _as_datetime(value: Any) -> datetime | None:
    """A datetime from the callback's context (a datetime, or ISO text once serialised)."""
    if value is None or value == "":
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def alert_for_run(feed: str, context: dict[str, Any] | None, settings: Any | None = None) -> LateSupply | None:
    """The late-supply alert a missed deadline stands for, from the deadline callback's context; None when the run
    has no logical date (an asset-triggered run waits for no particular period)."""
    context = context or {}
    run = context.get("dag_run") or {}
    logical = _as_datetime(run.get("logical_date"))
    if logical is None:
        log.info("run %s of %s has no logical date: it waits for no particular period", run.get("dag_run_id"), feed)
        return None
    schema = schema_for(feed)
    period, due = run_due(schema, logical)
    # The deadline's own time is the due time feeds.py gave it; the schema's is the fallback.
    due = _as_datetime((context.get("deadline") or {}).get("deadline_time")) or due
    if due is None:
        return None
    return late_supply(schema, period, due, settings, dag_id=str(run.get("dag_id") or f"feed_{feed}"),
                       run_id=str(run.get("dag_run_id") or run.get("run_id") or ""))


def raise_if_late(feed: str, context: dict[str, Any] | None, settings: Any | None = None,
                  services: Any | None = None) -> str:
    """The deadline callback's work (blocking): the alert's message if the supply is late, else why not.
    ``services`` (``pipeline_supply.Services``) gives the database; without it, the settings'
    (``pipeline_supply.SettingsServices``)."""
    from csp_observatory.config import load_settings

    settings = settings or load_settings()
    alert = alert_for_run(feed, context, settings)
    if alert is None:
        return f"{feed}: no period to check"
    if services is None:
        from csp_observatory.pipeline_supply import SettingsServices

        services = SettingsServices(settings)
    with services.db() as conn:
        late = check_supply(conn, alert)
    return alert.message() if late else f"{alert.supply_id} was loaded by {alert.due:%Y-%m-%d %H:%M} UTC"


async def late_supply_alert(feed: str, context: dict[str, Any] | None = None) -> str:
    """Airflow's deadline callback (runs in the triggerer, hence async): raise the late-supply alert for the run's
    period unless its supply was loaded by the due time. Its return value is kept as the callback's output."""
    # In Airflow (the triggerer): PostGIS through the connection csp_postgis, as the DAGs' tasks reach it.
    from csp_observatory.hooks import HookServices

    return await asyncio.to_thread(raise_if_late, feed, context, None, HookServices())
