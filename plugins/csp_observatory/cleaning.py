"""Clean a parsed, validated frame: tidy text, normal-form postcodes, codes and times; remove duplicates.

Nothing is removed silently: a duplicate row goes to ``removed`` with its source row and a reason, and
every value changed or blanked is counted in ``changes`` for the quality report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory import textkernels
from csp_observatory.parsing import empty_rejected, rejected_frame
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


def clean(frame: pd.DataFrame, feed_file: FeedFile) -> CleanResult:
    """Normalise text, postcodes, codes and times, then remove duplicate rows by the file's key."""
    frame = frame.copy()
    changes: dict[str, Any] = {"whitespace_tidied": {}, "blank_to_null": {}, "postcodes_normalised": {},
                               "postcodes_invalid_nulled": {}, "codes_normalised": {}, "times_normalised": {}}
    for d in feed_file.datafields:
        if d.name not in frame.columns or d.type not in _TEXT_TYPES:
            continue
        before = frame[d.name].astype("string")
        tidy = textkernels.squeeze_spaces(before.str.strip())
        blank = tidy.notna() & (tidy == "")
        tidy = tidy.mask(blank, pd.NA)
        _count(changes["whitespace_tidied"], d.name, (tidy != before).fillna(False) & ~blank)
        _count(changes["blank_to_null"], d.name, blank)
        if d.type == "postcode":
            pc = normalise_postcodes(tidy)
            _count(changes["postcodes_invalid_nulled"], d.name, tidy.notna() & pc.isna())
            _count(changes["postcodes_normalised"], d.name, pc.notna() & (pc != tidy).fillna(False))
            tidy = pc
        elif d.type == "code":
            codes = normalise_codes(tidy, d)
            _count(changes["codes_normalised"], d.name, (codes != tidy).fillna(False))
            tidy = codes
        elif d.type == "time":
            times = normalise_times(tidy)
            _count(changes["times_normalised"], d.name, (times != tidy).fillna(False))
            tidy = times
        frame[d.name] = tidy

    kept, removed, exact, conflicting = _remove_duplicates(frame, feed_file)
    changes["exact_duplicates_removed"] = exact
    changes["conflicting_duplicates_removed"] = conflicting
    return CleanResult(frame=kept, removed=removed, changes=changes)


def _count(bucket: dict[str, int], name: str, mask: pd.Series) -> None:
    n = int(mask.sum())
    if n:
        bucket[name] = n


def _remove_duplicates(frame: pd.DataFrame, feed_file: FeedFile) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    key = [k for k in feed_file.key if k in frame.columns]
    if not key or frame.empty:
        return frame.reset_index(drop=True), empty_rejected(), 0, 0
    # A row with part of its key missing cannot be a duplicate of anything (validation rejects those).
    has_key = frame[key].notna().all(axis=1)
    repeat = has_key & frame.duplicated(subset=key, keep="first")
    if not repeat.any():
        return frame.reset_index(drop=True), empty_rejected(), 0, 0
    content = [c for c in feed_file.field_names if c in frame.columns]
    # Only rows whose key is repeated can repeat an earlier row's content (the key is part of the content), so
    # the content is compared within those rows alone, not across every column of every row.
    group = frame[has_key & frame.duplicated(subset=key, keep=False)] if set(key) <= set(content) else frame
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
    return frame[~repeat].reset_index(drop=True), removed, exact, conflicting
