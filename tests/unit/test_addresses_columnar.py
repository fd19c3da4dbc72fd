"""The columnar ``sanitise_addresses`` gives exactly what ``sanitise_address`` gives row by row (issue 9).

The per-row function is the reference: thousands of generated addresses (house numbers, ranges, flats, PO boxes,
road numbers, postcodes in the text, Unicode, quotes, commas, newlines, blanks) with every kind of replacement
postcode (a normal one, none, an empty one, odd spellings) must come out the same through both paths.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory.addresses import _SLOT, _digits_as_zero, sanitise_address, sanitise_addresses

pytestmark = pytest.mark.unit

FORMS = [r["input"] for r in csv.DictReader(open(Path(__file__).parent / "data" / "address_forms.csv",
                                                   encoding="utf-8"))]
SUBS = ["", "Flat 3, ", "Flat 12 ", "Apartment 12B ", "Unit 2A-2C, ", "Room 7, ", "Flat C, ", "2nd Floor Flat, ",
        "PO Box 12, ", "P.O. Box 7 ", "Ground Floor, ", "Suite 5 ", "Plot 40, ", "Studio 9, ", "Block B, "]
NUMBERS = ["", "1 ", "12a ", "12A ", "12-14 ", "14 - 16 ", "2/3 ", "12 & 14 ", "Rear of 20 ", "o/s 14 ", "no. 7 ",
           "Land adjacent to 3 ", "opp 5 ", "250 ", "9999 ", "07 ", "1st ", "12 to 16 "]
NAMES = ["", "Rose Cottage, ", "The Old Vicarage, ", "Hill Top House, ", "Highfield, ", "Dean Clough Mills, ",
         "Bankfield Industrial Estate, "]
STREETS = ["King Cross Road", "Southgate", "Twenty Row", "Dean Court", "Mill Lane", "Bull Green", "A58 Road",
           "Station Road", "Ripponden Old Lane", "Rue de l'Église", "Ærø Gade", "O'Neill's Way", "High St."]
TOWNS = ["", ", Halifax", ", Hebden Bridge", ",Halifax", " , Halifax", ", Sowerby Bridge, West Yorkshire",
         ", Luddenden"]
POSTCODES_IN_TEXT = ["", " HX1 1AA", ", hx1  1aa", ", HX11AA", ", M1 1AE", ", HX1 1AA, HX2 0BB", " SW1A 1AA",
                     ", hx1\t1aa", " EC1A 1BB'S", ", W1 0AX Farm", "HX1 1AA", ", é HX3 5AX", ", Hx7 8Tb", ",HX1 1AAB",
                     ", XHX1 1AA", ", HX1 1AA2", ", Park HX1 1AA", ", WC2N 5DU, Lodge"]
ODD = ["", "   ", " , ", "Car park, Piece Hall", "Car park,Piece Hall", "Shroggs Park", "People's Park, HX1 2AB",
       "Footpath by the Rochdale Canal", "Rose Cottage, Moor Lane, Luddenden", "Flat 3", "12", "12a", "Flat B",
       '"Flat 3, 12 King Cross Road"', "12 King Cross Road,\nHalifax", "12\tKing  Cross Road", "١٢ King Cross Road",
       "12 King Cross Road \u00a0Halifax", "Waste ground off 14 Pellon Lane", "12 Park Road, Halifax",
       f"12 King Cross Road{_SLOT}", "Room 101, Town Hall, Crossley Street", "5, 7 & 9 Horton Street",
       "Unit 7, Bankfield Industrial Estate", "Apartment 14, Dean Clough Mills, Halifax HX3 5AX", "M62 J24",
       "12A-12C Northgate, HX1 1UN", "Flat 1A, 2-4 Commercial Street", "😀 12 King Cross Road"]
REPLACEMENTS = ["HX1 2AB", "HX9 9ZZ", "M1 1AE", "SW1A 1AA", None, "", "hx1 2ab", "HX1  2AB", " HX1 2AB", "A,B",
                "HX1\\2AB", f"HX1{_SLOT}"]


def _generated(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.05:
            out.append(None)
        elif roll < 0.2:
            out.append(rng.choice(ODD + FORMS))
        else:
            out.append(f"{rng.choice(SUBS)}{rng.choice(NAMES) if rng.random() < 0.2 else ''}{rng.choice(NUMBERS)}"
                       f"{rng.choice(STREETS)}{rng.choice(TOWNS)}{rng.choice(POSTCODES_IN_TEXT)}")
    return out


def _per_row(texts: list[str | None], postcodes: list[str | None] | None) -> list[str | None]:
    if postcodes is None:
        return [sanitise_address(t) for t in texts]
    return [sanitise_address(t, p) for t, p in zip(texts, postcodes)]


def _values(series: pd.Series) -> list[str | None]:
    return [None if pd.isna(v) else v for v in series]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columnar_matches_per_row_with_replacement_postcodes(seed):
    texts = _generated(4000, seed)
    rng = random.Random(seed * 7)
    pcs = [rng.choice(REPLACEMENTS) for _ in texts]
    index = pd.RangeIndex(10, 10 + len(texts))
    out = sanitise_addresses(pd.Series(texts, index=index, dtype="string"), pd.Series(pcs, index=index))
    assert list(out.index) == list(index)
    assert str(out.dtype) == "string"
    expected = _per_row(texts, pcs)
    mismatches = [(t, p, e, o) for t, p, e, o in zip(texts, pcs, expected, _values(out)) if e != o]
    assert mismatches == []


@pytest.mark.parametrize("seed", [4, 5])
def test_columnar_matches_per_row_keeping_postcodes(seed):
    texts = _generated(3000, seed)
    out = sanitise_addresses(pd.Series(texts, dtype="string"))
    assert _values(out) == _per_row(texts, None)


def test_every_table_form_with_each_kind_of_replacement():
    texts = FORMS + ODD
    for pc in REPLACEMENTS:
        out = sanitise_addresses(pd.Series(texts, dtype="string"), pd.Series([pc] * len(texts)))
        assert _values(out) == _per_row(texts, [pc] * len(texts)), pc


def test_postcodes_follow_the_texts_index_not_their_position():
    texts = pd.Series(["5 Dean Court, Halifax HX1 1AA", "5 Dean Court, Halifax HX1 1AA"], index=[7, 3])
    pcs = pd.Series(["HX3 3CC", "HX7 7GG"], index=[3, 7])
    assert _values(sanitise_addresses(texts, pcs)) == ["Dean Court, Halifax HX7 7GG", "Dean Court, Halifax HX3 3CC"]


def test_object_and_empty_inputs():
    assert _values(sanitise_addresses(pd.Series([], dtype=object))) == []
    texts = pd.Series(["12 King Cross Road", None, float("nan")], dtype=object)
    assert _values(sanitise_addresses(texts, pd.Series([None, "HX1 1AA", "HX1 1AA"]))) == ["King Cross Road",
                                                                                          None, None]


def test_address_leaks_matches_the_pattern_row_by_row():
    import re

    from csp_observatory.addresses import ADDRESS_LEAK, address_leaks

    texts = _generated(2000, 9) + ["Flat B, King Cross Road", "King Cross Road, Halifax HX1 1AA"]
    cleaned = [rng_out for rng_out in _per_row(texts, ["HX1 1AA"] * len(texts))]
    for values in (texts, cleaned):
        series = pd.Series(values, index=range(5, 5 + len(values)), dtype="string")
        expected = [v is not None and re.search(ADDRESS_LEAK, v) is not None for v in values]
        assert address_leaks(series).tolist() == expected
        assert any(expected) or values is cleaned


def test_skeleton_digits_are_read_as_zero_byte_by_byte_as_the_regex_does():
    """``_digits_as_zero`` equals Arrow's regex replacement, on sliced arrays and next to non-ASCII characters."""
    import pyarrow as pa
    import pyarrow.compute as pac

    values = pa.array(["12 High St", None, "caf\u00e9 9", "", "\u0663\u0664 (Arabic digits)", "x1y2z3",
                       "\U0001F600 57", "Flat 10, 3 Mill Lane"] * 3, pa.large_string())
    for arr in (values, values.slice(2, 11)):
        got = _digits_as_zero(arr)
        assert got.equals(pac.replace_substring_regex(arr, "[0-9]", "0"))
        assert got.to_pylist()[:3] != arr.to_pylist()[:3]
