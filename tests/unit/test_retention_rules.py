"""Retention rules: how long each feed keeps rows, originals and reports, and when a supply is past it."""
from __future__ import annotations

from datetime import date

import pytest
import yaml

from csp_observatory import retention
from csp_observatory.schema import RETENTION_DEFAULTS, SCHEMA_DIR, Retention, SchemaError
from csp_observatory.schema_loading import load_schemas, parse_schema

pytestmark = pytest.mark.unit


def _raw(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


def test_every_feed_has_a_retention_and_personalised_feeds_keep_the_least():
    schemas = load_schemas()
    assert {s.dataset_type for s in schemas} == {"personalised", "depersonalised"}
    shortest = RETENTION_DEFAULTS["personalised"]
    for s in schemas:
        kept = retention.rules(s)
        assert kept.rows_months >= 1 and kept.reports_months >= 1 and kept.originals_months >= 0
        if s.personalised:
            assert kept.rows_months <= shortest.rows_months and kept.originals_months <= shortest.originals_months
        else:
            # nothing depersonalised is kept for less than a personalised feed keeps its rows
            assert kept.rows_months >= shortest.rows_months


def test_a_retention_block_overrides_the_defaults_and_is_checked():
    raw = _raw("police_recorded_crime")
    raw["retention"] = {"rows_months": 36, "originals_months": 0}
    s = parse_schema(raw)
    assert s.retention == Retention(36, 0, RETENTION_DEFAULTS["depersonalised"].reports_months)
    for bad in ({"rows_months": 0}, {"rows_months": "three"}, {"keep": 3}, ["rows_months"]):
        raw["retention"] = bad
        with pytest.raises(SchemaError, match="retention"):
            parse_schema(raw)


def test_a_personalised_feed_may_not_keep_anything_longer_than_the_guidance_allows():
    raw = _raw("prolific_priority_offenders")
    assert parse_schema(raw).personalised
    raw["retention"] = {"rows_months": 6}
    assert retention.rules(parse_schema(raw)).rows_months == 6          # shorter: fine
    raw["retention"] = {"rows_months": RETENTION_DEFAULTS["personalised"].rows_months + 1}
    with pytest.raises(SchemaError, match="2.4.2.5"):
        parse_schema(raw)


@pytest.mark.parametrize("day, months, expected", [
    (date(2026, 1, 31), 1, date(2026, 2, 28)),
    (date(2024, 1, 31), 1, date(2024, 2, 29)),
    (date(2026, 9, 30), 12, date(2027, 9, 30)),
    (date(2026, 12, 31), 3, date(2027, 3, 31)),
    (date(2026, 11, 30), 0, date(2026, 11, 30)),
    (date(2026, 9, 30), 1, date(2026, 10, 31)),
    (date(2026, 3, 15), 1, date(2026, 4, 15)),
])
def test_months_are_added_within_the_month(day, months, expected):
    assert retention.add_months(day, months) == expected


def test_a_supply_is_past_retention_the_day_after_its_period_end_plus_the_months():
    raw = _raw("police_recorded_crime")
    raw["retention"] = {"rows_months": 12, "originals_months": 1, "reports_months": 24}
    s = parse_schema(raw)
    assert retention.kept_until(s, "202509", "rows") == date(2026, 9, 30)
    assert not retention.past(s, "202509", "rows", date(2026, 9, 30))
    assert retention.past(s, "202509", "rows", date(2026, 10, 1))
    assert retention.kept_until(s, "202509", "originals") == date(2025, 10, 31)
    assert not retention.past(s, "202509", "reports", date(2026, 10, 1))
    # a period that cannot be read is never deleted
    assert retention.kept_until(s, "20250", "rows") is None and not retention.past(s, "20250", "rows", date(2099, 1, 1))
    why = retention.reason(s, "202509", "rows")
    assert "12 months" in why and "2026-09-30" in why and "retention block" in why


def test_partner_report_names_are_matched_to_their_feed_only():
    assert retention._report_period("council_asb", "council_asb_202609_quality_20261001T010203Z.html") == "202609"
    assert retention._report_period("council_asb", "council_asb_202609_quality_20261001T010203Z.json") == "202609"
    assert retention._report_period("council", "council_asb_202609_quality_20261001T010203Z.html") is None
    assert retention._report_period("council_asb", "council_asb_202609_quality_x.html.part") is None
