"""Cleaning through Arrow kernels gives exactly the values and counts the pandas/Python regex path gave (issue 9).

The reference functions below are the previous implementation, kept here verbatim.
"""
from __future__ import annotations

import random

import pandas as pd
import pytest

from csp_observatory.cleaning import clean, normalise_codes, normalise_times
from csp_observatory.postcodes import normalise_postcodes
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

PIECES = ["0", "00", "028E", "8N", "m", "F", "u", "12", "9", "٣", "١٢", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\u00a0", "\u2003",
          ":", "30", "59", "15:00", "2315", "a", "hx1", "1aa", "HX1 1AA", "é", "😀", "'", '"', ",", ""]


def _reference_times(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    parts = text.str.extract(r"^(\d{1,2}):?(\d{2})(?::\d{2})?$")
    ok = parts[0].notna()
    out = parts[0].str.zfill(2) + ":" + parts[1]
    return out.where(ok, text).astype("string")


def _reference_codes(values: pd.Series, datafield) -> pd.Series:
    text = values.astype("string").str.strip()
    if datafield.codes_file == "ho_offence_codes.csv":
        text = text.str.upper().str.replace(r"^0+(?=\d)", "", regex=True)
    allowed = datafield.allowed_codes or frozenset()
    spelling = {code.lower(): code for code in allowed}
    canonical = text.str.lower().map(spelling)
    return canonical.where(canonical.notna(), text).astype("string")


def _values(n: int, seed: int) -> pd.Series:
    rng = random.Random(seed)
    out = [None if rng.random() < 0.05 else "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 5)))
           for _ in range(n)]
    out += ["09:30", "9:30", "0930", "23:59:59", " 7:05 ", "028E", "08N", "0", "000", "٣:٣٠", "١٢٣٠"]
    return pd.Series(out, index=range(11, 11 + len(out)), dtype="string")


def _plain(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series]


@pytest.fixture(scope="module")
def offences():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")


@pytest.mark.parametrize("seed", range(3))
def test_times_match_the_reference(seed):
    values = _values(3000, seed)
    got, expected = normalise_times(values), _reference_times(values)
    assert _plain(got) == _plain(expected)
    assert sum(1 for g, v in zip(_plain(got), _plain(values)) if g != v and g is not None) > 10


@pytest.mark.parametrize("seed", range(3))
def test_codes_match_the_reference(offences, seed):
    values = _values(3000, seed)
    gender = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("victims").field("gender")
    for field in (offences.field("ho_offence_code"), gender):
        assert _plain(normalise_codes(values, field)) == _plain(_reference_codes(values, field))


@pytest.mark.parametrize("seed", range(3))
def test_clean_tidies_text_as_the_reference_and_counts_the_same(offences, seed):
    n = 3000
    frame = pd.DataFrame({name: _values(n, seed * 10 + i).reset_index(drop=True)[:n]
                          for i, name in enumerate(["location_address", "location_postcode", "ho_offence_code",
                                                    "committed_from_time", "method_of_entry"])})
    frame["crime_reference"] = pd.Series([f"CR{i}" for i in range(n)], dtype="string")
    frame["source_row"] = range(1, n + 1)
    result = clean(frame, offences)
    changes = {"whitespace_tidied": {}, "blank_to_null": {}}
    for name in ["location_address", "method_of_entry", "location_postcode", "ho_offence_code",
                 "committed_from_time"]:
        before = frame[name].astype("string")
        tidy = before.str.strip().str.replace(r"\s+", " ", regex=True)
        blank = tidy.notna() & (tidy == "")
        tidy = tidy.mask(blank, pd.NA)
        for bucket, mask in (("whitespace_tidied", (tidy != before).fillna(False) & ~blank),
                             ("blank_to_null", blank)):
            if int(mask.sum()):
                changes[bucket][name] = int(mask.sum())
        if name == "location_postcode":
            tidy = normalise_postcodes(tidy)
        elif name == "ho_offence_code":
            tidy = _reference_codes(tidy, offences.field(name))
        elif name == "committed_from_time":
            tidy = _reference_times(tidy)
        assert _plain(result.frame[name]) == _plain(tidy), name
    assert result.changes["whitespace_tidied"] == changes["whitespace_tidied"]
    assert result.changes["blank_to_null"] == changes["blank_to_null"]
    assert changes["whitespace_tidied"]


def _reference_remove_duplicates(frame: pd.DataFrame, feed_file):
    """The previous duplicate removal: content compared across every row."""
    from csp_observatory.cleaning import _key_text
    from csp_observatory.parsing import empty_rejected, rejected_frame

    key = [k for k in feed_file.key if k in frame.columns]
    has_key = frame[key].notna().all(axis=1)
    repeat = has_key & frame.duplicated(subset=key, keep="first")
    if not repeat.any():
        return frame.reset_index(drop=True), empty_rejected(), 0, 0
    content = [c for c in feed_file.field_names if c in frame.columns]
    same_as_earlier = frame.duplicated(subset=content, keep="first")
    first_rows = frame[has_key].drop_duplicates(subset=key, keep="first").set_index(key)["source_row"]
    rows, reasons, exact, conflicting = [], [], 0, 0
    what = _key_text(feed_file)
    for i in frame.index[repeat]:
        key_value = tuple(frame.loc[i, key])
        first = int(first_rows.loc[key_value if len(key) > 1 else key_value[0]])
        shown = " / ".join(str(v) for v in key_value)
        row = int(frame.loc[i, "source_row"])
        if same_as_earlier[i]:
            exact += 1
            reasons.append(f"row {row}: exact copy of row {first} (duplicate {what} '{shown}'); first row kept")
        else:
            conflicting += 1
            reasons.append(f"row {row}: duplicate {what} '{shown}' with different content from row {first}; "
                           f"first row kept")
        rows.append(row)
    return frame[~repeat].reset_index(drop=True), rejected_frame(feed_file.name, rows, reasons, "clean"), exact, \
        conflicting


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("file_name", ["offences", "offenders"])
def test_duplicates_are_removed_as_the_reference_did(file_name, seed):
    from csp_observatory.cleaning import _remove_duplicates

    feed_file = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file(file_name)
    rng = random.Random(seed)
    n = 2000
    data = {}
    for name in feed_file.field_names:
        pool = [None, "A", "B", "C"] if name not in feed_file.key else [None] + [f"K{i}" for i in range(60)]
        data[name] = pd.Series([rng.choice(pool) for _ in range(n)], dtype="string")
    base = pd.DataFrame(data)
    # exact copies of earlier rows, and copies with one value changed, spread through the file
    copies = base.sample(n // 3, random_state=seed).reset_index(drop=True)
    changed = copies.index[::2]
    some = [c for c in feed_file.field_names if c not in feed_file.key][0]
    copies.loc[changed, some] = "changed"
    frame = pd.concat([base, copies]).sample(frac=1, random_state=seed + 1)
    frame.index = range(50, 50 + len(frame))
    frame["source_row"] = range(1, len(frame) + 1)
    got, expected = _remove_duplicates(frame, feed_file), _reference_remove_duplicates(frame, feed_file)
    pd.testing.assert_frame_equal(got[0], expected[0])
    pd.testing.assert_frame_equal(got[1], expected[1])
    assert got[2:] == expected[2:] and expected[2] > 0 and expected[3] > 0
