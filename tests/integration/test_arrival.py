"""A supply's arrival, seen from the triggerer: the watcher that starts as-and-when feeds and the deferred wait
of scheduled ones, both looking at a real partner inbox on the real sshd (the tests' tree)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest

from csp_observatory.arrival import LAST_FIRED, SupplyArrivalTrigger, SupplyReadyTrigger

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders")]

FEED = "police_recorded_crime"
FILES = ("prc_offences_{p}.csv.gpg", "prc_offenders_{p}.csv.gpg", "prc_victims_{p}.csv.gpg")
POKE = 0.3


def _drop(sftp: Any, period: str, files: tuple[str, ...] = FILES) -> None:
    # The triggers only look at names and sizes: the content need not be a real supply.
    for pattern in files:
        sftp.putfo(io.BytesIO(b"not looked at\n" * 20), f"/inbox/{pattern.format(p=period)}")


async def _until(events: list[dict[str, Any]], count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(events) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _watching(trigger: SupplyArrivalTrigger) -> AsyncIterator[list[dict[str, Any]]]:
    """Run a watcher as the triggerer does, collecting the payloads it fires, until the block ends."""
    events: list[dict[str, Any]] = []

    async def consume() -> None:
        async for event in trigger.run():
            events.append(event.payload)

    task = asyncio.create_task(consume())
    try:
        yield events
    finally:
        task.cancel()


def _watcher(store: Any = None) -> SupplyArrivalTrigger:
    trigger = SupplyArrivalTrigger(feed=FEED, poke_s=POKE)
    if store is not None:
        trigger.asset_state_store = store  # type: ignore[attr-defined]
    return trigger


class _RememberingStore:
    """Stands in for the asset state store Airflow gives a watcher in a running triggerer (aget/aset)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


def test_the_watcher_fires_once_per_arrival_and_for_files_to_refuse(partner_sftp) -> None:
    store = _RememberingStore()

    async def scenario() -> list[dict[str, Any]]:
        async with _watching(_watcher(store)) as events:
            await asyncio.sleep(8 * POKE)
            assert events == [], "an empty inbox started a run"
            # two of three files: not a supply yet
            await asyncio.to_thread(_drop, partner_sftp, "209901", FILES[:2])
            await asyncio.sleep(8 * POKE)
            assert events == [], "an incomplete supply started a run"
            await asyncio.to_thread(_drop, partner_sftp, "209901", FILES[2:])
            await _until(events, 1, 15)
            assert [e["periods"] for e in events] == [["209901"]]
            # the same files, looked at again and again: no second run
            await asyncio.sleep(10 * POKE)
            assert len(events) == 1
            # a second month arrives while the first is still there: one more run
            await asyncio.to_thread(_drop, partner_sftp, "209902")
            await _until(events, 2, 15)
            assert events[1]["periods"] == ["209901", "209902"]
            # a misnamed file is an arrival too: the run that starts refuses it with a reason for the partner
            await asyncio.to_thread(partner_sftp.putfo, io.BytesIO(b"x" * 10), "/inbox/crime sept.xlsx")
            await _until(events, 3, 15)
            assert events[2]["refused"] == 1
            await asyncio.sleep(6 * POKE)
            assert len(events) == 3
        return events

    events = asyncio.run(scenario())
    assert store.values[LAST_FIRED] == events[-1]["arrival"]

    # A triggerer that restarts gets a new trigger, with the store: the files a run is taking fire nothing.
    async def restarted() -> list[dict[str, Any]]:
        async with _watching(_watcher(store)) as again:
            await asyncio.sleep(10 * POKE)
        return again

    assert asyncio.run(restarted()) == []


def test_the_watcher_fires_again_when_a_partner_re_sends_the_same_file_names(partner_sftp, observatory_sftp,
                                                                             settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with _watching(_watcher()) as events:
            await asyncio.to_thread(_drop, partner_sftp, "209903")
            await _until(events, 1, 15)
            # the run takes the supply away (as archive does), then the partner sends a corrected month
            inbox = settings.inbox("police")
            for name in await asyncio.to_thread(observatory_sftp.listdir, inbox):
                await asyncio.to_thread(observatory_sftp.remove, f"{inbox}/{name}")
            await asyncio.sleep(4 * POKE)
            await asyncio.sleep(1.1)      # a new modification time, to the second
            await asyncio.to_thread(_drop, partner_sftp, "209903")
            await _until(events, 2, 15)
        return events

    events = asyncio.run(scenario())
    assert [e["periods"] for e in events] == [["209903"], ["209903"]]
    assert events[0]["arrival"] != events[1]["arrival"]


def test_the_deferred_wait_ends_with_the_supply_or_with_its_window(partner_sftp) -> None:
    def first_event(trigger: SupplyReadyTrigger) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async for event in trigger.run():
                return event.payload
            raise AssertionError("the trigger ended without an event")

        return asyncio.run(asyncio.wait_for(go(), 30))

    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    started = time.monotonic()
    assert first_event(SupplyReadyTrigger(feed=FEED, deadline=soon, poke_s=POKE)) == {
        "status": "timeout", "feed": FEED, "periods": []}
    assert time.monotonic() - started < 15

    _drop(partner_sftp, "209904")
    later = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    event = first_event(SupplyReadyTrigger(feed=FEED, deadline=later, poke_s=POKE))
    assert event["status"] == "ready" and event["periods"] == ["209904"]


def test_triggers_serialise_to_what_the_triggerer_rebuilds_them_from() -> None:
    import importlib

    for trigger in (SupplyArrivalTrigger(feed=FEED, poke_s=5.0),
                    SupplyReadyTrigger(feed=FEED, deadline="2099-01-01T00:00:00+00:00", poke_s=5.0)):
        path, kwargs = trigger.serialize()
        module, _, name = path.rpartition(".")
        rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
        assert type(rebuilt) is type(trigger) and rebuilt.serialize() == (path, kwargs)
