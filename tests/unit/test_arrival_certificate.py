"""The arrival watcher's certificate reaches the run it starts: the asset event's sizes that held (``arrival.
arrival_certificate``), which the sensor's look trusts instead of waiting a poll interval for them to hold again,
but only when the watcher's two looks were at least that interval apart (``pipeline_collect.ready_look``)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from csp_observatory import arrival, intake, intake_quarantine, pipeline_collect
from csp_observatory.config import load_settings

pytestmark = pytest.mark.unit

FEED = "police_recorded_crime"
SETTLED = {"prc_offences_209901.csv.gpg": [100, 1000]}


def _event(payload: dict[str, Any] | None, minute: int) -> SimpleNamespace:
    extra = {"from_trigger": True, "payload": payload} if payload is not None else {}
    return SimpleNamespace(extra=extra, timestamp=datetime(2026, 11, 30, 12, minute, tzinfo=timezone.utc))


def test_the_newest_event_of_the_feed_gives_the_certificate():
    older = {"feed": FEED, "settled": {"old.csv.gpg": [1, 1]}, "held_s": 60.0}
    newer = {"feed": FEED, "settled": SETTLED, "held_s": 60.0}
    other = {"feed": "bus_incidents", "settled": {"x": [1, 1]}, "held_s": 60.0}
    context = {"triggering_asset_events": {"asset-a": [_event(newer, 5), _event(older, 1)],
                                           "asset-b": [_event(other, 9)]}}
    assert arrival.arrival_certificate(context, FEED) == (SETTLED, 60.0)


@pytest.mark.parametrize("context", [
    {},                                                                    # dag.test, a scheduled or manual run
    {"triggering_asset_events": {}},
    {"triggering_asset_events": {"a": [_event(None, 1)]}},                  # an event from no trigger
    {"triggering_asset_events": {"a": [_event({"feed": FEED, "periods": ["209901"]}, 1)]}},   # an older watcher's
])
def test_no_certificate_without_an_arrival_event_that_carries_one(context):
    assert arrival.arrival_certificate(context, FEED) is None


@pytest.fixture
def seen(monkeypatch) -> dict[str, Any]:
    """ready_look with SFTP and the quarantine stood in for: what it asked intake to trust."""
    got: dict[str, Any] = {}

    def find(client, schema, settings, previous_sizes=None, settled=None):
        got["settled"] = settled
        return intake.ReadySupplies()

    monkeypatch.setattr(intake, "find_ready_supplies", find)
    monkeypatch.setattr(intake_quarantine, "quarantine_strays", lambda *a, **k: None)
    return got


class _Services:
    @contextmanager
    def sftp(self):
        yield object()


@pytest.mark.parametrize(("held_s", "trusted"), [(60.0, True), (1.0, True), (0.5, False), (0.0, False)])
def test_the_sensor_trusts_a_certificate_held_at_least_a_poll_interval(seen, held_s, trusted):
    settings = replace(load_settings(), poll_interval_s=1.0)
    pipeline_collect.ready_look(FEED, settings, _Services(), settled=SETTLED, held_s=held_s)
    assert seen["settled"] == (SETTLED if trusted else None)


def test_without_a_certificate_the_sensor_polls_as_before(seen):
    pipeline_collect.ready_look(FEED, load_settings(), _Services())
    assert seen["settled"] is None
