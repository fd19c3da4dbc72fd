"""The four qualities as the report scores and grades them: a clean supply passes, and a supply built to break
each quality is caught with the right count (validation.validate + reporting.build_report)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory import (fixtures, grading, parsing, postcodes_sources, report_html, reporting, trends, validation,
                             validation_scores)
from csp_observatory.pipeline_supply import SupplyFile
from csp_observatory.reporting import SupplyOutcome
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

PERIOD = "202609"
TODAY = pd.Timestamp("2026-11-01")
ON_TIME = "2026-10-05T08:00:00+00:00"     # police recorded crime is due 16 days after the period ends


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


@pytest.fixture(scope="module")
def clean(prc) -> pd.DataFrame:
    """Offences of a fixture supply that the row rules keep, each crime once (cleaning removes repeats)."""
    supply = fixtures.make_supply(prc, PERIOD, postcodes_sources.shipped_reference(), n=40, metadata=None)
    feed_file = prc.file("offences")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "offences.csv"
        path.write_text(supply.files["offences"], encoding="utf-8")
        frame = parsing.parse_csv(path, feed_file).frame
    kept, _, _ = validation.apply_row_rules(frame, feed_file, TODAY)
    return kept.drop_duplicates("crime_reference").reset_index(drop=True)


def summary_of(prc, frame: pd.DataFrame, received: pd.DataFrame | None = None) -> dict:
    rates = None if received is None else validation.fill_rates(received, prc.file("offences"))
    return validation.validate(frame, prc.file("offences"), prc, period=PERIOD, today=TODAY, rates=rates)


def report_of(prc, summary: dict, arrived: str = ON_TIME, history: list | None = None, flagged: list | None = None):
    summary = {k: v for k, v in summary.items() if k != "gx_result"}
    outcome = SupplyOutcome(
        supply_id=f"{prc.feed}/{PERIOD}", period=PERIOD, status="loaded",
        files=[SupplyFile("offences", "prc_offences_202609.csv.gpg", "a" * 64, 1, rows_in_file=summary["rows"])],
        rows_loaded={"depersonalised.prc_offences": summary["rows"]}, flagged=flagged or [],
        validation={"offences": {"summary": summary, "header_problems": [], "nulled_values": {}}},
        date_supplied=arrived)
    return reporting.build_report(prc, outcome, history=history or [])


def failed(summary: dict, quality: str) -> dict[str, int]:
    return {e["describe"]: e["unexpected_count"] for e in summary["expectations"]
            if e["quality"] == quality and not e["success"]}


def test_a_clean_supply_passes_every_quality(prc, clean):
    summary = summary_of(prc, clean)
    assert all(e["success"] for e in summary["expectations"]), failed(summary, "accuracy")
    report = report_of(prc, summary)
    for q, s in report["qualities"].items():
        assert s["failed"] == 0 and s["grade"] == "good", (q, s)
    assert report["arrival"]["on_time"] is True and "on time" in report["arrival"]["text"]


def test_optional_fields_empty_by_design_do_not_lower_completeness(prc, clean):
    frame = clean.copy()
    for column in ("longitude", "latitude", "property_stolen", "method_of_entry", "location_address"):
        frame[column] = pd.Series(pd.NA, index=frame.index, dtype=frame[column].dtype)
    summary = summary_of(prc, frame)
    assert summary["qualities"]["completeness"]["score"] == 100.0
    rates = summary["fill_rates"]
    assert rates["longitude"] == {"rows": len(frame), "filled": 0, "percent": 0.0, "required": False,
                                  "guidance": rates["longitude"]["guidance"],
                                  "weight": validation_scores.OPTIONAL_WEIGHT}
    assert rates["crime_reference"]["required"]
    assert rates["crime_reference"]["weight"] == validation_scores.REQUIRED_WEIGHT
    # the optional field's own check still reports how many are empty
    check = next(e for e in summary["expectations"] if e["describe"] == "location_address is populated")
    assert check["unexpected_count"] == len(frame) and check["success"]


def test_missing_required_values_count_against_completeness_with_their_number(prc, clean):
    received = clean.copy()
    received.loc[[1, 4, 7], "committed_from_date"] = pd.NaT
    kept, set_aside, _ = validation.apply_row_rules(received, prc.file("offences"), TODAY)
    assert len(set_aside) == 3
    summary = summary_of(prc, kept, received=received)
    rows, required = len(received), [d for d in prc.file("offences").datafields if d.required]
    assert summary["fill_rates"]["committed_from_date"]["filled"] == rows - 3
    assert summary["qualities"]["completeness"]["score"] == round(100 * (rows * len(required) - 3)
                                                                  / (rows * len(required)), 2)
    report = report_of(prc, summary)
    assert report["validation"]["offences"]["qualities"]["completeness"]["grade"] == grading.quality_grade(
        summary["qualities"]["completeness"]["score"])


def test_invalid_codes_are_an_accuracy_failure_with_their_count(prc, clean):
    frame = clean.copy()
    frame["ho_offence_code"] = frame["ho_offence_code"].astype("string")
    frame.loc[[0, 2, 5, 9], "ho_offence_code"] = "ZZZ"
    summary = summary_of(prc, frame)
    assert failed(summary, "accuracy") == {"ho_offence_code is a valid code": 4}
    report = report_of(prc, summary)
    acc = report["validation"]["offences"]["qualities"]["accuracy"]
    assert acc["failed"] == 1 and acc["score"] < 100 and acc["grade"] in ("fair", "poor")
    assert report["qualities"]["accuracy"]["grade"] == acc["grade"]


def test_district_postcodes_are_a_precision_failure_with_their_count(prc, clean):
    frame = clean.copy()
    given = frame.index[frame["location_postcode"].notna()][:6]
    frame.loc[given, "location_postcode"] = "HX1"
    summary = summary_of(prc, frame)
    assert failed(summary, "precision") == {"location_postcode is a full postcode, not a district": 6}


def test_old_event_dates_are_a_currency_failure_with_their_count(prc, clean):
    frame = clean.copy()
    frame.loc[:10, "committed_from_date"] = pd.Timestamp("2024-01-15")    # 11 rows, more than a tenth
    frame["committed_to_date"] = pd.NaT
    summary = summary_of(prc, frame)
    found = failed(summary, "currency")
    assert found == {"committed_from_date not older than 12 months before the period": 11}


def test_a_late_supply_fails_currency_by_its_days_late(prc, clean):
    summary = summary_of(prc, clean)
    due = prc.supply_due(PERIOD)
    report = report_of(prc, summary, arrived=(due + pd.Timedelta(days=4, hours=2)).isoformat())
    a = report["arrival"]
    assert a["days_late"] == 5 and a["on_time"] is False and "5 days late" in a["text"]
    cur = report["validation"]["offences"]["qualities"]["currency"]
    check = next(e for e in cur["expectations"] if e["expectation"] == "supply_arrived_by_due_date")
    assert check["success"] is False and check["unexpected_count"] == 5
    n = summary["qualities"]["currency"]["expectations"]
    assert cur["score"] == round((summary["qualities"]["currency"]["score"] * n + trends.arrival_score(5)) / (n + 1), 2)
    assert cur["grade"] != "good" and report["qualities"]["currency"]["failed"] == 1
    assert "5 days late" in report_html.render_html(report)
    # on the due day itself it is on time
    on_time = report_of(prc, summary, arrived=(due - pd.Timedelta(minutes=1)).isoformat())
    assert on_time["arrival"]["days_late"] == 0 and on_time["qualities"]["currency"]["grade"] == "good"


def test_an_as_and_when_feed_has_no_due_date_and_arrival_does_not_count():
    ae = load_schema(SCHEMA_DIR / "ae_assaults.yaml")
    a = trends.arrival(ae, PERIOD, ON_TIME)
    assert a["due"] is None and a["score"] is None and "as and when" in a["text"]


def _earlier(prc, period: str, per_day: dict[str, int], score: float = 99.0) -> dict:
    """An earlier report as write_report stored it, with the figures the trend and the gaps read."""
    return {"report": {"generated_at": f"{period[:4]}-{period[4:]}-28T00:00:00+00:00"},
            "supply": {"feed": prc.feed, "period": period, "status": "loaded"},
            "qualities": {q: {"score": score, "grade": grading.quality_grade(score)} for q in reporting.QUALITIES},
            "validation": {"offences": {"records_per_day": per_day}}}


def _every_day(period: str, n: int) -> dict[str, int]:
    start = pd.Timestamp(f"{period[:4]}-{period[4:]}-01")
    return {d.date().isoformat(): n for d in pd.date_range(start, start + pd.offsets.MonthEnd(0))}


def test_a_gap_in_the_dates_is_reported_by_date_range_and_lowers_completeness(prc, clean):
    history = [_earlier(prc, p, _every_day(p, 3)) for p in ("202606", "202607", "202608")]
    frame = clean.copy()
    # every record on 1-9 or 17-30 September: 10-16 September (7 days, 21 records expected) has none
    days = [d for d in pd.date_range("2026-09-01", "2026-09-30") if not 10 <= d.day <= 16]
    frame["committed_from_date"] = [days[i % len(days)] for i in range(len(frame))]
    frame["committed_to_date"] = pd.NaT
    summary = summary_of(prc, frame)
    report = report_of(prc, summary, history=history)
    gaps = report["gaps"]["offences"]
    assert [(g["from"], g["to"], g["days"]) for g in gaps["gaps"]] == [("2026-09-10", "2026-09-16", 7)]
    assert gaps["gaps"][0]["expected"] == 21.0 and gaps["share"] == round(21 / 90, 4)
    comp = report["validation"]["offences"]["qualities"]["completeness"]
    check = next(e for e in comp["expectations"] if e["expectation"] == "no_gap_in_event_dates")
    assert check["success"] is False and check["unexpected_count"] == 7
    assert comp["score"] == round(summary["qualities"]["completeness"]["score"] * (1 - 21 / 90), 2)
    page = report_html.render_html(report)
    assert "2026-09-10" in page and "2026-09-16" in page
    # the same supply with no earlier one to compare has no gap check
    alone = report_of(prc, summary)
    assert alone["gaps"]["offences"] is None and alone["qualities"]["completeness"]["failed"] == 0


def test_quiet_days_are_no_gap_when_earlier_supplies_were_quiet_too():
    typical = {w: 1.0 for w in range(7)}
    counts = {"2026-09-01": 1, "2026-09-30": 1}    # 28 empty days in between, 28 records expected
    start, end = pd.Timestamp("2026-09-01").date(), pd.Timestamp("2026-09-30").date()
    assert trends.find_gaps(counts, start, end, typical) == [
        {"from": "2026-09-02", "to": "2026-09-29", "days": 28, "expected": 28.0}]
    sparse = {d: (1 if i % 5 == 0 else 0) for i, d in enumerate(_every_day("202609", 1))}
    assert trends.find_gaps(sparse, start, end, typical) == []      # four empty days expect 4 < 10


def test_rows_whose_offence_is_missing_are_listed_in_completeness(prc, clean):
    offenders = prc.file("offenders")
    frame = pd.DataFrame({"crime_reference": pd.array(["PO1", "PO2", "PO3"], dtype="string"),
                          "offender_reference": pd.array(["A", "B", "C"], dtype="string"), "source_row": [1, 2, 3]})
    summary = validation.validate(frame, offenders, prc, period=PERIOD, today=TODAY)
    summary.pop("gx_result")
    flagged = [{"file": "offenders", "row": r, "stage": "link",
                "reason": "its crime_reference matches no row of the offences file in this supply"} for r in (2, 3)]
    outcome = SupplyOutcome(
        supply_id=f"{prc.feed}/{PERIOD}", period=PERIOD, status="loaded",
        files=[SupplyFile("offenders", "prc_offenders_202609.csv.gpg", "b" * 64, 1, rows_in_file=3)],
        rows_loaded={"depersonalised.prc_offenders": 3}, flagged=flagged, date_supplied=ON_TIME,
        validation={"offenders": {"summary": summary, "header_problems": [], "nulled_values": {}}})
    report = reporting.build_report(prc, outcome, history=[])
    assert report["missing_links"]["offenders"]["count"] == 2 and report["missing_links"]["offenders"]["rows"] == [2, 3]
    comp = report["validation"]["offenders"]["qualities"]["completeness"]
    check = next(e for e in comp["expectations"] if e["expectation"] == "linked_record_in_supply")
    assert check["success"] is False and check["unexpected_count"] == 2
    assert comp["grade"] == "fair"          # a failed check is never good
    page = report_html.render_html(report)
    section = page[page.index('id="completeness"'):]
    assert "2 offenders rows refer (by crime_reference) to a record of the offences file" in section
    assert ">2<" in section and ">3<" in section        # listed with their row numbers


def test_history_keeps_the_newest_loaded_report_of_each_earlier_period(prc, tmp_path):
    def write(period: str, stamp: str, status: str = "loaded", score: float = 99.0) -> None:
        r = _earlier(prc, period, {}, score)
        r["report"]["generated_at"], r["supply"]["status"] = stamp, status
        folder = tmp_path / prc.feed / period
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{period}_{stamp[:19].replace(':', '')}.json").write_text(json.dumps(r))

    write("202607", "2026-08-10T00:00:00+00:00", score=95.0)
    write("202607", "2026-08-20T00:00:00+00:00", score=97.0)           # a re-run: this one counts
    write("202607", "2026-08-25T00:00:00+00:00", status="refused")     # not loaded: skipped
    write("202608", "2026-09-10T00:00:00+00:00", score=98.0)
    write("202609", "2026-10-10T00:00:00+00:00")                       # the supply itself: not history
    (tmp_path / prc.feed / "202608" / "broken.json").write_text("{")
    history = trends.load_history(tmp_path, prc.feed, "202609")
    assert [(h["supply"]["period"], h["qualities"]["accuracy"]["score"]) for h in history] == [
        ("202607", 97.0), ("202608", 98.0)]
    assert [h["supply"]["period"] for h in trends.load_history(tmp_path, prc.feed, "202609", limit=1)] == ["202608"]


def test_the_trend_chart_labels_each_supply_and_this_one(prc, clean):
    history = [_earlier(prc, "202607", {}, 96.5), _earlier(prc, "202608", {}, 100.0)]
    report = report_of(prc, summary_of(prc, clean), history=history)
    points = report["trend"]["points"]
    assert [p["period"] for p in points] == ["202607", "202608", PERIOD] and points[-1]["current"]
    assert points[0]["qualities"]["accuracy"] == {"score": 96.5, "grade": "fair"}
    page = report_html.render_html(report)
    chart = page[page.index('id="trend-accuracy"'):]
    chart = chart[:chart.index("</svg>")]
    assert chart.count("<circle") == 3 and "2026-07" in chart and "96.5%" in chart and "2026-09 (this)" in chart
