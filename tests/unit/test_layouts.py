"""Partner layouts: a partner's own file becomes the canonical CSV of a feed file, which parsing then accepts."""
from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from csp_observatory import layouts as L, layouts_loading, layouts_model, layouts_reading
from csp_observatory.parsing import MalformedFile, parse_csv
from csp_observatory.schema import REFERENCE_DIR, SCHEMA_DIR
from csp_observatory.schema_loading import load_schema
from csp_observatory.validation import apply_row_rules

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "layouts"
STREET = DATA / "police_uk_street_2026-09_calderdale.csv"
STOP_SEARCH = DATA / "police_uk_stop_search_2026-09_calderdale.csv"
ISTV_XML = DATA / "istv_assaults_2026-09.xml"
ISTV_CSV = DATA / "istv_assaults_2026-09.csv"
FORCE_OFFENDERS = DATA / "demo_force_offenders_202609.csv"
CANONICAL_OFFENDERS = DATA / "canonical_offenders_202609.csv"
REFERENCE_PATTERN = r"^[A-Z0-9][A-Z0-9/-]{3,19}$"     # the schema's crime_reference pattern
QUOTES = set("'\"`\u2018\u2019\u201c\u201d")


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def _layout(name: str) -> layouts_model.Layout:
    return layouts_loading.load_layout(layouts_loading.LAYOUT_DIR / f"{name}.yaml")


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


def _without_column(src: Path, header: str, dst: Path) -> Path:
    rows = _rows(src)
    i = rows[0].index(header)
    return _write_rows(dst, [r[:i] + r[i + 1:] for r in rows])


def _reason_is_safe(reason: str) -> None:
    # Reports withhold anything quoted as if it were a value: a partner must be able to read every reason.
    assert not QUOTES & set(reason), reason


# --- every layout --------------------------------------------------------------------------------------------

LAYOUT_FILES = sorted(layouts_loading.LAYOUT_DIR.glob("*.yaml"))


def test_the_declared_layouts_are_there():
    assert {p.stem for p in LAYOUT_FILES} >= {"police_uk_street", "police_uk_stop_search", "nhs_istv_assaults",
                                               "demo_force_offenders"}


@pytest.mark.parametrize("path", LAYOUT_FILES, ids=lambda p: p.stem)
def test_every_layout_loads_and_targets_valid_names(path):
    layout = layouts_loading.load_layout(path)
    assert layout.id == path.stem                      # one file per layout, named by its id
    assert layout.target_names and set(layout.mapped) <= set(layout.target_names)
    assert layout.required <= set(layout.mapped)       # a layout maps every required datafield
    assert layout.caveats                              # caveats say what the mapping loses or assumes
    schema_path = SCHEMA_DIR / f"{layout.feed}.yaml"
    if schema_path.is_file():
        feed_file = load_schema(schema_path).file(layout.file)
        assert layout.target_names == tuple(feed_file.field_names)
        for c in layout.columns:
            allowed = feed_file.field(c.target).allowed_codes
            if c.codes is not None and allowed is not None:
                assert set(c.codes.values()) <= allowed
    else:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert raw["target"]["names"] == list(layout.target_names)
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in layout.target_names)
    assert layout in layouts_loading.layouts_for(layout.feed, layout.file)
    assert layouts_loading.layouts_for(layout.feed, layout.file)[-1].id == "canonical"


def test_every_layout_targets_its_feed_schema():
    """Now that every section 3.2 dataset has a schema, each layout maps onto its feed file's datafields."""
    from csp_observatory.schema_loading import load_schemas

    files = {(sch.feed, f.name): f for sch in load_schemas() for f in sch.files}
    for name in ("police_uk_stop_search", "nhs_istv_assaults", "police_uk_street", "demo_force_offenders"):
        layout = _layout(name)
        feed_file = files[(layout.feed, layout.file)]
        assert set(layout.mapped) <= set(feed_file.field_names), name
    istv = _layout("nhs_istv_assaults")
    # Free text that can name people or places is flagged for the sanitising stage.
    assert set(istv.free_text) == {"assault_method_other", "location_description"}


# --- data.police.uk street-level crime -----------------------------------------------------------------------

def test_police_uk_street_csv_parses_as_offences_with_asb_set_aside(tmp_path, schema):
    offences = schema.file("offences")
    layout = layouts_reading.detect(STREET, layouts_loading.layouts_for("police_recorded_crime", "offences"))
    assert layout is not None and layout.id == "police_uk_street"
    out = tmp_path / "offences.csv"
    result = L.apply(layout, STREET, out, offences)

    source = pd.read_csv(STREET, dtype=str, keep_default_na=False)
    asb = [i + 1 for i in source.index[source["Crime type"] == "Anti-social behaviour"]]
    assert len(source) == 30 and len(asb) == 2
    # The rows without a Crime ID are set aside by the layout, with a reason the partner can read.
    assert result.rejected["source_row"].tolist() == asb
    assert (result.rejected["stage"] == "layout").all()
    for reason in result.rejected["reason"]:
        assert "anti-social behaviour" in reason and "Crime ID" in reason
        _reason_is_safe(reason)
    assert result.rows == 28 and result.source_rows == [r for r in range(1, 31) if r not in asb]

    parsed = parse_csv(out, offences)
    assert parsed.rejected.empty and parsed.header_problems == []
    assert len(parsed.frame) == 28
    kept, rejected, nulled = apply_row_rules(parsed.frame, offences)
    assert rejected.empty and nulled == {} and len(kept) == 28     # every mapped row is usable as it stands

    frame = parsed.frame
    crimes = source[source["Crime ID"] != ""].reset_index(drop=True)
    # The reference: PUK + the first 16 hex digits of the Crime ID, upper-cased; valid and distinct.
    assert frame["crime_reference"].tolist() == ["PUK" + c[:16].upper() for c in crimes["Crime ID"]]
    assert frame["crime_reference"].str.fullmatch(REFERENCE_PATTERN).all()
    assert frame["crime_reference"].is_unique
    # The offence code is a code of the published category: joining the reference gives the category back.
    ho = pd.read_csv(REFERENCE_DIR / "ho_offence_codes.csv", dtype=str).set_index("ho_code")
    assert [ho.at[c, "police_uk_category"].lower() for c in frame["ho_offence_code"]] == \
        crimes["Crime type"].str.lower().tolist()
    assert (frame["committed_from_date"] == pd.Timestamp("2026-09-01")).all()
    assert frame["committed_from_time"].isna().all()
    # "On or near" is police.uk wording, not a place; "No location" is no location.
    assert frame.at[0, "location_address"] == "Commercial Street"
    no_location = crimes.index[crimes["Location"] == "No location"][0]
    assert pd.isna(frame.at[no_location, "location_address"]) and pd.isna(frame.at[no_location, "longitude"])
    assert frame["latitude"].dropna().between(53.70, 53.73).all()
    assert frame["longitude"].dropna().between(-1.92, -1.85).all()
    # Declared drops are silent; columns the schema does not supply are noted as written empty.
    assert not any("LSOA" in n or "Falls within" in n for n in result.notes)
    assert any("method_of_entry" in n for n in result.notes)


def test_category_codes_are_checked_against_the_reference(tmp_path):
    raw = yaml.safe_load((layouts_loading.LAYOUT_DIR / "police_uk_street.yaml").read_text(encoding="utf-8"))
    raw["columns"]["ho_offence_code"]["codes"]["Burglary"] = "58D"     # a criminal damage code
    with pytest.raises(layouts_model.LayoutError, match="58D"):
        layouts_loading.parse_layout(raw, tmp_path / "police_uk_street.yaml")


def test_quoted_file_reads_the_same_as_unquoted(tmp_path):
    # A file with quote marks is read by the strict csv module, not pyarrow's fast path: same output.
    layout = _layout("police_uk_street")
    quoted = tmp_path / "quoted.csv"
    with open(quoted, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(_rows(STREET))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    ra, rb = L.apply(layout, STREET, a), L.apply(layout, quoted, b)
    assert a.read_bytes() == b.read_bytes()
    assert ra.source_rows == rb.source_rows and ra.rejected.equals(rb.rejected)


def test_ragged_and_blank_rows_are_set_aside_and_counted_as_parsing_counts(tmp_path, schema):
    rows = _rows(STREET)
    rows[5] = rows[5] + ["extra"]                        # data row 5 has a value too many
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows[:8])
    csv.writer(text, lineterminator="\n").writerows([[], *rows[8:]])    # a blank line after data row 7
    broken = tmp_path / "broken.csv"
    broken.write_text(text.getvalue(), encoding="utf-8")
    result = L.apply(_layout("police_uk_street"), broken, tmp_path / "out.csv")
    reasons = dict(zip(result.rejected["source_row"], result.rejected["reason"]))
    assert reasons[5] == "row 5 has 13 values but the header has 12 columns"
    assert 3 in reasons                                  # the ASB row, still set aside with its own reason
    # The blank line after row 7 is not a row but is counted, as parsing counts it.
    assert 8 not in result.source_rows and result.source_rows[-1] == 31
    assert len(result.source_rows) == result.rows


def test_unreadable_csv_is_refused_with_parsing_reason(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(STREET.read_bytes() + b'x,"never closed,2026-09\n')
    with pytest.raises(MalformedFile, match="never closed") as exc:
        L.apply(_layout("police_uk_street"), bad, tmp_path / "out.csv")
    assert "line 32" in exc.value.reason


def test_windows_cp1252_is_read_and_noted(tmp_path):
    rows = _rows(STREET)
    rows[1][6] = "On or near Café Square"
    path = tmp_path / "cp1252.csv"
    path.write_bytes("\n".join(",".join(r) for r in rows).encode("cp1252"))
    result = L.apply(_layout("police_uk_street"), path, tmp_path / "out.csv")
    assert any("cp1252" in n for n in result.notes)
    assert pd.read_csv(tmp_path / "out.csv", dtype=str).at[0, "location_address"] == "Café Square"


# --- data.police.uk stop and search --------------------------------------------------------------------------

def test_police_uk_stop_and_search_maps_to_the_canonical_names(tmp_path):
    layout = _layout("police_uk_stop_search")
    assert layouts_reading.detect(STOP_SEARCH, layouts_loading.layouts_for("stop_and_search", "searches")) == layout
    out = tmp_path / "searches.csv"
    result = L.apply(layout, STOP_SEARCH, out)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    source = pd.read_csv(STOP_SEARCH, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(layout.target_names)
    assert result.rows == len(source) == 12 and result.rejected.empty
    assert frame.at[0, "search_date"] == "2026-09-01" and frame.at[0, "search_time"] == "22:40"   # local time
    assert set(frame["gender"]) == {"M", "F", "X", ""}
    assert frame.at[0, "ethnicity"] == "W1" and frame.at[1, "ethnicity"] == "A2"
    assert frame.at[5, "ethnicity"] == "NS"                             # Other ethnic group - Not stated
    assert frame.at[1, "reason_for_search"] == "Stolen goods" and frame.at[2, "result_of_search"] == "Arrest"
    assert frame.at[2, "longitude"] == "" and frame.at[0, "latitude"] == "53.722268"
    assert (frame["location_address"] == "").all()
    assert any("location_address" in n for n in result.notes)
    # No reference is published: a generated one is valid, and tells apart two identical searches.
    assert frame["search_reference"].str.fullmatch(REFERENCE_PATTERN).all()
    assert frame["search_reference"].is_unique
    assert (frame.iloc[3, 1:] == frame.iloc[4, 1:]).all()


def test_generated_reference_is_stable_when_the_month_is_re_sent_in_another_order(tmp_path):
    layout = _layout("police_uk_stop_search")
    rows = _rows(STOP_SEARCH)
    body = rows[1:]
    random.Random(3).shuffle(body)
    shuffled = _write_rows(tmp_path / "shuffled.csv", [rows[0], *body])
    L.apply(layout, STOP_SEARCH, tmp_path / "a.csv")
    L.apply(layout, shuffled, tmp_path / "b.csv")
    a = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(tmp_path / "b.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(a.set_index("search_reference").sort_index(),
                                  b.set_index("search_reference").sort_index())


def test_a_plain_list_of_names_is_a_target(tmp_path):
    layout = _layout("police_uk_stop_search")
    names = list(layout.target_names) + ["officer_defined_ethnicity"]    # say, once the schema grows
    L.apply(layout, STOP_SEARCH, tmp_path / "out.csv", names)
    assert _rows(tmp_path / "out.csv")[0] == names
    with pytest.raises(layouts_model.LayoutError, match="search_time"):
        L.apply(layout, STOP_SEARCH, tmp_path / "out.csv", [n for n in names if n != "search_time"])


# --- NHS ISTV (ISB 1594) -------------------------------------------------------------------------------------

def test_istv_xml_and_csv_give_identical_canonical_output(tmp_path):
    layout = _layout("nhs_istv_assaults")
    candidates = layouts_loading.layouts_for("ae_assaults", "assaults")
    assert layouts_reading.detect(ISTV_XML, candidates) == layout
    assert layouts_reading.detect(ISTV_CSV, candidates) == layout
    from_xml, from_csv = tmp_path / "xml.csv", tmp_path / "csv.csv"
    rx, rc = L.apply(layout, ISTV_XML, from_xml), L.apply(layout, ISTV_CSV, from_csv)
    assert from_xml.read_bytes() == from_csv.read_bytes()
    assert rx.rows == rc.rows == 6 and rx.rejected.empty and rc.rejected.empty
    assert rx.free_text == rc.free_text == ("assault_method_other", "location_description")

    frame = pd.read_csv(from_xml, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(layout.target_names)
    assert (frame["site_code"] == "ZZ901").all()                       # from the submission header, upper-cased
    assert (frame["reporting_period_start"] == "2026-09-01").all()
    assert (frame["reporting_period_end"] == "2026-09-30").all()
    assert frame.loc[0, ["arrival_date", "arrival_time", "incident_date", "incident_time"]].tolist() == \
        ["2026-09-05", "23:48", "2026-09-05", "23:10"]
    assert frame.at[1, "assault_method_other"] == "struck with a glass bottle"
    assert frame.at[1, "location_description"] == "inside a pub, Bull Green"
    # every location type of the sample is one the layout understands: none is left for validation to blank
    assert frame["location_type"].tolist() == ["outside licensed premises", "in licensed premises",
                                               "in licensed premises", "at home", "other", "other"]
    assert frame.loc[4, ["arrival_date", "arrival_time"]].tolist() == ["", ""]     # arrival is not mandatory
    # Two assaults arriving at one site in the same minute still get distinct, valid references.
    assert frame["attendance_reference"].is_unique
    assert frame["attendance_reference"].str.fullmatch(r"AE[0-9A-F]{16}").all()


def test_istv_element_names_tolerate_namespaces_prefixes_and_grouping(tmp_path):
    xml = (b'<?xml version="1.0"?><n:ISTV xmlns:n="urn:x"><n:ReportingPeriodStartDate>2026-09-01'
           b'</n:ReportingPeriodStartDate><n:ReportingPeriodEndDate>2026-09-30</n:ReportingPeriodEndDate>'
           b'<n:SiteCode>ZZ901</n:SiteCode><n:Assaults><n:Assault><n:AssaultDateTime>2026-09-05T23:10:00Z'
           b'</n:AssaultDateTime><n:AssaultMethod>01</n:AssaultMethod><n:AssaultLocationType>03'
           b'</n:AssaultLocationType></n:Assault></n:Assaults></n:ISTV>')
    src = tmp_path / "short.xml"
    src.write_bytes(xml)
    result = L.apply(_layout("nhs_istv_assaults"), src, tmp_path / "out.csv")
    row = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False).iloc[0]
    assert result.rows == 1
    assert (row["site_code"], row["incident_date"], row["incident_time"]) == ("ZZ901", "2026-09-05", "23:10")


#: ASSAULT LOCATION TYPE as departments send it -> the guidance's type of location (the ae_assaults schema's code):
#: the guidance's words and short forms, and the NHS A and E INCIDENT LOCATION TYPE codes with their words.
ISTV_LOCATION_TYPES = {
    "At home": "at home", "home": "at home", "In a licensed premise": "in licensed premises",
    "LICENSED PREMISES": "in licensed premises", "Outside a licensed premise": "outside licensed premises",
    "outside licensed premises": "outside licensed premises", "On the street": "on the street",
    "Street": "on the street", "Other": "other",
    "10": "at home", "40": "other", "Work": "other", "50": "other", "Educational Establishment": "other",
    "60": "other", "Public place": "other", "91": "other",
}
_ISTV_HEADER = ["Reporting Period Start Date", "Reporting Period End Date", "Site Code (of Treatment)",
                "Arrival Date and Time at Accident and Emergency Department", "Assault Date and Time", "Assault Method",
                "Assault Location Type", "Assault Location Description"]


def _istv_files(tmp_path: Path, location_types: list[str]) -> tuple[Path, Path]:
    """One ISTV submission of one assault per location type, as a CSV and as XML."""
    rows = [["01/09/2026", "30/09/2026", "ZZ901", f"05/09/2026 23:{i:02d}", "05/09/2026 22:10", "01", code,
             "Bull Green"] for i, code in enumerate(location_types)]
    csv_path = _write_rows(tmp_path / "istv.csv", [_ISTV_HEADER, *rows])
    assaults = "".join(
        f"<Assault><ArrivalDateAndTimeAtAccidentAndEmergencyDepartment>2026-09-05T23:{i:02d}:00"
        f"</ArrivalDateAndTimeAtAccidentAndEmergencyDepartment><AssaultDateAndTime>2026-09-05T22:10:00"
        f"</AssaultDateAndTime><AssaultMethod>01</AssaultMethod><AssaultLocationType>{code}</AssaultLocationType>"
        f"<AssaultLocationDescription>Bull Green</AssaultLocationDescription></Assault>"
        for i, code in enumerate(location_types))
    xml_path = tmp_path / "istv.xml"
    xml_path.write_text(f'<?xml version="1.0" encoding="UTF-8"?><IstvSubmission><ReportingPeriodStartDate>2026-09-01'
                        f'</ReportingPeriodStartDate><ReportingPeriodEndDate>2026-09-30</ReportingPeriodEndDate>'
                        f'<SiteCodeOfTreatment>ZZ901</SiteCodeOfTreatment>{assaults}</IstvSubmission>',
                        encoding="utf-8")
    return csv_path, xml_path


def test_istv_location_types_map_onto_the_guidances_types_in_csv_and_xml(tmp_path):
    layout = _layout("nhs_istv_assaults")
    assaults = load_schema(SCHEMA_DIR / "ae_assaults.yaml").file("assaults")
    assert set(ISTV_LOCATION_TYPES.values()) == assaults.field("location_type").allowed_codes
    sent = list(ISTV_LOCATION_TYPES)
    frames = []
    for src in _istv_files(tmp_path, sent):
        out = tmp_path / f"{src.suffix[1:]}.out.csv"
        result = L.apply(layout, src, out)
        assert result.rows == len(sent) and not any(n.startswith("location_type") for n in result.notes)
        parsed = parse_csv(out, assaults)
        kept, rejected, nulled = apply_row_rules(parsed.frame, assaults)
        assert rejected.empty and "location_type" not in nulled
        assert kept["location_type"].tolist() == [ISTV_LOCATION_TYPES[c] for c in sent]
        frames.append(out.read_bytes())
    assert frames[0] == frames[1]                         # the CSV and the XML give one canonical file


def test_an_istv_location_type_not_in_the_map_is_counted_and_left_empty(tmp_path):
    layout = _layout("nhs_istv_assaults")
    assaults = load_schema(SCHEMA_DIR / "ae_assaults.yaml").file("assaults")
    for src in _istv_files(tmp_path, ["03", "10", "Car park behind Hambone Yard"]):
        out = tmp_path / f"{src.suffix[1:]}.out.csv"
        result = L.apply(layout, src, out)
        # the layout's convention for a value its code map does not know: passed on, counted in a note naming
        # the datafield, never quoted; nothing is set aside for it
        note = next(n for n in result.notes if n.startswith("location_type"))
        assert "2 value(s)" in note and "Hambone" not in note and "03" not in note
        assert result.rejected.empty and result.rows == 3
        parsed = parse_csv(out, assaults)
        kept, rejected, nulled = apply_row_rules(parsed.frame, assaults)
        # validation blanks an optional code that is not the schema's, counts it, and keeps the row
        assert rejected.empty and nulled == {"location_type": 2}
        assert kept["location_type"].isna().tolist() == [True, False, True]
        assert kept.at[1, "location_type"] == "at home"


BOMBS = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b']><IstvSubmission><SiteCode>&lol9;</SiteCode></IstvSubmission>',
    "external entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                       b'<IstvSubmission><SiteCode>&e;</SiteCode></IstvSubmission>',
    "bare doctype": b'<!DOCTYPE IstvSubmission><IstvSubmission><Assault/></IstvSubmission>',
}


@pytest.mark.parametrize("name", BOMBS)
def test_xml_with_a_doctype_is_refused(tmp_path, name):
    src = tmp_path / "bomb.xml"
    src.write_bytes(BOMBS[name])
    layout = _layout("nhs_istv_assaults")
    with pytest.raises(MalformedFile, match="DOCTYPE") as exc:
        L.apply(layout, src, tmp_path / "out.csv")
    _reason_is_safe(exc.value.reason)
    with pytest.raises(MalformedFile, match="DOCTYPE"):
        layouts_reading.detect(src, [layout])
    assert not (tmp_path / "out.csv").exists()


def test_xml_that_is_not_well_formed_is_refused_by_line(tmp_path):
    src = tmp_path / "bad.xml"
    src.write_bytes(ISTV_XML.read_bytes().replace(b"</AssaultMethod>", b"</AssaultMethd>", 1))
    with pytest.raises(MalformedFile, match=r"not well-formed: mismatched tag at line \d+") as exc:
        L.apply(_layout("nhs_istv_assaults"), src, tmp_path / "out.csv")
    _reason_is_safe(exc.value.reason)


def test_an_assault_with_a_repeated_element_is_set_aside(tmp_path):
    src = tmp_path / "twice.xml"
    once = b"<AssaultMethod>02</AssaultMethod>"
    src.write_bytes(ISTV_XML.read_bytes().replace(once, once + b"<AssaultMethod>03</AssaultMethod>"))
    result = L.apply(_layout("nhs_istv_assaults"), src, tmp_path / "out.csv")
    assert result.rejected["source_row"].tolist() == [4] and result.source_rows == [1, 2, 3, 5, 6]
    assert "AssaultMethod" in result.rejected.at[0, "reason"]


def test_xml_sent_to_a_csv_layout_is_refused(tmp_path):
    with pytest.raises(MalformedFile, match="is XML"):
        L.apply(_layout("police_uk_street"), ISTV_XML, tmp_path / "out.csv")


# --- two partners, one feed file -----------------------------------------------------------------------------

def test_two_layouts_for_one_file_both_parse_to_the_same_rows(tmp_path, schema):
    offenders = schema.file("offenders")
    candidates = layouts_loading.layouts_for("police_recorded_crime", "offenders")
    assert [c.id for c in candidates] == ["demo_force_offenders", "canonical"]
    frames = {}
    for src in (FORCE_OFFENDERS, CANONICAL_OFFENDERS):
        layout = layouts_reading.detect(src, candidates)
        out = tmp_path / f"{src.stem}.out.csv"
        result = L.apply(layout, src, out, offenders)
        parsed = parse_csv(out, offenders)
        assert result.rows == 8 and parsed.rejected.empty and parsed.header_problems == []
        kept, rejected, nulled = apply_row_rules(parsed.frame, offenders)
        assert rejected.empty and nulled == {}
        frames[layout.id] = (kept, result)
    assert set(frames) == {"demo_force_offenders", "canonical"}
    pd.testing.assert_frame_equal(frames["demo_force_offenders"][0], frames["canonical"][0])
    force = frames["demo_force_offenders"][0]
    assert force["ethnicity"].tolist() == ["IC1", "IC4", "IC4", "IC3", "IC9", "IC2", "IC6", "IC5"]
    assert force["gender"].tolist() == ["M", "F", "M", "M", "U", "M", "F", "M"]
    notes = frames["demo_force_offenders"][1].notes
    # A column neither mapped nor dropped is left out and named; a declared drop is silent and never written.
    assert any("left out" in n and "Warning Markers" in n for n in notes)
    assert not any("PNC" in n for n in notes)
    assert "PNC" not in (tmp_path / f"{FORCE_OFFENDERS.stem}.out.csv").read_text()


def test_a_word_missing_from_the_code_map_is_passed_on_for_validation(tmp_path, schema):
    rows = _rows(FORCE_OFFENDERS)
    rows[1][5] = "Mixed"
    src = _write_rows(tmp_path / "f.csv", rows)
    result = L.apply(_layout("demo_force_offenders"), src, tmp_path / "out.csv")
    note = next(n for n in result.notes if n.startswith("ethnicity"))
    assert "1 value(s)" in note and "Mixed" not in note               # counted, never quoted
    parsed = parse_csv(tmp_path / "out.csv", schema.file("offenders"))
    assert parsed.frame.at[0, "ethnicity"] == "Mixed"
    _, _, nulled = apply_row_rules(parsed.frame, schema.file("offenders"))
    assert nulled == {"ethnicity": 1}                                  # validation judges it, as for any partner


@pytest.mark.parametrize("src,layout,header,datafield", [
    (FORCE_OFFENDERS, "demo_force_offenders", "Crime Number", "crime_reference"),
    (STREET, "police_uk_street", "Crime type", "ho_offence_code"),
])
def test_an_unmapped_required_datafield_is_refused_naming_it(tmp_path, src, layout, header, datafield):
    partial = _without_column(src, header, tmp_path / "partial.csv")
    with pytest.raises(MalformedFile) as exc:
        L.apply(_layout(layout), partial, tmp_path / "out.csv")
    reason = exc.value.reason
    assert datafield in reason and layouts_model.key(header) in layouts_model.key(reason)
    _reason_is_safe(reason)
    assert not (tmp_path / "out.csv").exists()
    # Detection would not have chosen the layout for such a file either.
    assert layouts_reading.detect(partial, [_layout(layout)]) is None


def test_a_mapped_column_twice_in_the_header_is_refused(tmp_path):
    rows = _rows(FORCE_OFFENDERS)
    src = _write_rows(tmp_path / "f.csv", [r + [r[3]] for r in rows])            # Sex twice
    with pytest.raises(MalformedFile, match="Sex appears more than once"):
        L.apply(_layout("demo_force_offenders"), src, tmp_path / "out.csv")


def test_detect_returns_none_for_a_file_no_layout_knows(tmp_path):
    src = _write_rows(tmp_path / "f.csv", [["Incident No", "When", "Where"], ["1", "2026-09-01", "Halifax"]])
    assert layouts_reading.detect(src, layouts_loading.layouts_for("police_recorded_crime", "offences")) is None


# --- checking the layouts themselves ------------------------------------------------------------------------

def _street_raw() -> dict:
    return yaml.safe_load((layouts_loading.LAYOUT_DIR / "police_uk_street.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("change,message", [
    (lambda r: r["columns"].update(crime_ref="Crime ID"), "not datafields"),
    (lambda r: r["columns"].pop("ho_offence_code"), "does not map"),
    (lambda r: r["columns"]["ho_offence_code"]["codes"].update(Fraud="FRAUD1"), "codes not in the schema"),
    (lambda r: r["columns"]["committed_from_date"].update(transform="reverse"), "unknown transform"),
    (lambda r: r["drop"].append("Month"), "both mapped and dropped"),
    (lambda r: r["set_aside"][0].update(reason="it's anti-social behaviour"), "no quote marks"),
    (lambda r: r.update(feed="no_such_feed"), "must name its target"),
])
def test_a_layout_that_does_not_fit_its_target_is_refused(tmp_path, change, message):
    raw = _street_raw()
    change(raw)
    with pytest.raises(layouts_model.LayoutError, match=message):
        layouts_loading.parse_layout(raw, tmp_path / "x.yaml")


def test_key_reads_headers_and_elements_alike():
    assert (layouts_model.key("SITE CODE (OF TREATMENT)") == layouts_model.key("SiteCodeOfTreatment")
            == layouts_model.key("site_code_of_treatment"))
    assert layouts_model.key(" Crime ID ") == layouts_model.key("crime-id")
