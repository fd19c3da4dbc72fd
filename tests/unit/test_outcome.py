"""The supply's verdict (green, amber, red): a supply that loads nothing useful, or sets rows aside, or leaves
records off the map, never reads as a plain success."""
from __future__ import annotations

import json

import pytest

from csp_observatory import report_html, report_writing, reporting
from csp_observatory.pipeline_supply import SupplyFile
from csp_observatory.reporting import SupplyOutcome
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def outcome(status: str = "loaded", loaded: int = 100, rejected=(), flagged=(), geocoding=None,
            quarantined=()) -> SupplyOutcome:
    return SupplyOutcome(
        supply_id="police_recorded_crime/202609", period="202609", status=status,
        files=[SupplyFile("offences", "prc_offences_202609.csv.gpg", "a" * 64, 100, signer="F" * 40,
                          rows_in_file=loaded + len(rejected))],
        rows_loaded={"depersonalised.prc_offences": loaded} if status == "loaded" else {},
        rejected=list(rejected), flagged=list(flagged),
        geocoding=geocoding or {"offences": {"supplied": loaded, "failed": 0, "unplaced": 0, "total": loaded}},
        quarantined=list(quarantined))


def test_green_only_when_nothing_is_wrong(prc):
    report = reporting.build_report(prc, outcome())
    assert report["outcome"]["level"] == "green" and report["outcome"]["reasons"] == []
    assert report["headline"].endswith("no rows need attention")


def test_rows_set_aside_make_it_amber(prc):
    report = reporting.build_report(prc, outcome(rejected=[
        {"file": "offences", "row": 3, "stage": "validate", "reason": "crime_reference is missing (required)"}]))
    assert report["outcome"]["level"] == "amber"
    assert report["outcome"]["reasons"] == ["1 row set aside (not loaded)"]


def test_records_without_a_location_are_counted_listed_and_amber(prc):
    flagged = [{"file": "offences", "row": r, "stage": "geocode",
                "reason": "the postcode is not in the postcode reference"} for r in (4, 9)]
    geocoding = {"offences": {"supplied": 98, "failed": 2, "unplaced": 2, "total": 100}}
    report = reporting.build_report(prc, outcome(flagged=flagged, geocoding=geocoding))
    assert "2 loaded rows with a problem to fix" in report["headline"]
    assert report["summary"]["rows_loaded_with_problems"] == 2
    assert [(r["row"], r["action"]) for r in report["flagged_rows"]] == [
        (4, reporting.STAGE_ACTION["geocode"]), (9, reporting.STAGE_ACTION["geocode"])]
    assert report["outcome"]["level"] == "amber"
    assert "2 rows loaded without a location (not geocoded)" in report["outcome"]["reasons"]
    # 98% placed is above the feed's 95%: no rate warning on top
    assert not any("placed on the map" in r for r in report["outcome"]["reasons"])
    html = report_html.render_html(report)
    assert 'id="flagged"' in html and 'class="headline warn"' in html


def test_a_low_geocoding_rate_is_amber_even_without_row_flags(prc):
    geocoding = {"offences": {"supplied": 90, "failed": 10, "total": 100}}   # no per-row list (older manifest)
    report = reporting.build_report(prc, outcome(geocoding=geocoding))
    assert report["geocoding"]["placed_share"] == 0.9
    assert report["outcome"]["level"] == "amber"
    assert report["outcome"]["reasons"] == ["only 90.0% of records were placed on the map "
                                            "(this feed expects at least 95%)"]


def test_missing_linked_records_are_reported(prc):
    flagged = [{"file": "offenders", "row": 1, "stage": "link", "reason": "its crime_reference matches no row"}]
    report = reporting.build_report(prc, outcome(flagged=flagged))
    assert report["outcome"]["reasons"] == ["1 row loaded whose linked record is missing"]
    assert report["flagged_rows"][0]["action"] == reporting.STAGE_ACTION["link"]


@pytest.mark.parametrize("status", ["refused", "malformed", "blocked", "failed", "held"])
def test_not_loaded_is_red(prc, status):
    report = reporting.build_report(prc, outcome(status=status, quarantined=[
        {"file": "offences", "remote_name": "prc_offences_202609.csv.gpg", "reason": "not signed"}]))
    assert report["outcome"]["level"] == "red"
    assert report["outcome"]["reasons"][0] == reporting.STATUS_TEXT[status]
    assert 'class="headline bad"' in report_html.render_html(report)


def test_loaded_but_empty_is_red(prc):
    report = reporting.build_report(prc, outcome(loaded=0))
    assert report["outcome"]["level"] == "red"


def test_a_duplicate_delivery_is_not_a_plain_success(prc):
    assert reporting.build_report(prc, outcome(status="duplicate"))["outcome"]["level"] == "amber"


def test_the_report_names_the_displacement_setting(prc):
    o = outcome()
    o.sanitising = {"offences": {"records": 100, "rules": {"own_postcode": 90, "next_nearest": 10},
                                 "displacement": "nearest", "displacement_m": {"records": 100}}}
    report = reporting.build_report(prc, o)
    assert report["sanitising"]["offences"]["displacement"] == "nearest"
    assert "next nearest postcode with enough households" in report["metadata"]["geographic_method"]
    assert "next nearest postcode with enough households (Appendix 1)" in report_html.render_html(report)
    assert "next nearest 10" in report_html.render_text(report)


def test_the_report_counts_each_other_location(prc):
    o = outcome()
    o.sanitising = {"offences": {"records": 4, "rules": {"own_postcode": 4}, "displacement": "nearest",
                                 "other_locations": {"vehicle_keeper": {"own_postcode": 1, "moved": 2,
                                                                        "postcode_unknown": 1, "no_postcode": 0}}}}
    report = reporting.build_report(prc, o)
    assert report["sanitising"]["offences"]["other_locations"]["vehicle_keeper"]["moved"] == 2
    html = report_html.render_html(report)
    assert "Other locations in the records" in html and "<td>vehicle_keeper</td>" in html


# --- the partner's metadata file (guidance section 3.4) ------------------------------------------------------------

def _checked(prc, **changes):
    """What pipeline_parse._check_metadata records for the example metadata file, with changes."""
    from csp_observatory import metadata_docs, metadata_file
    from csp_observatory.schema import REPO_ROOT

    md = metadata_file.parse_metadata(
        (REPO_ROOT / "include" / "examples" / "police_recorded_crime_metadata.yaml").read_text(), prc)
    return {"file": "prc_metadata_202609.yaml.gpg", "expected": "prc_metadata_202609.yaml.gpg", "supplied": True,
            "refused": [], "document": metadata_docs.shown_document(md), "mismatches": [], "required": False,
            "recorded": True, **changes}


def test_metadata_that_matches_keeps_a_supply_green_and_shows_the_partners_words(prc):
    o = outcome()
    o.supply_metadata = _checked(prc)
    report = reporting.build_report(prc, o)
    assert report["outcome"]["level"] == "green"
    p = report["metadata"]["partner"]
    assert p["matches"] and p["read"] and p["catalogued"] and p["file"] == "prc_metadata_202609.yaml.gpg"
    assert p["caveats"][1].startswith("Ages of offenders and victims may be estimates")
    assert p["coding_systems"]["ethnicity"].startswith("IC1 = White - North European")
    assert p["records_declared"] == {"offences": 1240, "offenders": 412, "victims": 1105}
    fields = {(f["file"], f["name"]): f for f in report["metadata"]["datafields"]}
    assert fields[("offenders", "ethnicity")]["partner_explanation"].startswith("Officer-defined ethnicity")
    assert fields[("offences", "location_postcode")]["partner_explanation"] is None
    for view in (report, report_writing.partner_view(report)):
        page = report_html.render_html(view)
        assert "Ages of offenders and victims may be estimates" in page and "It matches the supply" in page
        text = json.dumps(view) + page
        assert "analysis@demo-constabulary.example" not in text and "Performance and Analysis Unit" not in text
    assert "Metadata prc_metadata_202609.yaml.gpg: matches the supply; 4 caveats" in report_html.render_text(report)


def test_metadata_that_does_not_match_makes_a_loaded_supply_amber_and_lists_each_difference(prc):
    mismatch = {"kind": "record_count", "file": "offences", "datafield": None,
                "message": "The metadata says the offences file has 1,240 records; it has 100 rows of data."}
    o = outcome()
    o.supply_metadata = _checked(prc, mismatches=[mismatch])
    report = reporting.build_report(prc, o)
    assert report["outcome"]["level"] == "amber"
    assert report["outcome"]["reasons"] == [
        "the metadata file does not match the supply in 1 way: " + mismatch["message"]]
    p = report_writing.partner_view(report)["metadata"]["partner"]
    assert p["mismatch_count"] == 1 and p["mismatches"] == [mismatch] and p["mismatches_by_kind"] == {"record_count": 1}
    page = report_html.render_html(report_writing.partner_view(report))
    assert "It does not match the supply" in page and "has 1,240 records; it has 100 rows" in page
    assert "  - " + mismatch["message"] in report_html.render_text(report)


def test_an_unreadable_metadata_file_on_a_loaded_supply_is_amber(prc):
    o = outcome(quarantined=[{"file": "metadata", "remote_name": "prc_metadata_202609.yaml.gpg",
                              "reason": "The metadata file cannot be used: agency is missing. The data of this "
                                        "supply were loaded without it."}])
    o.supply_metadata = _checked(prc, refused=["agency is missing (name of the agency)"], document=None,
                                 recorded=False)
    report = reporting.build_report(prc, o)
    assert report["outcome"]["level"] == "amber"
    assert "could not be read and was returned to you" in report["outcome"]["reasons"][0]
    page = report_html.render_html(report)
    assert "agency is missing (name of the agency)" in page and "The rest of the supply was loaded" in page


def test_a_first_supply_without_metadata_is_red_and_says_what_to_send(prc):
    from csp_observatory import metadata as M

    o = outcome(status="needs_metadata", quarantined=[{
        "file": "metadata", "remote_name": "prc_metadata_202609.yaml.gpg", "reason": M.missing_reason(prc, "202609")}])
    o.supply_metadata = _checked(prc, file=None, supplied=False, document=None, required=True, recorded=False)
    report = reporting.build_report(prc, o)
    assert report["outcome"]["level"] == "red"
    assert report["outcome"]["reasons"][0] == reporting.STATUS_TEXT["needs_metadata"]
    assert "Send prc_metadata_202609.yaml.gpg" in report["outcome"]["reasons"][1]
    page = report_html.render_html(report_writing.partner_view(report))
    assert "What to send" in page and "Your files stay in inbox/" in page
    assert "The first supply of a feed must carry one" in page
