"""Row rules (reject / blank and count) and the GX suite scored on the guidance's four qualities."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from csp_observatory import validation
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

TODAY = pd.Timestamp("2026-11-24")


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def _frame(feed_file, rows: list[dict]) -> pd.DataFrame:
    """A frame with parse_csv's column contract."""
    frame = pd.DataFrame(rows)
    dtypes = {"string": "string", "code": "string", "postcode": "string", "time": "string",
              "date": "datetime64[ns]", "integer": "Int64", "float": "Float64", "boolean": "boolean"}
    for d in feed_file.datafields:
        if d.name not in frame.columns:
            frame[d.name] = pd.NA
        frame[d.name] = frame[d.name].astype(dtypes[d.type]) if d.type != "date" else \
            pd.to_datetime(frame[d.name]).astype("datetime64[ns]")
    frame["source_row"] = range(1, len(frame) + 1)
    return frame


def test_unusable_rows_are_rejected_and_bad_optional_values_blanked(schema):
    ff = schema.file("offences")
    frame = _frame(ff, [
        {"crime_reference": "CR0001", "ho_offence_code": "28E", "committed_from_date": "2026-09-01",
         "easting": 409508, "northing": 425333},
        {"crime_reference": None, "ho_offence_code": "28E", "committed_from_date": "2026-09-01"},
        {"crime_reference": "CR0003", "ho_offence_code": "999Z", "committed_from_date": "2026-09-01"},
        {"crime_reference": "CR0004", "ho_offence_code": "028e", "committed_from_date": "2026-09-01",
         "easting": 912345, "northing": 425333},
        {"crime_reference": "CR0005", "ho_offence_code": "58A", "committed_from_date": "2026-09-02",
         "longitude": -30.0, "latitude": 53.7, "committed_to_date": "2099-01-01"},
        {"crime_reference": "cr 6!", "ho_offence_code": "", "committed_from_date": None},
    ])
    kept, rejected, nulled = validation.apply_row_rules(frame, ff)
    reasons = dict(zip(rejected["source_row"], rejected["reason"]))
    assert sorted(reasons) == [2, 3, 6]
    assert "crime_reference is missing" in reasons[2]
    assert "ho_offence_code '999Z' is not a valid code" in reasons[3]
    assert "ho_offence_code is missing" in reasons[6] and "committed_from_date is missing" in reasons[6] \
        and "crime_reference 'cr 6!'" in reasons[6]
    assert set(rejected["stage"]) == {"validate"} and set(rejected["source_file"]) == {"offences"}
    assert kept["source_row"].tolist() == [1, 4, 5]           # 028e is 28E once cleaned: kept
    row4 = kept[kept["source_row"] == 4].iloc[0]
    assert pd.isna(row4["easting"]) and pd.isna(row4["northing"])
    row5 = kept[kept["source_row"] == 5].iloc[0]
    assert pd.isna(row5["longitude"]) and pd.isna(row5["latitude"]) and pd.isna(row5["committed_to_date"])
    assert kept.loc[kept["source_row"] == 1, "easting"].tolist() == [409508]
    assert nulled == {"committed_to_date": 1, "easting/northing outside Great Britain": 1,
                      "longitude/latitude outside Great Britain": 1}
    assert len(kept) + len(rejected) == len(frame)


def test_row_problems_on_a_compound_key_file(schema):
    ff = schema.file("offenders")
    frame = _frame(ff, [{"crime_reference": "CR0001", "offender_reference": "O1", "age": 130, "gender": "Q"},
                        {"crime_reference": "CR0001", "offender_reference": None}])
    problems = validation.row_problems(frame, ff)
    assert problems["source_row"].tolist() == [2]
    assert "offender_reference is missing" in problems["reason"].iloc[0]
    kept, _, nulled = validation.apply_row_rules(frame, ff)
    assert nulled == {"age": 1, "gender": 1}
    assert kept["age"].isna().all() and kept["gender"].isna().all()


@pytest.fixture(scope="module")
def summary(schema):
    ff = schema.file("offences")
    rows = []
    for i in range(40):
        rows.append({"crime_reference": f"CR{i:04d}", "ho_offence_code": "028E" if i == 0 else "58A",
                     "committed_from_date": f"2026-09-{1 + i % 28:02d}", "location_postcode": "HX1 1AA",
                     "easting": 409508 + i, "northing": 425333, "location_address": None if i % 4 else "x"})
    rows[1]["crime_reference"] = "CR0000"                                   # duplicate key
    rows[2]["ho_offence_code"] = "999Z"                                     # invalid code
    rows[3]["location_postcode"] = "HX1"                                    # district only: imprecise
    rows[4]["easting"], rows[4]["northing"] = 409500, 425300                # rounded to 100 m
    rows[5]["easting"] = 912345                                             # outside GB
    rows[6]["committed_from_date"] = "2024-01-01"                           # stale
    rows[7]["committed_from_date"] = "2027-01-01"                           # future
    return validation.validate(_frame(ff, rows), ff, schema, period="202609", today=TODAY)


def _find(summary, describe_part: str, quality: str) -> dict:
    found = [e for e in summary["expectations"] if describe_part in e["describe"] and e["quality"] == quality]
    assert len(found) == 1, describe_part
    return found[0]


def test_summary_is_json_and_has_every_quality(summary):
    text = json.dumps(summary)
    assert set(summary["qualities"]) == {"completeness", "accuracy", "precision", "currency"}
    assert summary["gx_result"]["results"]
    assert len(summary["gx_result"]["results"]) == len(summary["expectations"])
    assert not any(e["error"] for e in summary["expectations"]), [e for e in summary["expectations"] if e["error"]]
    assert "partial_unexpected_list" not in text          # sampled values never stored
    assert summary["success"] is False


def test_accuracy_findings(summary):
    code = _find(summary, "ho_offence_code is a valid code", "accuracy")
    assert code["success"] is False and code["unexpected_count"] == 1    # 999Z only; 028E reads as 28E
    unique = _find(summary, "crime_reference is unique", "accuracy")
    assert unique["success"] is False and unique["unexpected_count"] == 2
    easting = _find(summary, "easting inside Great Britain", "accuracy")
    assert easting["unexpected_count"] == 1
    dates = _find(summary, "committed_from_date is a date from 1900 to today", "accuracy")
    assert dates["unexpected_count"] == 1
    assert summary["qualities"]["accuracy"]["failed"] >= 4
    assert 0 < summary["qualities"]["accuracy"]["score"] < 100


def test_completeness_reports_percent_populated(summary):
    assert summary["populated_percent"]["crime_reference"] == 100.0
    assert summary["populated_percent"]["location_address"] == 25.0
    assert summary["populated_percent"]["longitude"] == 0.0
    optional = _find(summary, "location_address is populated", "completeness")
    assert optional["success"] is True                 # optional: measured, not failed


def test_precision_findings(summary):
    postcode = _find(summary, "location_postcode is a full postcode", "precision")
    assert postcode["success"] is False and postcode["unexpected_count"] == 1
    rounded = _find(summary, "not rounded to 100 m", "precision")
    assert rounded["unexpected_count"] == 1 and rounded["success"] is True      # 1 in 40 is not "mostly"


def test_currency_findings(summary):
    latest = _find(summary, "latest committed_from_date is in period 202609", "currency")
    assert latest["success"] is False                  # 2027-01-01 is after the period
    old = _find(summary, "not older than 12 months", "currency")
    assert old["unexpected_count"] == 2                # 2024-01-01 too old, 2027-01-01 after the period


def test_gx_results_are_matched_by_type_and_kwargs_not_order(schema):
    ff = schema.file("offences")
    checks = validation.build_checks(ff, schema, "202609", TODAY)
    assert len({c.id for c in checks}) == len(checks)
    assert {c.quality for c in checks} == set(validation.QUALITIES)
    offenders = validation.build_checks(schema.file("offenders"), schema, None, TODAY)
    compound = [c for c in offenders if c.type == "expect_compound_columns_to_be_unique"]
    assert compound and compound[0].kwargs["column_list"] == ["crime_reference", "offender_reference"]
    victims = validation.build_checks(schema.file("victims"), schema, None, TODAY)
    assert any(c.quality == "precision" and c.kwargs.get("column") == "age" for c in victims)
    # a file keyed by content has no key column to check for uniqueness
    assert not [c for c in victims if "unique" in c.type]


# --- half a coordinate pair, and a period that is not one (issue 6, sections 5 and 8) --------------

def test_a_longitude_without_a_latitude_is_an_accuracy_failure_with_its_count(schema):
    ff = schema.file("offences")
    rows = [{"crime_reference": f"CR{i:04d}", "ho_offence_code": "58A", "committed_from_date": "2026-09-02",
             "longitude": -1.86, "easting": 409508 + i, "northing": 425333} for i in range(10)]
    for r in rows[:3]:
        r["latitude"] = 53.72                 # three rows have both halves
    rows[9]["northing"] = None                # one easting without its northing
    frame = _frame(ff, rows)
    kept, _, nulled = validation.apply_row_rules(frame, ff)
    assert len(kept) == 10 and not nulled     # half a pair is not blanked silently: it is reported
    summary = validation.validate(kept, ff, schema, period="202609", today=TODAY)
    latitude = _find(summary, "latitude is given wherever longitude is", "accuracy")
    assert latitude["success"] is False and latitude["unexpected_count"] == 7
    northing = _find(summary, "northing is given wherever easting is", "accuracy")
    assert northing["success"] is False and northing["unexpected_count"] == 1
    assert _find(summary, "longitude is given wherever latitude is", "accuracy")["success"] is True
    assert _find(summary, "easting is given wherever northing is", "accuracy")["success"] is True
    assert summary["success"] is False and summary["qualities"]["accuracy"]["failed"] >= 2
    assert not any(e["error"] for e in summary["expectations"])


def test_the_pair_checks_come_from_the_schemas_location_roles(schema):
    victims = validation.build_checks(schema.file("victims"), schema, None, TODAY)
    pairs = sorted(c.describe for c in victims if "wherever" in c.describe)
    loc = schema.file("victims").location
    assert pairs == sorted([f"{loc.northing} is given wherever {loc.easting} is (a point needs both)",
                            f"{loc.easting} is given wherever {loc.northing} is (a point needs both)"])
    assert all(c.quality == "accuracy" for c in victims if "wherever" in c.describe)


@pytest.mark.parametrize("period", ["201113", "\u0662\u0660\u0662\u0666\u0660\u0669", "2026"])
def test_a_period_that_is_not_a_month_never_raises(schema, period):
    ff = schema.file("offences")
    frame = _frame(ff, [{"crime_reference": "CR0001", "ho_offence_code": "58A", "committed_from_date": "2026-09-02"}])
    summary = validation.validate(frame, ff, schema, period=period, today=TODAY)
    latest = [e for e in summary["expectations"] if e["quality"] == "currency" and "latest" in e["describe"]]
    assert latest and "not a valid period" in latest[0]["describe"]


def test_the_report_names_the_missing_half_not_a_derived_column(schema):
    ff = schema.file("offences")
    frame = _frame(ff, [{"crime_reference": "CR0001", "ho_offence_code": "58A", "committed_from_date": "2026-09-02",
                         "longitude": -1.86}])
    summary = validation.validate(frame, ff, schema, period="202609", today=TODAY)
    assert _find(summary, "latitude is given wherever longitude is", "accuracy")["column"] == "latitude"
    assert not any(str(e["column"]).startswith("__") and "missing" in str(e["column"])
                   for e in summary["expectations"])


# --- dates that may lie ahead (issue 7): a release announced ahead, a planned discharge --------------------------

def _days(n: int) -> str:
    return (TODAY + pd.Timedelta(days=n)).strftime("%Y-%m-%d")


def test_a_release_date_ahead_is_kept_and_a_birth_in_the_future_is_not():
    ff = load_schema(SCHEMA_DIR / "prison_releases.yaml").file("releases")
    assert ff.field("release_date").future_days == 366 and ff.field("date_of_birth").future_days == 0
    frame = _frame(ff, [
        {"name": "A", "release_date": _days(30), "date_of_birth": "1990-01-01"},     # announced a month ahead
        {"name": "B", "release_date": _days(366), "date_of_birth": _days(1)},        # the last day taken; born tomorrow
        {"name": "C", "release_date": _days(367), "date_of_birth": "1990-01-01"},    # a mistyped year, most likely
    ])
    kept, rejected, nulled = validation.apply_row_rules(frame, ff, today=TODAY)
    assert rejected.empty and len(kept) == 3
    assert kept["release_date"].notna().tolist() == [True, True, False]
    assert kept["date_of_birth"].notna().tolist() == [True, False, True]
    assert nulled == {"release_date": 1, "date_of_birth": 1}
    # the report says how far ahead a date may be
    checks = {c.describe: c.kwargs for c in validation.build_checks(ff, None, None, TODAY)}
    assert checks["release_date is a date from 1900 to 366 days after today"]["max_value"] == \
        (TODAY + pd.Timedelta(days=366)).to_pydatetime()
    assert checks["date_of_birth is a date from 1900 to today"]["max_value"] == TODAY.to_pydatetime()


def test_a_planned_discharge_lies_ahead_but_the_start_of_treatment_does_not():
    schema = load_schema(SCHEMA_DIR / "drug_treatment_adults.yaml")
    ff = schema.file("clients")
    rows = [{"client_reference": f"CL{i:04d}", "treatment_start_date": "2026-11-02",
             "planned_discharge_date": _days(180)} for i in range(10)]
    rows[1]["treatment_start_date"] = _days(3)           # an event in the future: a finding, the row is kept
    rows[2]["planned_discharge_date"] = _days(800)       # further ahead than any plan: blanked
    kept, rejected, nulled = validation.apply_row_rules(_frame(ff, rows), ff, today=TODAY)
    assert rejected.empty and nulled == {"planned_discharge_date": 1}
    assert kept["planned_discharge_date"].notna().sum() == 9
    summary = validation.validate(kept, ff, schema, period="202611", today=TODAY)
    start = _find(summary, "treatment_start_date is a date from 1900 to today", "accuracy")
    assert start["success"] is False and start["unexpected_count"] == 1
    planned = _find(summary, "planned_discharge_date is a date from 1900 to 731 days after today", "accuracy")
    assert planned["success"] is True


def test_an_optional_event_date_in_the_future_is_blanked_with_the_rule_in_words():
    ff = load_schema(SCHEMA_DIR / "ae_assaults.yaml").file("assaults")
    assert ff.field("incident_date").future_days == 0 and not ff.field("incident_date").required
    frame = _frame(ff, [{"attendance_reference": "AE0001", "incident_date": _days(1)},
                        {"attendance_reference": "AE0002", "incident_date": _days(0)}])
    kept, _, nulled = validation.apply_row_rules(frame, ff, today=TODAY)
    assert nulled == {"incident_date": 1} and kept["incident_date"].notna().tolist() == [False, True]
    bad, rule = validation._invalid(frame, ff.field("incident_date"), TODAY)
    assert bad.tolist() == [True, False] and rule == "is before 1900 or in the future"
    yoi = load_schema(SCHEMA_DIR / "yoi_releases.yaml").file("releases")
    bad, rule = validation._invalid(_frame(yoi, [{"name": "A", "release_date": _days(400)}]),
                                    yoi.field("release_date"), TODAY)
    assert bad.tolist() == [True] and rule == "is before 1900 or more than 366 days after today"
