"""Clean a parsed, validated frame: tidy text, normal-form postcodes, codes and times; remove duplicates.

Nothing is removed silently: a duplicate row goes to ``removed`` with its source row and a reason, and
every value changed or blanked is counted in ``changes`` for the quality report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory import textkernels
from csp_observatory.parsing import empty_rejected, rejected_frame, without_rows
from csp_observatory.postcodes import normalise_postcodes
from csp_observatory.schema import Datafield, FeedFile

HO_CODES_FILE: Final = "ho_offence_codes.csv"
_TEXT_TYPES: Final = frozenset({"string", "code", "postcode", "time"})


@dataclass
class CleanResult:
    """The cleaned frame, the rows removed (with reasons) and counts of what was changed."""

    frame: pd.DataFrame
    removed: pd.DataFrame
    changes: dict[str, Any] = field(default_factory=dict)


def normalise_times(values: pd.Series) -> pd.Series:
    """Times as ``HH:MM`` from ``H:MM``, ``HH:MM:SS`` or ``HHMM``; anything else is left as it was."""
    text = values.astype("string").str.strip()
    # a value already HH:MM is its own result (nearly every one): only the others go through the pattern
    odd = ~pac.fill_null(pac.match_substring_regex(textkernels.arrow_strings(text), r"^[0-9]{2}:[0-9]{2}$"),
                         True).to_numpy(zero_copy_only=False)
    if not odd.any():
        return text
    rest = text[odd]
    hours, minutes = textkernels.extract(rest, r"^(\d{1,2}):?(\d{2})(?::\d{2})?$", 2)
    out = text.copy()
    out[odd] = (hours.str.zfill(2) + ":" + minutes).where(hours.notna(), rest)
    return out.astype("string")


def normalise_codes(values: pd.Series, datafield: Datafield) -> pd.Series:
    """Codes in the schema's spelling: case-insensitive match; Home Office codes without leading zeros."""
    text = values.astype("string").str.strip()
    if datafield.codes_file == HO_CODES_FILE:
        # Forces write 028E for 28E and 08N for 8N; the Home Office list has no leading zeros.
        text = textkernels.replace(text.str.upper(), r"^0+(\d)", r"\1")
    allowed = datafield.allowed_codes or frozenset()
    spelling = {code.lower(): code for code in allowed}
    # text.str.lower().map(spelling), kept where it found nothing: one Arrow hash lookup, no Python per value
    arr = textkernels.arrow_strings(text)
    found = pac.index_in(pac.utf8_lower(arr), value_set=pa.array(list(spelling), pa.string()))
    canonical = pa.array(list(spelling.values()), pa.string()).take(found).cast(arr.type)
    return pd.Series(pd.array(pac.coalesce(canonical, arr), dtype="string"), index=text.index, name=text.name)


def _key_text(feed_file: FeedFile) -> str:
    return " and ".join(name.replace("_", " ") for name in feed_file.key)


#: The change counts a text column's cleaning can make, each a per-row mask in :func:`_clean_values`.
_COUNTS: Final = ("whitespace_tidied", "blank_to_null", "postcodes_normalised", "postcodes_invalid_nulled",
                  "codes_normalised", "times_normalised")
#: A column whose first rows hold fewer distinct values than this share of them is cleaned once per distinct value.
_FEW_DISTINCT: Final = 0.2
_SAMPLE: Final = 10_000


def clean(frame: pd.DataFrame, feed_file: FeedFile) -> CleanResult:
    """Normalise text, postcodes, codes and times, then remove duplicate rows by the file's key."""
    frame = frame.copy(deep=False)      # columns are replaced, never changed in place: the caller's frame stays
    changes: dict[str, Any] = {k: {} for k in _COUNTS}
    for d in feed_file.datafields:
        if d.name not in frame.columns or d.type not in _TEXT_TYPES:
            continue
        tidy, counts = _clean_column(frame[d.name].astype("string"), d)
        for bucket, n in counts.items():
            if n:
                changes[bucket][d.name] = n
        frame[d.name] = tidy

    kept, removed, exact, conflicting = _remove_duplicates(frame, feed_file)
    changes["exact_duplicates_removed"] = exact
    changes["conflicting_duplicates_removed"] = conflicting
    return CleanResult(frame=kept, removed=removed, changes=changes)


def _clean_column(before: pd.Series, d: Datafield) -> tuple[pd.Series, dict[str, int]]:
    """One text column cleaned, and how many rows each change touched.

    Cleaning is value by value, so a column that repeats (codes, times, postcodes, free-text categories) is cleaned
    once per distinct value and the result spread back over its rows, the counts weighted by how many rows hold
    each value; a column that hardly repeats (references, addresses) is cleaned whole.
    """
    arr = textkernels.arrow_strings(before)
    sample = arr.slice(0, _SAMPLE)
    if len(arr) <= _SAMPLE or len(pac.unique(sample)) > _FEW_DISTINCT * len(sample):
        tidy, masks = _clean_values(before, d)
        return tidy, {k: int(m.sum()) for k, m in masks.items()}
    encoded = pac.dictionary_encode(arr)
    rows = encoded.indices.to_numpy(zero_copy_only=False)
    present = pac.is_valid(encoded.indices).to_numpy(zero_copy_only=False)
    distinct = pd.Series(pd.array(encoded.dictionary, dtype="string"))
    tidy, masks = _clean_values(distinct, d)
    weight = np.bincount(rows[present].astype(np.int64), minlength=len(distinct))
    out = textkernels.arrow_strings(tidy).take(encoded.indices)
    column = pd.Series(pd.array(out, dtype="string"), index=before.index, name=before.name)
    return column, {k: int(weight[m].sum()) for k, m in masks.items()}


def _clean_values(before: pd.Series, d: Datafield) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """Whitespace tidied, blanks made missing, then postcodes, codes or times in normal form; per change, the rows
    it touched (missing values are left missing and touch nothing)."""
    tidy = textkernels.squeeze_spaces(before.str.strip())
    blank = (tidy.notna() & (tidy == "")).to_numpy(bool)
    tidy = tidy.mask(blank, pd.NA)
    masks = {"whitespace_tidied": (tidy != before).fillna(False).to_numpy(bool) & ~blank, "blank_to_null": blank}
    if d.type == "postcode":
        pc = postcodes_in_normal_form(tidy)
        masks["postcodes_invalid_nulled"] = (tidy.notna() & pc.isna()).to_numpy(bool)
        masks["postcodes_normalised"] = (pc.notna() & (pc != tidy).fillna(False)).to_numpy(bool)
        tidy = pc
    elif d.type == "code":
        codes = normalise_codes(tidy, d)
        masks["codes_normalised"] = (codes != tidy).fillna(False).to_numpy(bool)
        tidy = codes
    elif d.type == "time":
        times = normalise_times(tidy)
        masks["times_normalised"] = (times != tidy).fillna(False).to_numpy(bool)
        tidy = times
    return tidy, masks


#: A postcode already in normal form (``HX1 1AA``): :func:`normalise_postcodes` gives it back as it is.
_NORMAL_POSTCODE: Final = r"^[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}$"


def postcodes_in_normal_form(values: pd.Series) -> pd.Series:
    """``normalise_postcodes(values)``, run only on the values not already in normal form (nearly none once
    cleaned): one pattern over the column instead of four."""
    arr = textkernels.arrow_strings(values)
    normal = pac.fill_null(pac.match_substring_regex(arr, _NORMAL_POSTCODE), True).to_numpy(zero_copy_only=False)
    if normal.all():
        return pd.Series(pd.array(arr, dtype="string"), index=values.index, name=values.name)
    odd = np.flatnonzero(~normal)
    fixed = textkernels.arrow_strings(normalise_postcodes(values.iloc[odd]))
    out = pac.replace_with_mask(arr, pa.array(~normal), fixed.cast(arr.type))
    return pd.Series(pd.array(out, dtype="string"), index=values.index, name=values.name)


def _count(bucket: dict[str, int], name: str, mask: pd.Series) -> None:
    n = int(mask.sum())
    if n:
        bucket[name] = n


def _key_codes(frame: pd.DataFrame, key: list[str]) -> np.ndarray:
    """Each row's key as one integer: equal keys (as ``DataFrame.duplicated`` compares them), equal integers."""
    out = np.zeros(len(frame), dtype=np.int64)
    for name in key:
        codes, uniques = pd.factorize(frame[name])      # a missing value is -1: such rows are never repeats
        out = out * (len(uniques) + 1) + (codes.astype(np.int64) + 1)
        if len(key) > 1:
            out, _ = pd.factorize(out)                     # kept small, so the next column's product fits
    return out


def _remove_duplicates(frame: pd.DataFrame, feed_file: FeedFile) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    key = [k for k in feed_file.key if k in frame.columns]
    if not key or frame.empty:
        return frame.reset_index(drop=True), empty_rejected(), 0, 0
    # A row with part of its key missing cannot be a duplicate of anything (validation rejects those).
    has_key = frame[key].notna().all(axis=1)
    # the key's columns hashed once, as one integer per row, for both questions asked of them below
    codes = pd.Series(_key_codes(frame, key), index=frame.index)
    repeat = has_key & codes.duplicated(keep="first")
    if not repeat.any():
        return frame.reset_index(drop=True), empty_rejected(), 0, 0
    content = [c for c in feed_file.field_names if c in frame.columns]
    # Only rows whose key is repeated can repeat an earlier row's content (the key is part of the content), so
    # the content is compared within those rows alone, not across every column of every row.
    group = frame[has_key & codes.duplicated(keep=False)] if set(key) <= set(content) else frame
    same_as_earlier = group.duplicated(subset=content, keep="first")
    keyed = group[has_key.loc[group.index].to_numpy(bool)]
    first_rows = keyed.drop_duplicates(subset=key, keep="first").set_index(key)["source_row"]
    rows: list[int] = []
    reasons: list[str] = []
    exact = conflicting = 0
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
    removed = rejected_frame(feed_file.name, rows, reasons, "clean")
    # the few repeats left out: the text columns are slices of the frame's, not a copy of every value
    return without_rows(frame, np.asarray(repeat, dtype=bool)), removed, exact, conflicting
