"""Address sanitising: a table of real-looking forms, and properties every output must have."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory.addresses import ADDRESS_LEAK, sanitise_address, sanitise_addresses

pytestmark = pytest.mark.unit

FORMS = list(csv.DictReader(open(Path(__file__).parent / "data" / "address_forms.csv", encoding="utf-8")))
POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}\b")


def test_the_table_is_big_enough():
    assert len(FORMS) >= 60


@pytest.mark.parametrize("row", FORMS, ids=[r["input"][:40] for r in FORMS])
def test_address_forms(row):
    assert sanitise_address(row["input"]) == (row["expected"] or None)


def _digit_led_tokens(text: str) -> list[str]:
    """Tokens starting with a digit, not counting a postcode's inward code."""
    return [t for t in re.findall(r"(?<![A-Za-z0-9])\d[\w/-]*", POSTCODE.sub("", text))]


@pytest.mark.parametrize("row", FORMS, ids=[r["input"][:40] for r in FORMS])
def test_no_output_keeps_a_house_or_flat_number(row):
    out = sanitise_address(row["input"])
    if out is None:
        return
    assert _digit_led_tokens(out) == []
    assert not re.search(r"(?i)\b(flat|apartment|apt|unit|room|plot)\s*\w*\d", out)
    assert not re.search(ADDRESS_LEAK, out)


def test_generated_combinations_never_leak():
    # property-style: every combination of sub-premise, number and street loses its numbers
    subs = ["", "Flat 3, ", "Flat 3 ", "Apartment 12B ", "Unit 2A-2C, ", "Room 7, ", "Flat C, ", "2nd Floor Flat, "]
    nums = ["", "1 ", "12a ", "12-14 ", "14 - 16 ", "2/3 ", "Rear of 20 ", "o/s 14 ", "Land adjacent to 3 "]
    streets = ["King Cross Road", "Southgate", "Twenty Row", "Bull Green, Halifax HX1 1AA"]
    for s in subs:
        for n in nums:
            for st in streets:
                out = sanitise_address(f"{s}{n}{st}")
                assert out is not None, (s, n, st)
                assert _digit_led_tokens(out) == [], (s, n, st, out)
                assert not re.search(ADDRESS_LEAK, out), out
                assert st.split(",")[0] in out


def test_leak_pattern_flags_numbers_but_not_postcodes():
    assert re.search(ADDRESS_LEAK, "12 King Cross Road")
    assert re.search(ADDRESS_LEAK, "Flat 3, King Cross Road")
    assert re.search(ADDRESS_LEAK, "Flat B, King Cross Road")
    assert not re.search(ADDRESS_LEAK, "King Cross Road, Halifax HX1 1AA")


def test_postcode_in_text_is_replaced_or_removed():
    assert sanitise_address("5 Dean Court, Halifax HX1 1AA", "HX1 2AB") == "Dean Court, Halifax HX1 2AB"
    assert sanitise_address("5 Dean Court, Halifax, hx1  1aa", None) == "Dean Court, Halifax"
    assert sanitise_address("Car park, Bankfield Museum, HX3 6HG", "HX3 6HA") == "Car park, Bankfield Museum, HX3 6HA"


def test_vectorised_matches_scalar_and_keeps_index():
    texts = pd.Series([r["input"] for r in FORMS] + [None], index=range(100, 101 + len(FORMS)), dtype="string")
    out = sanitise_addresses(texts)
    assert list(out.index) == list(texts.index)
    assert [None if pd.isna(v) else v for v in out] == [sanitise_address(t) for t in [*texts[:-1], None]]
    pcs = pd.Series(["HX9 9ZZ"] * len(texts), index=texts.index)
    with_pc = sanitise_addresses(texts, postcodes=pcs)
    assert with_pc[100 + [r["input"] for r in FORMS].index("HX1 1AA")] == "HX9 9ZZ"
