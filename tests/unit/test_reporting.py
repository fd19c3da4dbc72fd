"""The quality report: building, the partner's view, HTML rendering, and that no row content gets in."""
from __future__ import annotations

import json
import re

import pytest

from csp_observatory import report_html, report_privacy, report_writing, reporting
from csp_observatory.pipeline_supply import SupplyFile
from csp_observatory.reporting import SupplyOutcome
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

#: Personal values that exist only in sampled GX results and rejected-row reasons: they must never surface.
SECRETS = ("Jane Doe", "12 Akroyd Place", "1987-03-14", "HX9 9ZZ")


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def example_outcome() -> SupplyOutcome:
    """A supply with a bit of everything; some inputs carry personal values the report must not show."""
    files = [SupplyFile("offences", "prc_offences_202609.csv.gpg", "a" * 64, 48_211, signer="F" * 40, rows_in_file=604,
                        encrypted_path="/srv/staging/police_recorded_crime/202609/aaaa/prc_offences_202609.csv.gpg"),
             SupplyFile("offenders", "prc_offenders_202609.csv.gpg", "b" * 64, 20_102, signer="F" * 40,
                        rows_in_file=301),
             SupplyFile("victims", "prc_victims_202609.csv.gpg", "c" * 64, 30_440, signer="F" * 40,
                        rows_in_file=305)]
    rejected = [
        {"file": "offences", "row": 17, "stage": "validate", "reason": "crime_reference is missing (required)"},
        {"file": "offences", "row": 233, "stage": "validate",
         "reason": "ho_offence_code '999/99' is not a Home Office offence code"},
        {"file": "victims", "row": 4, "stage": "parse", "reason": "row has 14 fields; the header has 13"},
        {"file": "offenders", "row": 88, "stage": "clean",
         "reason": "offender_reference 'Jane Doe' repeats row 87 (same crime_reference and offender_reference)"},
        {"file": "victims", "row": 9, "stage": "disclosure", "reason": "in a cell of fewer than 5 records"},
        {"file": "offences", "row": 5, "stage": "validate",
         "reason": "<script>alert(1)</script> committed_from_date is in the future"},
    ]
    validation = {"offences": {"summary": {
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "column": "crime_reference", "quality": "completeness",
             "success": False, "unexpected_count": 1, "unexpected_percent": 0.17},
            {"type": "expect_column_values_to_be_in_set", "column": "ho_offence_code", "quality": "accuracy",
             "success": False, "unexpected_count": 1, "unexpected_percent": 0.17,
             "result": {"partial_unexpected_list": ["Jane Doe", "12 Akroyd Place"], "observed_value": "1987-03-14"}},
            {"type": "expect_column_values_to_match_regex", "column": "location_postcode", "quality": "precision",
             "success": True, "unexpected_count": 0, "unexpected_percent": 0.0},
            {"type": "expect_column_max_to_be_between", "column": "committed_from_date", "quality": "currency",
             "success": True, "unexpected_count": None, "unexpected_percent": None},
        ],
        "qualities": {"completeness": {"score": 99.8}, "accuracy": {"score": 99.8}},
        "raw": {"results": [{"result": {"partial_unexpected_list": ["HX9 9ZZ"]}}]}},
        "header_problems": ["unknown column 'nickname' was dropped"], "nulled_values": {"weapon_used": 2}}}
    return SupplyOutcome(
        supply_id="police_recorded_crime/202609", period="202609", status="loaded", files=files,
        rows_loaded={"depersonalised.prc_offences": 601, "depersonalised.prc_offenders": 300,
                     "depersonalised.prc_victims": 303},
        rejected=rejected, validation=validation,
        geocoding={"offences": {"supplied": 410, "postcode": 170, "terminated_postcode": 6, "gazetteer": 9,
                                "failed": 6}, "victims": {"postcode": 300, "failed": 3}},
        sanitising={"offences": {"records": 601, "rules": {"own_postcode": 520, "same_ward": 60, "same_district": 6,
                                                           "anywhere": 0, "non_addressable": 9, "not_geocoded": 6},
                                 "displacement_m": {"records": 586, "min": 0.0, "median": 38.2, "p90": 140.0,
                                                    "p99": 410.5, "max": 1210.0,
                                                    "histogram": {"0": 4, "1-50": 330, "50-100": 150,
                                                                  "100-250": 80, "250-500": 18, "500-1000": 3,
                                                                  ">1000": 1}}}},
        disclosure={"offences": {"quasi_identifiers": ["sanitised_easting", "sanitised_northing",
                                                       "committed_from_date:month", "ho_offence_code"],
                                 "k_threshold": 5, "records": 601, "groups": 212, "k": 1, "small_cells": 180,
                                 "records_in_small_cells": 390, "sensitive": "ho_offence_code", "points": 150,
                                 "min_l": 1, "points_with_l1": 88,
                                 "cells": [["409123", "425111", "2026-09", "Jane Doe"]]}},
        quarantined=[], date_supplied="2026-10-12T06:00:03+00:00", run_id="manual__2026-10-12",
        work_dir="/opt/csp-observatory/.run/staging/police_recorded_crime/202609/work",
        supplier_contact="data@police.example",
    )


def test_headline_and_counts_come_from_the_outcome(prc):
    report = reporting.build_report(prc, example_outcome())
    assert report["summary"]["rows_in_files"] == 604 + 301 + 305
    assert report["summary"]["rows_loaded"] == 1204
    # the disclosure-withheld row is not something the partner must fix
    assert report["summary"]["rows_need_attention"] == 5 and report["summary"]["rows_withheld"] == 1
    assert report["headline"].startswith("Loaded 1,204 of 1,210 rows; 5 rows need attention")
    assert [(r["file"], r["row"]) for r in report["rejected_rows"]][:3] == [("offences", 5), ("offences", 17),
                                                                            ("offences", 233)]
    assert all(r["action"] for r in report["rejected_rows"])
    json.dumps(report)   # serialisable


def test_four_qualities_per_file_with_failed_checks_first(prc):
    v = reporting.build_report(prc, example_outcome())["validation"]["offences"]
    assert list(v["qualities"]) == ["completeness", "accuracy", "precision", "currency"]
    assert v["qualities"]["accuracy"]["failed"] == 1 and v["qualities"]["accuracy"]["score"] == 99.8
    assert v["qualities"]["precision"]["score"] == 100.0      # computed when the summary gives none
    assert v["nulled_values"] == {"weapon_used": 2}


def test_metadata_of_section_3_4(prc):
    md = reporting.build_report(prc, example_outcome())["metadata"]
    assert md["agency"] == prc.partner.agency and md["dataset_name"] == prc.title
    assert md["time_period_covered"] == "September 2026" and md["number_of_records_supplied"] == 1210
    assert md["caveats"] == prc.caveats
    by_name = {(f["file"], f["name"]): f for f in md["datafields"]}
    assert len(by_name) == sum(len(f.datafields) for f in prc.files)
    assert by_name[("offenders", "offender_name")]["in_observatory"] == "removed"
    assert "sanitised point" in by_name[("offences", "easting")]["in_observatory"]


def test_no_row_content_anywhere(prc):
    report = reporting.build_report(prc, example_outcome())
    for view in (report, report_writing.partner_view(report)):
        text = json.dumps(view) + report_html.render_html(view)
        for secret in SECRETS:
            assert secret not in text, secret
    # the quoted offending value is withheld but the reason still says what to fix
    reasons = {r["row"]: r["reason"] for r in report["rejected_rows"]}
    assert "999/99" not in reasons[233] and "ho_offence_code" in reasons[233]


def test_redact_keeps_quoted_field_names():
    assert report_privacy.redact_reason("'age' must be a number, got 'forty'", {"age"}) == \
        "'age' must be a number, got '[value withheld]'"


def test_strip_row_content_removes_sampled_values():
    raw = {"success": False, "result": {"unexpected_count": 2, "partial_unexpected_list": ["x"],
                                        "observed_value": "y", "details": {"value_counts": [1]}}}
    assert report_privacy.strip_row_content(raw) == {"success": False, "result": {"unexpected_count": 2}}


def test_partner_view_hides_engineer_detail_and_paths(prc):
    outcome = example_outcome()
    outcome.quarantined = [{"file": "victims", "remote_name": "prc_victims_202609.csv.gpg",
                            "reason": "Signature by an unknown key; "
                                      "staged at /opt/csp-observatory/.run/staging/x/y.gpg"}]
    outcome.status = "refused"
    report = reporting.build_report(prc, outcome)
    assert report["engineer"]["work_dir"].startswith("/opt/csp-observatory/.run/staging")
    partner = report_writing.partner_view(report)
    assert "engineer" not in partner and "engineer" in report        # the original is untouched
    text = json.dumps(partner)
    assert ".run/staging" not in text and "/srv/staging" not in text
    assert "[internal path]" in partner["quarantined"][0]["reason"]
    page = report_html.render_html(partner)
    assert "Observatory only" not in page and "Observatory only" in report_html.render_html(report)
    assert report["headline"].startswith("Not loaded") and "1 file needs attention" in report["headline"]


def test_html_escapes_partner_supplied_text(prc):
    outcome = example_outcome()
    outcome.files[0].remote_name = '<img src=x onerror="alert(1)">.csv.gpg'
    page = report_html.render_html(reporting.build_report(prc, outcome))
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"<script|<link|https?://", page)           # self-contained: no scripts, no CDN
    assert "<style>" in page and "Loaded 1,204 of 1,210 rows" in page


def test_write_report_writes_json_and_html(prc, tmp_path):
    report = reporting.build_report(prc, example_outcome())
    json_path, html_path = report_writing.write_report(report, tmp_path / "reports")
    assert json.loads(json_path.read_text()) == report
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert json_path.stem == html_path.stem and "police_recorded_crime_202609" in json_path.name


def test_render_text_lists_rows_to_fix(prc):
    text = report_html.render_text(reporting.build_report(prc, example_outcome()))
    assert "offences row 17: crime_reference is missing (required)" in text
    assert "depersonalised.prc_victims: 303 rows" in text


def test_outcome_from_a_pipeline_manifest(prc, tmp_path):
    """The report reads the supply's own record: its SupplyFiles as they are, no copy into another class."""
    import pandas as pd

    from csp_observatory.pipeline_supply import Manifest

    m = Manifest(feed="police_recorded_crime", period="202609", work_dir=str(tmp_path), status="loaded", run_id="r1",
                 collected_at="2026-10-12T06:00:00+00:00",
                 files={"offences": SupplyFile("offences", "prc_offences_202609.csv.gpg", "d" * 64, 10,
                                               encrypted_path=str(tmp_path / "x.gpg"), signer="E" * 40,
                                               rows_in_file=3)},
                 stages={"load": {"rows": {"depersonalised.prc_offences": 2}}})
    m.set_rejected("validate", "offences", pd.DataFrame({
        "source_file": ["offences"], "source_row": pd.array([2], dtype="Int64"),
        "reason": ["crime_reference is missing"], "stage": ["validate"]}))
    m.save()
    again = Manifest.read(tmp_path)

    outcome = reporting.outcome_from_manifest(again)
    assert outcome.files == [again.files["offences"]] and outcome.files[0] is again.files["offences"]
    report = reporting.build_report(prc, again)
    assert report["headline"] == "Loaded 2 of 3 rows; 1 row needs attention"
    assert report["rejected_rows"][0]["row"] == 2
    assert report["files"][0]["signed_by"] == "E" * 40 and report["files"][0]["rows_in_file"] == 3
    assert report["engineer"]["encrypted_paths"] == {"offences": str(tmp_path / "x.gpg")}


def test_the_advice_fits_the_problem() -> None:
    from csp_observatory.reporting import _action

    shape = _action({"stage": "parse", "reason": "row 3 has 4 values but the header has 21 columns"})
    value = _action({"stage": "parse", "reason": "row 3: committed_from_date '[x]' is not a valid date"})
    assert "same number of fields" in shape and "same number of fields" not in value
    assert "YYYY-MM-DD" in value
    assert "repeated row" in _action({"stage": "clean", "reason": "exact copy of row 4"})
