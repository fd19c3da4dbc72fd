"""clean: whitespace, postcodes, Home Office and other codes, times, and duplicates by the file's key."""
from __future__ import annotations

import pandas as pd
import pytest

from csp_observatory.cleaning import clean, normalise_codes, normalise_times
from csp_observatory.postcodes import normalise_postcodes
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def _frame(feed_file, rows: list[dict]) -> pd.DataFrame:
    """A frame shaped like parse_csv's output: every datafield, string columns as pandas strings."""
    frame = pd.DataFrame(rows)
    for d in feed_file.datafields:
        if d.name not in frame.columns:
            frame[d.name] = pd.NA
        if d.type in ("string", "code", "postcode", "time"):
            frame[d.name] = frame[d.name].astype("string")
    frame["source_row"] = range(1, len(frame) + 1)
    return frame


def test_postcodes_take_the_normal_form_and_invalid_ones_become_null():
    raw = pd.Series(["hx11aa", "HX1  1AA", " hx6 2he ", "HX1", "HX1 1A", "not a postcode", None], dtype="string")
    assert normalise_postcodes(raw).tolist() == ["HX1 1AA", "HX1 1AA", "HX6 2HE", pd.NA, pd.NA, pd.NA, pd.NA]


def test_home_office_codes_lose_leading_zeros_and_other_codes_take_the_schema_spelling(schema):
    ho = schema.file("offences").field("ho_offence_code")
    got = normalise_codes(pd.Series(["028E", "08N", "58a", " 56A ", "999Z"], dtype="string"), ho)
    assert got.tolist() == ["28E", "8N", "58A", "56A", "999Z"]     # an unknown code is left for validation
    assert {"28E", "8N", "58A"} <= ho.allowed_codes
    assoc = schema.file("victims").field("association_with_offender")
    assert normalise_codes(pd.Series(["Ex-Partner", "STRANGER"], dtype="string"), assoc).tolist() == \
        ["ex-partner", "stranger"]


def test_times_become_hh_mm():
    raw = pd.Series(["0930", "9:05", "23:59:59", "07:00", None], dtype="string")
    assert normalise_times(raw).tolist() == ["09:30", "09:05", "23:59", "07:00", pd.NA]


def test_clean_tidies_text_and_counts_what_it_changed(schema):
    ff = schema.file("offences")
    frame = _frame(ff, [
        {"crime_reference": "CR1", "ho_offence_code": "028E", "location_address": "  12  King Cross Road,  Halifax ",
         "location_postcode": "hx11aa", "committed_from_time": "0930", "method_of_entry": "   "},
        {"crime_reference": "CR2", "ho_offence_code": "58A", "location_address": "Car park, Bankfield Museum",
         "location_postcode": "HX1", "committed_from_time": "10:00"},
    ])
    result = clean(frame, ff)
    out = result.frame
    assert out["location_address"].tolist() == ["12 King Cross Road, Halifax", "Car park, Bankfield Museum"]
    assert out["ho_offence_code"].tolist() == ["28E", "58A"]
    assert out["location_postcode"].tolist()[0] == "HX1 1AA" and pd.isna(out["location_postcode"].iloc[1])
    assert out["committed_from_time"].tolist() == ["09:30", "10:00"]
    assert pd.isna(out["method_of_entry"].iloc[0])
    assert result.changes["postcodes_invalid_nulled"] == {"location_postcode": 1}
    assert result.changes["codes_normalised"] == {"ho_offence_code": 1}
    assert result.changes["blank_to_null"] == {"method_of_entry": 1}
    assert result.removed.empty
    assert out["location_postcode"].dtype == "string"


def test_duplicates_by_key_keep_the_first_and_say_why(schema):
    ff = schema.file("offences")
    frame = _frame(ff, [
        {"crime_reference": "CR1", "ho_offence_code": "28E", "location_postcode": "HX1 1AA"},
        {"crime_reference": "CR2", "ho_offence_code": "58A", "location_postcode": "HX1 1AB"},
        {"crime_reference": "CR1", "ho_offence_code": "028E", "location_postcode": "hx11aa"},  # same once cleaned
        {"crime_reference": "CR2", "ho_offence_code": "58C", "location_postcode": "HX1 1AB"},  # conflicting
        {"crime_reference": "CR3", "ho_offence_code": "58C", "location_postcode": "HX1 1AB"},
    ])
    result = clean(frame, ff)
    assert result.frame["source_row"].tolist() == [1, 2, 5]
    assert result.frame.loc[result.frame["crime_reference"] == "CR2", "ho_offence_code"].tolist() == ["58A"]
    removed = dict(zip(result.removed["source_row"], result.removed["reason"]))
    assert sorted(removed) == [3, 4]
    assert "exact copy of row 1" in removed[3]
    assert "duplicate crime reference 'CR2' with different content" in removed[4] and "first row kept" in removed[4]
    assert set(result.removed["stage"]) == {"clean"} and set(result.removed["source_file"]) == {"offences"}
    assert result.changes["exact_duplicates_removed"] == 1
    assert result.changes["conflicting_duplicates_removed"] == 1
    assert len(result.frame) + len(result.removed) == len(frame)


def test_compound_keys(schema):
    ff = schema.file("offenders")
    frame = _frame(ff, [
        {"crime_reference": "CR1", "offender_reference": "V1", "gender": "F"},
        {"crime_reference": "CR1", "offender_reference": "V2", "gender": "m"},
        {"crime_reference": "CR2", "offender_reference": "V1", "gender": "M"},
        {"crime_reference": "CR1", "offender_reference": "V2", "gender": "F"},
    ])
    result = clean(frame, ff)
    assert result.frame["gender"].tolist() == ["F", "M", "M"]
    assert result.removed["source_row"].tolist() == [4]
    assert "crime reference and offender reference 'CR1 / V2'" in result.removed["reason"].iloc[0]


def test_a_file_keyed_by_content_keeps_identical_records(schema):
    # Two victims can be alike in every listed field (the guidance gives them no reference number): both count.
    ff = schema.file("victims")
    frame = _frame(ff, [{"crime_reference": "CR1", "gender": "F", "age": 30},
                        {"crime_reference": "CR1", "gender": "F", "age": 30}])
    result = clean(frame, ff)
    assert len(result.frame) == 2 and result.removed.empty
