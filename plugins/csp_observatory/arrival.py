"""Knowing when a supply has arrived, without holding a worker: the triggers and sensor the feed DAGs wait with.

Core datasets (the guidance's Table 1) are supplied monthly: their DAG runs on a schedule and its first task,
:class:`SupplySensor`, waits through the supply window for every file of a supply to be in the partner's inbox. It
is deferrable: while it waits, no worker slot is held; the triggerer runs :class:`SupplyReadyTrigger`, which looks
at the inbox with one SFTP listing per look.

Peripheral datasets (Table 2) come as and when: their DAG has no schedule at all. It is scheduled on an Airflow
asset (:func:`supply_asset`) whose watcher, :class:`SupplyArrivalTrigger`, runs in the triggerer and fires once for
each new arrival in the partner's inbox (a complete supply, or a file the observatory must refuse), so the DAG runs
when there is something to take or to refuse, and never otherwise.

Both triggers only look: they never move, download or quarantine anything. The DAG run does that, once, in its
own tasks, so what a partner sees never depends on how often the triggerer looked. They look through the Airflow
Connection ``csp_sftp`` with the provider's asyncssh hook (``hooks.PinnedSFTPHookAsync``, host key pinned), on the
triggerer's event loop: no thread per look. What the listing means is intake's to decide (``intake.plan_supplies``,
the same rule as the run's own look), so this module only lists and summarises.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Final

from airflow.sdk import Asset, AssetWatcher
from airflow.sdk.bases.sensor import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from csp_observatory.intake import ReadySupplies
    from csp_observatory.sftp import RemoteFile

log = logging.getLogger(__name__)
# asyncssh logs each connection, channel and SFTP open at INFO (about 15 lines per look); the triggerer looks every
# few minutes for every feed, so its log would be mostly asyncssh. Its warnings and errors still show.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

#: The key under which a watcher keeps the last arrival it fired for, in the asset's state store.
LAST_FIRED: Final = "last_arrival"
#: The XCom key under which the sensor hands the collect task the sizes it saw hold (``pipeline.ReadyLook``).
SETTLED_XCOM: Final = "settled_sizes"


@dataclass(frozen=True)
class InboxLook:
    """What one look at a feed's inbox found: the ready periods, the files to refuse, and the sizes seen."""

    periods: list[str]
    strays: list[str]
    signature: str          # names, sizes and times of every ready or refusable file; "" when there are none
    sizes: dict[str, int]
    settled: bool           # nothing in the inbox changed size, appeared or went since the previous look
    # name -> [size, mtime] of each file whose size held since the previous look (``ReadySupplies.settled``): the
    # arrival event carries it, so the run's sensor need not wait for the sizes to hold again (arrival_certificate)
    certified: dict[str, list[int]] = field(default_factory=dict)


def summarise(ready: ReadySupplies, previous_sizes: dict[str, int] | None) -> InboxLook:
    """What one look found, from intake's reading of the listing (``previous_sizes``: the last look's sizes)."""
    files = sorted((f.remote_name, f.size, f.mtime) for s in ready.supplies for f in s.files)
    strays = sorted(ready.strays)
    listed = files + [(name, ready.sizes.get(name, -1), 0) for name in strays]
    signature = hashlib.sha256(json.dumps(listed).encode()).hexdigest() if listed else ""
    settled = previous_sizes is not None and ready.sizes == previous_sizes
    return InboxLook(sorted(s.period for s in ready.supplies), strays, signature, dict(ready.sizes), settled,
                     dict(ready.settled))


async def list_folder(folder: str, conn_id: str | None = None) -> list[RemoteFile]:
    """Every entry of a remote ``folder`` as ``sftp.list_entries`` gives it (sorted, links and folders as such),
    read through the Airflow Connection ``conn_id`` (default ``csp_sftp``) with one SSH session, closed after.

    Raises ``sftp.HostKeyMismatch`` when the server does not prove it holds the pinned host key.
    """
    import asyncssh

    from csp_observatory import sftp
    from csp_observatory.connections import SFTP_CONN_ID
    from csp_observatory.hooks import PinnedSFTPHookAsync

    conn_id = conn_id or SFTP_CONN_ID
    try:
        async with PinnedSFTPHookAsync(sftp_conn_id=conn_id).get_managed_conn() as client:
            names = await client.readdir(folder)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise sftp.HostKeyMismatch(f"the SFTP server did not present the host key pinned in the Airflow connection "
                                   f"{conn_id!r}: refusing to look ({exc}; the server was replaced or someone is in "
                                   f"between; check the connection's host_key)") from exc
    # readdir, unlike paramiko's listdir_attr, returns the folder's own "." and ".."
    entries = [sftp.RemoteFile(str(n.filename), int(n.attrs.size or 0), int(n.attrs.mtime or 0),
                               sftp.entry_kind(n.attrs.permissions))
               for n in names if n.filename not in (".", "..")]
    return sorted(entries, key=lambda f: f.name)


async def look(feed: str, previous_sizes: dict[str, int], settings: Any = None,
               conn_id: str | None = None) -> InboxLook:
    """One read-only look at the inbox of ``feed``'s partner: a single listing through the Airflow Connection
    ``conn_id`` (default ``csp_sftp``), awaited on the caller's event loop.

    A file is taken as complete when its size held between two looks (``previous_sizes``: the sizes the last look
    returned, ``{}`` for a first look), as intake decides.
    """
    def where() -> tuple[Any, Any, tuple[Any, ...], str]:
        # The settings and the schemas are files on disk, and the first look imports the hooks (the providers):
        # both off the event loop, so that the triggerer's other triggers never wait on them.
        from csp_observatory import hooks, intake  # noqa: F401
        from csp_observatory.config import load_settings
        from csp_observatory.schema_loading import schema_for

        s = settings or load_settings()
        schema = schema_for(feed)
        partner_id = s.supplier(feed, schema.partner.id)
        return s, schema, intake.sibling_schemas(schema, s), partner_id

    s, schema, siblings, partner_id = await asyncio.to_thread(where)
    listing = await list_folder(s.inbox(partner_id), conn_id)
    from csp_observatory import intake      # imported by where(), in its thread

    ready = intake.plan_supplies(schema, listing, previous_sizes, siblings, partner_id)
    for period, why in ready.waiting.items():
        log.info("%s/%s not taken yet: %s", feed, period, why)
    return summarise(ready, previous_sizes)


class SupplyReadyTrigger(BaseTrigger):
    """Fires when a complete supply of ``feed`` is in the inbox, or with ``status: timeout`` at ``deadline``.

    The deadline is the trigger's own, not only Airflow's task timeout, so a run tested in one process
    (``dag.test()`` runs triggers inline) ends when the window closes, as it would with a triggerer.
    """

    def __init__(self, feed: str, deadline: str, poke_s: float = 60.0) -> None:
        super().__init__()
        self.feed = feed
        self.deadline = deadline          # ISO 8601, UTC
        self.poke_s = poke_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"feed": self.feed, "deadline": self.deadline, "poke_s": self.poke_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        sizes: dict[str, int] = {}
        while True:
            try:
                seen = await look(self.feed, sizes)
            except Exception as exc:          # SFTP down for a moment: look again, the window is long
                log.warning("could not look at the inbox of %s: %s", self.feed, exc)
                seen = None
            if seen is not None:
                if seen.periods:
                    yield TriggerEvent({"status": "ready", "feed": self.feed, "periods": seen.periods})
                    return
                sizes = seen.sizes
            left = (deadline - datetime.now(timezone.utc)).total_seconds()
            if left <= 0:
                yield TriggerEvent({"status": "timeout", "feed": self.feed, "periods": []})
                return
            await asyncio.sleep(min(self.poke_s, left))


class SupplyArrivalTrigger(BaseEventTrigger):
    """An asset watcher on one feed's inbox: fires once per new arrival, so the feed's DAG runs when it must.

    An arrival is a change in the set of complete supplies and refusable files (a misnamed file, a link...), told
    apart by their names, sizes and modification times, judged when the inbox has held still between two looks. What it last fired for is kept in the asset's state store
    (Airflow 3.3), so a triggerer restart does not start a second run for files a run is already taking; a
    partner re-sending the same file name later changes its time, and fires again.
    """

    def __init__(self, feed: str, poke_s: float = 30.0) -> None:
        super().__init__()
        self.feed = feed
        self.poke_s = poke_s
        self._last_fired: str | None = None   # when no state store is attached (tests of the trigger alone)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"feed": self.feed, "poke_s": self.poke_s})

    async def _last(self) -> str | None:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return self._last_fired
        try:
            return await store.aget(LAST_FIRED)       # type: ignore[no-any-return]
        except Exception as exc:                     # the store is an optimisation against duplicate runs
            log.warning("asset state store unavailable for %s: %s", self.feed, exc)
            return self._last_fired

    async def _remember(self, signature: str) -> None:
        self._last_fired = signature
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            try:
                await store.aset(LAST_FIRED, signature)
            except Exception as exc:
                log.warning("could not record the arrival for %s: %s", self.feed, exc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        sizes: dict[str, int] = {}
        while True:
            try:
                seen = await look(self.feed, sizes)
            except Exception as exc:
                log.warning("could not look at the inbox of %s: %s", self.feed, exc)
                seen = None
            if seen is not None:
                sizes = seen.sizes
                # Only an inbox that held still between two looks is judged: mid-upload, a supply's first files
                # would read as an arrival of their own, and a restarted trigger's first look as a new one.
                if seen.settled and seen.signature and seen.signature != await self._last():
                    await self._remember(seen.signature)
                    # the sizes it saw hold over poke_s, for the sensor of the run this starts (arrival_certificate)
                    yield TriggerEvent({"feed": self.feed, "periods": seen.periods, "refused": len(seen.strays),
                                        "arrival": seen.signature, "settled": seen.certified,
                                        "held_s": self.poke_s})
            await asyncio.sleep(self.poke_s)


def supply_asset(feed: str, poke_s: float = 30.0) -> Asset:
    """The asset "a supply of ``feed`` is waiting in its partner's inbox", watched by :class:`SupplyArrivalTrigger`.

    The URI names the feed, not the partner: which inbox serves the feed is the partner registry's to say
    (scripts/partner), read by the watcher when it looks, never fixed when the DAG file is parsed.
    """
    return Asset(
        name=f"supply_{feed}",
        uri=f"sftp://csp-observatory/supplies/{feed}",
        group="partner-supplies",
        watchers=[AssetWatcher(name=f"arrival_{feed}", trigger=SupplyArrivalTrigger(feed=feed, poke_s=poke_s))],
    )


#: How long a run started by an arrival (or by hand) waits: the watcher fired for a settled inbox, so what is
#: there is all there is; a short grace covers a partner still renaming the last file.
ARRIVAL_WAIT_S: Final = 600.0


def _connections() -> Any:
    """SFTP through the Airflow Connection csp_sftp, as the feed's other tasks (the triggers reach the same
    connection through the provider's asyncssh hook instead: ``look``)."""
    from csp_observatory.hooks import HookServices

    return HookServices()


def wait_until(now: datetime, window_s: float, run_type: str | None, logical_date: datetime | None,
               due_after_s: float | None = None) -> datetime:
    """When a run's wait for its supply ends: after the feed's window for a scheduled run, at most
    :data:`ARRIVAL_WAIT_S` for any other (an arrival or a person started it).

    A scheduled run also waits at least until its supply is due (``logical_date + due_after_s``): Airflow drops a
    run's deadline when the run succeeds before it, so a run that gave up earlier would silence the late-supply
    alert. The shipped schemas' windows already outlast their due dates, so for them this changes nothing.
    """
    # DagRunType is a str enum: an asset-triggered or manual run is anything but "scheduled"
    if run_type is not None and run_type != "scheduled":
        return now + timedelta(seconds=min(window_s, ARRIVAL_WAIT_S))
    end = now + timedelta(seconds=window_s)
    if due_after_s is not None and logical_date is not None:
        # a minute past the due time, so the scheduler has judged the deadline before the run can end
        end = max(end, logical_date + timedelta(seconds=due_after_s + 60))
    return end


def arrival_certificate(context: Any, feed: str) -> tuple[dict[str, list[int]], float] | None:
    """What the arrival watcher certified for the run it started: the files whose size it saw hold (name -> [size,
    mtime]) and over how many seconds, from the newest of the run's triggering asset events for ``feed``; None for a
    run no arrival started (scheduled, manual, ``dag.test``) or an event without them."""
    events = context.get("triggering_asset_events") if hasattr(context, "get") else None
    mine = [e for evs in (events or {}).values() for e in evs
            if ((e.extra or {}).get("payload") or {}).get("feed") == feed]
    if not mine:
        return None
    payload = max(mine, key=lambda e: e.timestamp).extra["payload"]
    settled, held_s = payload.get("settled"), payload.get("held_s")
    if not isinstance(settled, dict) or not isinstance(held_s, (int, float)):
        return None
    return settled, float(held_s)


class SupplySensor(BaseSensorOperator):
    """Wait for a complete supply of ``feed``; returns its periods (the XCom the run's later tasks take).

    It looks once in the worker (quarantining what the partner must hear about), then defers to the triggerer
    until a supply is ready or the window closes: a closed window skips the run's remaining tasks. A scheduled
    run's window is ``timeout`` (the feed's supply window); a run an arrival or a person started waits at most
    :data:`ARRIVAL_WAIT_S`, so that it never holds up the feed's next run for days.
    """

    def __init__(self, *, feed: str, deferrable: bool = True, due_after_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feed = feed
        self.deferrable = deferrable
        # seconds from a scheduled run's logical date to its supply's due time (the late-supply deadline)
        self.due_after_s = due_after_s

    def _ready(self, context: Any, certificate: tuple[dict[str, list[int]], float] | None = None) -> list[str]:
        """One look in the worker (quarantining strays); when a supply is ready, the sizes it saw hold go to the
        collect task (XCom :data:`SETTLED_XCOM`), so that it need not wait for them to hold again. ``certificate``:
        what the arrival watcher saw hold (:func:`arrival_certificate`), so that this look need not wait either."""
        from csp_observatory import pipeline

        settled, held_s = certificate or (None, 0.0)
        seen = pipeline.ready_look(self.feed, services=_connections(), settled=settled, held_s=held_s)
        ti = context.get("ti") if hasattr(context, "get") else None
        if seen.periods and ti is not None:
            ti.xcom_push(key=SETTLED_XCOM, value=seen.settled)
        return seen.periods

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        periods = self._ready(context)
        return PokeReturnValue(is_done=bool(periods), xcom_value=periods)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        periods = self._ready(context, arrival_certificate(context, self.feed))
        if periods:
            return periods
        run = context.get("dag_run")
        now = datetime.now(timezone.utc)
        deadline = wait_until(now, float(self.timeout), getattr(run, "run_type", None),
                              getattr(run, "logical_date", None), self.due_after_s)
        window = (deadline - now).total_seconds()
        self.defer(trigger=SupplyReadyTrigger(feed=self.feed, deadline=deadline.isoformat(),
                                              poke_s=float(self.poke_interval)),
                   method_name="execute_complete",
                   # Airflow's own limit, a little after the trigger's: the trigger ends the wait itself
                   timeout=timedelta(seconds=window + 3 * float(self.poke_interval) + 60))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        if not event or event.get("status") != "ready":
            raise AirflowSkipException(f"no complete supply of {self.feed} arrived within the window")
        # Look again in the worker: intake quarantines strays here, and the supply must still be there.
        periods = self._ready(context)
        if not periods:
            raise AirflowSkipException(f"the supply of {self.feed} seen by the trigger is no longer ready")
        return periods
