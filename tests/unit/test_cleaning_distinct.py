"""Cleaning a column once per distinct value (issue 9) gives the rows and counts cleaning every row gives, and the
postcode shortcut (only values not in normal form are normalised) agrees with normalise_postcodes."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from csp_observatory import cleaning
from csp_observatory.postcodes import normalise_postcodes
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

_MESSY = [None, "", "  ", " HX1 1AA", "hx1  1aa", "HX11AA", "HX1\t1AA", "hx1 1aa\n", "HX1 1ÅA", "NOT A PC",
          "HX3 0RS", "HX3 0RS", "Front  door\tforced", " Cash ", "Café", "08N", "028E", "8n", "9:05", "0905",
          "23:59:59", "7:00", "12:30", "ex-partner", "STRANGER", "M", "f", " x ", "\u00a0HX1 1AA", "HX1 1AA "]


def _frame(file_name: str, n: int, seed: int) -> tuple[pd.DataFrame, object]:
    feed_file = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file(file_name)
    rng = random.Random(seed)
    data = {d.name: pd.Series([rng.choice(_MESSY) for _ in range(n)], dtype="string")
            for d in feed_file.datafields if d.type in ("string", "code", "postcode", "time")}
    for k in feed_file.key:       # unique keys, so only the text columns matter here
        data[k] = pd.Series([f"R{i}" for i in range(n)], dtype="string")
    frame = pd.DataFrame(data)
    frame["source_row"] = range(1, n + 1)
    return frame, feed_file


@pytest.mark.parametrize("file_name", ["offences", "offenders", "victims"])
def test_distinct_values_clean_as_every_row(file_name, monkeypatch):
    frame, feed_file = _frame(file_name, 3 * cleaning._SAMPLE, seed=len(file_name))
    sizes: list[int] = []
    each = cleaning._clean_values

    def spy(values, d):
        sizes.append(len(values))
        return each(values, d)

    monkeypatch.setattr(cleaning, "_clean_values", spy)
    by_value = cleaning.clean(frame, feed_file)
    assert min(sizes) < len(frame)              # the repeating columns went through their distinct values
    monkeypatch.setattr(cleaning, "_FEW_DISTINCT", -1.0)     # never: every column cleaned row by row
    sizes.clear()
    by_row = cleaning.clean(frame, feed_file)
    assert set(sizes) == {len(frame)}
    pd.testing.assert_frame_equal(by_value.frame, by_row.frame, check_exact=True)
    assert by_value.changes == by_row.changes
    assert any(by_row.changes["whitespace_tidied"].values()) and any(by_row.changes["blank_to_null"].values())


def test_postcodes_in_normal_form_agree_with_normalise_postcodes():
    values = pd.Series(_MESSY * 3, dtype="string", index=range(7, 7 + 3 * len(_MESSY)), name="pc")
    pd.testing.assert_series_equal(cleaning.postcodes_in_normal_form(values), normalise_postcodes(values))
    normal = pd.Series(["HX1 1AA", None, "W1A 0AX"], dtype="string")
    pd.testing.assert_series_equal(cleaning.postcodes_in_normal_form(normal), normalise_postcodes(normal))
