"""Free-text scrubbing (issue 6, part 7): what is removed, what is left alone, counts, and the report's view."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import pytest

from csp_observatory import report_html, reporting, scrubbing
from csp_observatory.demo_data import ENTRY, OCCUPATIONS, PROPERTY, WEAPONS
from csp_observatory.reporting import SupplyOutcome
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

#: (text, kind, the personal part): the part must be gone and the kind's marker in its place.
FORMS = [
    # postcodes: full, any case, with, without or with a double space
    ("seen near HX1 2AB", "postcode", "HX1 2AB"),
    ("seen near hx1 2ab", "postcode", "hx1 2ab"),
    ("seen near HX12AB", "postcode", "HX12AB"),
    ("seen near HX1  2AB", "postcode", "HX1  2AB"),
    ("from SW1A 1AA", "postcode", "SW1A 1AA"),
    ("from M1 1AE", "postcode", "M1 1AE"),
    ("from OL14 6AB.", "postcode", "OL14 6AB"),
    # house numbers with a street, and flats
    ("entered 12 Acacia Avenue via the back", "address", "12 Acacia Avenue"),
    ("taken from 12a High St", "address", "12a High St"),
    ("12-14 King Cross Road", "address", "12-14 King Cross Road"),
    ("at 3 The Green", "address", "3 The Green"),
    ("lives at no. 3 acacia avenue", "address", "3 acacia avenue"),
    ("lives at 27 gibbet street", "address", "27 gibbet street"),
    ("Flat 3", "address", "Flat 3"),
    ("Apartment 4B, Dean Clough Mills", "address", "Apartment 4B"),
    ("flat B above the shop", "address", "flat B"),
    # dates
    ("DOB 12/03/1985", "date", "12/03/1985"),
    ("born 12-3-85", "date", "12-3-85"),
    ("on 1985-03-12", "date", "1985-03-12"),
    ("on 12.03.1985", "date", "12.03.1985"),
    ("born 12 March 1985", "date", "12 March 1985"),
    ("born 1st of May 1985", "date", "1st of May 1985"),
    ("born March 12, 1985", "date", "March 12, 1985"),
    ("born Sept 1985", "date", "Sept 1985"),
    ("dob: 120385", "date", "120385"),
    # phone numbers
    ("call 07700 900123", "phone", "07700 900123"),
    ("call 07700900123", "phone", "07700900123"),
    ("call +44 7700 900123", "phone", "+44 7700 900123"),
    ("call +447700900123", "phone", "+447700900123"),
    ("call +44 (0)1422 123456", "phone", "1422 123456"),
    ("tel (01422) 123456", "phone", "(01422) 123456"),
    ("tel 0113 496 0000", "phone", "0113 496 0000"),
    ("tel 01422-123456", "phone", "01422-123456"),
    # e-mail addresses
    ("mail jo.bloggs@example.com now", "email", "jo.bloggs@example.com"),
    ("JO_BLOGGS+x@mail.example.co.uk", "email", "JO_BLOGGS+x@mail.example.co.uk"),
    # names
    ("taken by Mr John Smith", "name", "John Smith"),
    ("Mrs Smith saw it", "name", "Smith"),
    ("mrs smith saw it", "name", "smith"),
    ("Dr. J. Patel", "name", "Patel"),
    ("MR JOHN SMITH", "name", "SMITH"),
    ("Miss Jane Grey", "name", "Jane Grey"),
    ("Name: Jo Bloggs", "name", "Jo Bloggs"),
    ("surname - Bloggs", "name", "Bloggs"),
    ("known as Dave Jones", "name", "Dave Jones"),
    ("offender John Smith ran off", "name", "John Smith"),
    ("SARAH JONES", "name", "SARAH JONES"),
]

#: What police systems really hold in these fields (the demo's values): nothing to scrub.
ORDINARY = [*ENTRY, *PROPERTY, *OCCUPATIONS, *WEAPONS, "2 bikes from the garden", "did not miss the bus",
            "master bedroom window", "rev the engine", "Entered via Victoria Road", "from Lord Street",
            "Flat screen TV", "Ford Fiesta", "28/1", "3 laptops", "Door forced at 10pm", "1st floor window",
            "Hands/feet", "approx 2 metres"]


def _one(text: str | None, profile: scrubbing.Profile = "free_text") -> tuple[str | None, dict[str, int]]:
    out, counts = scrubbing.scrub(pd.Series([text], dtype="string"), profile)
    value = out.iloc[0]
    return (None if pd.isna(value) else value), counts


@pytest.mark.parametrize("text, kind, personal", FORMS)
def test_each_form_is_replaced_by_its_marker(text, kind, personal):
    out, counts = _one(text)
    assert personal not in out
    assert f"[{kind}]" in out
    assert counts[kind] == 1
    assert sum(counts.values()) == 1, counts          # nothing else was taken for personal data


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_free_text_is_left_alone(text):
    out, counts = _one(text)
    assert out == text
    assert sum(counts.values()) == 0


def test_everything_at_once_and_counts_by_kind():
    text = ("Stolen by Mr John Smith of 12 Acacia Avenue, HX1 2AB, DOB 12/03/1985, "
            "tel 07700 900123, jo@example.com")
    out, counts = _one(text)
    assert out == "Stolen by [name] of [address], [postcode], [date], tel [phone], [email]"
    assert counts == {"email": 1, "postcode": 1, "phone": 1, "date": 1, "address": 1, "name": 1}


def test_combinations_never_leak_and_scrubbing_is_stable():
    """Every personal form in every carrier sentence: nothing is found afterwards, and a second pass changes nothing."""
    carriers = ["{}", "Rear door forced by {}", "{} - window smashed", "Seen: {}; left on foot",
                "PROPERTY OF {} RECOVERED"]
    texts = [c.format(f[0]) for c, f in itertools.product(carriers, FORMS)]
    texts += [f"{a[0]} and {b[0]}" for a, b in zip(FORMS, FORMS[7:] + FORMS[:7])]
    series = pd.Series(texts, dtype="string")
    out, counts = scrubbing.scrub(series)
    assert scrubbing.find(out).to_numpy().sum() == 0
    again, counts_again = scrubbing.scrub(out)
    assert again.equals(out) and sum(counts_again.values()) == 0
    for (text, kind, personal), carrier in itertools.product(FORMS, carriers):
        assert personal not in out.iloc[texts.index(carrier.format(text))]
    assert sum(counts.values()) >= len(carriers) * len(FORMS)


def test_missing_values_index_name_and_dtype_are_kept():
    s = pd.Series(["Mrs Smith", None, "Cash", "Mrs Smith"], index=[10, 11, 12, 13], name="property_stolen",
                  dtype="string")
    out, counts = scrubbing.scrub(s)
    assert out.dtype == s.dtype and out.name == "property_stolen" and list(out.index) == [10, 11, 12, 13]
    assert out.isna().tolist() == [False, True, False, False]
    assert out[13] == "[name]" and out[12] == "Cash"
    assert counts["name"] == 2                              # counted per row, not per distinct value
    python_str = pd.Series(["Mrs Smith", None], dtype="str")
    assert scrubbing.scrub(python_str)[0].tolist()[0] == "[name]"
    obj = pd.Series(["Mrs Smith", None], dtype=object)
    assert scrubbing.scrub(obj)[0].iloc[0] == "[name]"


@pytest.mark.parametrize("values", [[], [None, None], ["Cash", "Cash"]])
def test_empty_all_missing_and_clean_columns(values):
    s = pd.Series(values, dtype="string")
    out, counts = scrubbing.scrub(s)
    assert out.equals(s)
    assert counts == dict.fromkeys(scrubbing.KINDS, 0)
    assert scrubbing.find(s).to_numpy().sum() == 0


def test_find_counts_per_row_and_kind_without_changing_anything():
    s = pd.Series(["Mrs Smith, 07700 900123", "Cash", None, "HX1 2AB and HX2 0AA"], dtype="string")
    found = scrubbing.find(s)
    assert list(found.columns) == list(scrubbing.KINDS)
    assert found.loc[0, "name"] == 1 and found.loc[0, "phone"] == 1
    assert found.loc[1].sum() == 0 and found.loc[2].sum() == 0
    assert found.loc[3, "postcode"] == 2


def test_address_profile_keeps_the_sanitised_postcode_and_streets():
    s = pd.Series(["King Cross Road, Halifax HX1 2AB", "Park Dr, Halifax", "Moor Dr Halifax",
                   "King Cross Road, c/o Mrs Smith", "Gibbet Street jo@example.com", "Victoria Road, Halifax"],
                  dtype="string")
    out, counts = scrubbing.scrub(s, "address")
    assert out.tolist() == ["King Cross Road, Halifax HX1 2AB", "Park Dr, Halifax", "Moor Dr Halifax",
                            "King Cross Road, c/o [name]", "Gibbet Street [email]", "Victoria Road, Halifax"]
    assert counts == {"email": 1, "phone": 0, "date": 0, "name": 1}
    with pytest.raises(ValueError, match="profile"):
        scrubbing.scrub(s, "nonsense")  # type: ignore[arg-type]


def test_a_million_values_take_seconds_not_minutes():
    """Vectorised: the whole column in Arrow, each distinct value once (the benchmark is issue 7's)."""
    rng = np.random.default_rng(1)
    pool = np.array([*ORDINARY, "Stolen by Mr John Smith of 12 Acacia Avenue, HX1 2AB"])
    s = pd.Series(pool[rng.integers(0, len(pool), 1_000_000)], dtype="string")
    t = time.perf_counter()
    out, counts = scrubbing.scrub(s)
    assert time.perf_counter() - t < 20
    assert counts["name"] == counts["address"] == counts["postcode"] == int((s == pool[-1]).sum())


def _outcome(sanitising: dict) -> SupplyOutcome:
    return SupplyOutcome(supply_id="police_recorded_crime/202609", period="202609", status="loaded",
                         sanitising=sanitising)


def test_report_shows_counts_per_column_and_no_column_is_simply_kept_when_scrubbed():
    prc = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    scrubbed = {"method_of_entry": {"email": 0, "postcode": 1, "phone": 0, "date": 2, "address": 3, "name": 4},
                "location_address": {"email": 5, "phone": 0, "date": 0, "name": 0}}
    report = reporting.build_report(prc, _outcome({"offences": {"records": 10, "rules": {},
                                                                "displacement_m": {"records": 0},
                                                                "scrubbed": scrubbed}}))
    assert report["sanitising"]["offences"]["scrubbed"] == scrubbed
    fields = {(f["file"], f["name"]): f["in_observatory"] for f in report["metadata"]["datafields"]}
    for col in ("method_of_entry", "property_stolen", "weapon_used"):
        assert "scrubbed" in fields[("offences", col)]
    assert "scrubbed" in fields[("offenders", "occupation")] and "scrubbed" in fields[("victims", "occupation")]
    assert fields[("offences", "flag_drugs")] == "kept"
    page = report_html.render_html(report)
    assert "Personal data scrubbed from free text" in page
    row = page[page.index("<code>method_of_entry</code>"):].split("</tr>")[0]
    assert [c.split("</td>")[0] for c in row.split("<td>")[1:]] == ["1", "3", "2", "0", "0", "4"]
    text = report_html.render_text(report)
    assert "method_of_entry 1 postcode, 2 date, 3 address, 4 name" in text
    assert "location_address 5 email" in text
