"""A supply's arrival, seen from the triggerer: the watcher that starts as-and-when feeds and the deferred wait
of scheduled ones, both looking at a real partner inbox on the real sshd (the tests' tree), through the Airflow
Connection ``csp_sftp`` (the provider's asyncssh hook, host key pinned) made from the tests' settings."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import subprocess
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest

from csp_observatory import arrival, connections, intake, sftp
from csp_observatory.arrival import LAST_FIRED, SupplyArrivalTrigger, SupplyReadyTrigger
from csp_observatory.schema_loading import schema_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders")]

SFTP_ENV = connections.env_name(connections.SFTP_CONN_ID)


@pytest.fixture(autouse=True)
def tests_sftp_connection(settings, monkeypatch) -> None:
    """``csp_sftp`` names the tests' sshd: the session's environment (.run/airflow.env) may hold the demo's."""
    for name, value in connections.env_vars(settings).items():
        monkeypatch.setenv(name, value)


def _pinned_to(settings, monkeypatch, **extra: Any) -> None:
    """Redefine ``csp_sftp`` with other extras (another host key, no check...)."""
    conn = connections.sftp_connection(settings)
    conn["extra"].update(extra)
    monkeypatch.setenv(SFTP_ENV, json.dumps(conn))

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


# --- the look itself: the provider's hook, the same reading as intake's, the pinned host key ---------------------

def test_a_look_reads_the_inbox_as_intake_does_through_the_project_client(partner_sftp, observatory_sftp,
                                                                         settings) -> None:
    # a complete supply, a month still uploading, a misnamed file, a folder and a link: every kind of entry
    _drop(partner_sftp, "209905")
    _drop(partner_sftp, "209906", FILES[:1])
    partner_sftp.putfo(io.BytesIO(b"half"), "/inbox/prc_offenders_209906.csv.gpg.part")
    partner_sftp.putfo(io.BytesIO(b"x" * 10), "/inbox/crime sept.xlsx")
    partner_sftp.mkdir("/inbox/a folder")
    partner_sftp.symlink("/inbox/crime sept.xlsx", "/inbox/prc_victims_209907.csv.gpg")
    schema = schema_for(FEED)

    def by_intake(previous: dict[str, int]) -> arrival.InboxLook:
        # what the run's own look (intake, on a paramiko client) makes of the same inbox
        return arrival.summarise(intake.find_ready_supplies(observatory_sftp, schema, settings, previous), previous)

    first = asyncio.run(arrival.look(FEED, {}))
    assert first == by_intake({})
    assert first.periods == [] and not first.settled        # sizes seen once: nothing is complete yet
    again = asyncio.run(arrival.look(FEED, first.sizes))
    assert again == by_intake(first.sizes)
    assert again.periods == ["209905"] and again.settled
    assert again.strays == ["a folder", "crime sept.xlsx", "prc_victims_209907.csv.gpg"]
    assert first.signature and again.signature != first.signature    # the strays, then the strays and the supply
    # read-only: the look moved nothing
    assert sorted(observatory_sftp.listdir(settings.inbox("police"))) == sorted(
        e.name for e in asyncio.run(arrival.list_folder(settings.inbox("police"))))
    assert len(observatory_sftp.listdir(settings.inbox("police"))) == 8


def test_an_empty_inbox_is_looked_at_and_fires_nothing(caplog) -> None:
    assert asyncio.run(arrival.look(FEED, {})) == arrival.InboxLook([], [], "", {}, True)

    async def scenario() -> list[dict[str, Any]]:
        async with _watching(_watcher()) as events:
            await asyncio.sleep(8 * POKE)
        return events

    with caplog.at_level(logging.WARNING, logger=arrival.__name__):
        assert asyncio.run(scenario()) == []
    # every look succeeded: no event because there was nothing, not because the inbox could not be read
    assert not [r for r in caplog.records if "could not look" in r.getMessage()]


def test_a_server_with_another_host_key_is_refused_and_fires_nothing(partner_sftp, settings, monkeypatch, tmp_path,
                                                                    caplog) -> None:
    _drop(partner_sftp, "209908")            # a complete supply: only the refusal keeps it from firing
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    assert other != connections.pinned_host_key(settings.sftp_host_key)
    _pinned_to(settings, monkeypatch, host_key=other)

    with pytest.raises(sftp.HostKeyMismatch, match="pinned in the Airflow connection 'csp_sftp'"):
        asyncio.run(arrival.look(FEED, {}))
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()

    async def first_event() -> dict[str, Any]:
        async for event in SupplyReadyTrigger(feed=FEED, deadline=soon, poke_s=POKE).run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    with caplog.at_level(logging.WARNING, logger=arrival.__name__):
        assert asyncio.run(asyncio.wait_for(first_event(), 30)) == {"status": "timeout", "feed": FEED, "periods": []}
    assert [r for r in caplog.records if "could not look" in r.getMessage() and "pinned" in r.getMessage()]

    # a connection that pins nothing is refused before it connects, whatever the server's key
    _pinned_to(settings, monkeypatch, host_key=None, no_host_key_check=True)
    with pytest.raises(ValueError, match="does not pin the SFTP server's host key"):
        asyncio.run(arrival.look(FEED, {}))

    # and the right pin sees the supply
    monkeypatch.setenv(SFTP_ENV, connections.env_vars(settings)[SFTP_ENV])
    seen = asyncio.run(arrival.look(FEED, {}))
    assert asyncio.run(arrival.look(FEED, seen.sizes)).periods == ["209908"]
