"""Typing a CSV column: the text of one datafield made into its pandas dtype, and which values could not be.

:func:`convert_column` works on the Arrow column as read, with Arrow kernels and numpy, and gives exactly what
:func:`convert_reference` (the pandas reading, kept as the reference the tests hold it to) gives: the same values,
the same dtypes, the same values found bad. Rows a kernel might read otherwise than Python (text that is not ASCII
or holds a line end: rare in a partner's file) go through :func:`convert_reference`, which works value by value,
so a column can be split between the two.
"""
from __future__ import annotations

from typing import Final, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory import textkernels

TRUE_WORDS: Final = frozenset({"y", "yes", "true", "t", "1"})
FALSE_WORDS: Final = frozenset({"n", "no", "false", "f", "0"})
_ISO_DATE: Final = r"\d{4}-\d{1,2}-\d{1,2}"
_UK_DATE: Final = r"\d{1,2}/\d{1,2}/\d{4}"
_TIME: Final = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?|(?:[01]\d|2[0-3])[0-5]\d"
# Whole numbers, allowing a written ".0" (spreadsheets export 12 as 12.0) and a "+"; at most 18 digits fits Int64.
# Digits are ASCII ([0-9], not \d, which in Python's re also takes other scripts' digits): only what Arrow's cast
# reads may pass, so that a value it cannot read is a bad value of its row, never a failure of the whole file.
_INTEGER: Final = r"[+-]?[0-9]{1,18}(?:\.0*)?"
_FLOAT: Final = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# datetime64[ns] covers 1677-09-21 .. 2262-04-11; anything outside cannot be stored.
_MIN_DATE: Final = pd.Timestamp("1678-01-01")
_MAX_DATE: Final = pd.Timestamp("2262-01-01")
#: The same patterns with named groups, for Arrow's extract on ASCII text (\d written [0-9], as RE2 reads it).
_ISO_PARTS: Final = r"^(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})$"
_UK_PARTS: Final = r"^(?P<d>[0-9]{1,2})/(?P<m>[0-9]{1,2})/(?P<y>[0-9]{4})$"
_INTEGER_PART: Final = r"^(?P<i>[+-]?[0-9]{1,18})(?:\.0*)?$"
_STRING_KINDS: Final = frozenset({"string", "code", "postcode"})
_NAT: Final = np.iinfo(np.int64).min


def convert_reference(raw: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """Typed values and a mask of values that are present but could not be converted (pandas, value by value)."""
    stripped = raw.str.strip()
    present = stripped.notna() & (stripped != "")
    if kind in _STRING_KINDS:
        return raw.where(present, pd.NA).astype("string"), pd.Series(False, index=raw.index)
    if kind == "time":
        ok = textkernels.fullmatch(stripped, _TIME)
        return stripped.where(present, pd.NA).astype("string"), present & ~ok
    if kind == "date":
        out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
        iso = present & textkernels.fullmatch(stripped, _ISO_DATE)
        uk = present & textkernels.fullmatch(stripped, _UK_DATE)
        for mask, fmt in ((iso, "%Y-%m-%d"), (uk, "%d/%m/%Y")):
            if mask.any():
                parsed = pd.to_datetime(stripped[mask], format=fmt, errors="coerce")
                parsed = parsed.where((parsed >= _MIN_DATE) & (parsed < _MAX_DATE))
                out[mask] = parsed.astype("datetime64[ns]")
        return out, present & out.isna()
    if kind == "integer":
        ok = present & textkernels.fullmatch(stripped, _INTEGER)
        # Only well-formed values reach the cast, so it cannot fail (Arrow's cast refuses a "+": it goes first).
        values = textkernels.replace(stripped.where(ok), r"^\+|\.0*$", "").astype("Int64")
        return values, present & ~ok
    if kind == "float":
        ok = present & textkernels.fullmatch(stripped, _FLOAT)
        values = stripped.where(ok).astype("Float64")
        return values, present & ~ok
    if kind == "boolean":
        lower = stripped.str.lower()
        is_true, is_false = lower.isin(TRUE_WORDS), lower.isin(FALSE_WORDS)
        values = pd.Series(pd.NA, index=raw.index, dtype="boolean")
        values[is_true.fillna(False)] = True
        values[is_false.fillna(False)] = False
        return values, present & ~(is_true | is_false).fillna(False)
    raise ValueError(f"unknown datafield type {kind!r}")


def convert_column(col: pa.ChunkedArray | pa.Array, kind: str, index: pd.RangeIndex) -> tuple[pd.Series, np.ndarray]:
    """:func:`convert_reference` of a column of text without missing values, with Arrow kernels.

    Returns the typed Series (on ``index``) and, as a bool array, the rows whose value is present but bad.
    """
    col = col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
    if col.type != pa.large_string():
        col = col.cast(pa.large_string())
    if kind in _STRING_KINDS:
        # Present: not empty once trimmed, i.e. not empty and not all whitespace (Arrow's trim and its is_space
        # share one definition of whitespace), without making the trimmed copy.
        blank = pac.or_(pac.equal(pac.binary_length(col), 0), pac.utf8_is_space(col))
        return _strings(pac.if_else(blank, pa.scalar(None, pa.large_string()), col), index), np.zeros(len(col), bool)
    if kind == "date":
        return _dates(col, index)
    flags = _one_byte_flags(col) if kind == "boolean" else None
    if flags is not None:
        is_true, is_false, present = flags
        known = is_true | is_false
        return pd.Series(pd.arrays.BooleanArray(is_true, ~known), index=index), present & ~known
    if kind == "time":
        ok = _clock_times(col)
        if ok is not None:
            # Only digits and colons: nothing to trim, so the values are the text itself.
            present = _numpy(pac.greater(pac.binary_length(col), 0))
            return _strings(_where(present, col), index), present & ~ok
    if kind == "integer" and _only_short_digits(col):
        # Each value is empty or its own digits (nothing to trim, no .0): the reference's cast of the same text.
        present = pac.greater(pac.binary_length(col), 0)
        values = pac.if_else(present, col, pa.scalar(None, pa.large_string())).cast(pa.int64())
        return pd.Series(pd.Int64Dtype().__from_arrow__(values), index=index), np.zeros(len(col), bool)
    if kind not in ("time", "integer", "float", "boolean"):
        raise ValueError(f"unknown datafield type {kind!r}")
    if kind == "float":
        filled = _numpy(pac.greater(pac.binary_length(col), 0))
        if 0 < filled.sum() < len(col) // 2:
            # A mostly empty column (coordinates beside eastings): an empty value is missing and not bad, so only
            # the others are read, the column's way.
            rows = np.flatnonzero(filled)
            part, part_bad = convert_column(col.take(pa.array(rows)), kind, pd.RangeIndex(len(rows)))
            data = np.zeros(len(col))
            missing = np.ones(len(col), bool)
            data[rows] = part.to_numpy(dtype="float64", na_value=0.0)
            missing[rows] = part.isna().to_numpy()
            bad = np.zeros(len(col), bool)
            bad[rows] = part_bad
            return pd.Series(pd.arrays.FloatingArray(data, missing), index=index), bad
    trimmed = pac.utf8_trim_whitespace(col)       # what pandas' str.strip runs
    present = _numpy(pac.greater(pac.binary_length(trimmed), 0))
    if kind == "boolean":
        # The same kernels as pandas' str.lower and isin, on every row.
        lower = pac.utf8_lower(trimmed)
        is_true = _numpy(pac.is_in(lower, value_set=pa.array(sorted(TRUE_WORDS), pa.large_string())))
        is_false = _numpy(pac.is_in(lower, value_set=pa.array(sorted(FALSE_WORDS), pa.large_string())))
        known = is_true | is_false
        return pd.Series(pd.arrays.BooleanArray(is_true, ~known), index=index), present & ~known
    if kind == "time":
        ok = _fullmatch(trimmed, _TIME)
        return _strings(_where(present, trimmed), index), present & ~ok
    if kind == "float":
        ok = present & _fullmatch(trimmed, _FLOAT)
        values = _where(ok, trimmed).cast(pa.float64())
        return pd.Series(pd.Float64Dtype().__from_arrow__(values), index=index), present & ~ok
    return _integers(trimmed, present, np.flatnonzero(~_plain(trimmed)), index)


def _numpy(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A bool Arrow column without nulls as a numpy array."""
    return values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0, bool)


def _where(keep: np.ndarray, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The values where ``keep``, missing elsewhere (pandas' ``where``)."""
    return pac.if_else(pa.array(keep), values, pa.scalar(None, pa.large_string()))


def _strings(values: pa.ChunkedArray, index: pd.RangeIndex) -> pd.Series:
    return pd.Series(values, index=index, dtype="string")


def _plain(values: pa.ChunkedArray) -> np.ndarray:
    """Rows RE2 reads as Python does (ASCII without a line end), as textkernels decides."""
    return _numpy(pac.and_(pac.string_is_ascii(values), pac.invert(pac.match_substring(values, "\n"))))


def _fullmatch(trimmed: pa.ChunkedArray, pattern: str) -> np.ndarray:
    """``textkernels.fullmatch`` on a trimmed Arrow column: RE2 on every row, Python for the rows RE2 might misread."""
    hit = _numpy(pac.match_substring_regex(trimmed, f"^(?:{textkernels.re2_pattern(pattern)})$"))
    other = np.flatnonzero(~_plain(trimmed))
    if len(other):
        hit[other] = textkernels.fullmatch(_strings(trimmed.take(pa.array(other)), pd.RangeIndex(len(other))),
                                           pattern).to_numpy(bool)
    return hit


#: What a one-byte value means as a yes/no value: one of the words (lower-cased), or blank (ASCII whitespace, as
#: Arrow's trim reads it); a byte of 128 or more is never a whole UTF-8 character.
_TRUE_BYTE: Final = np.array([c < 128 and chr(c).lower() in TRUE_WORDS for c in range(256)])
_FALSE_BYTE: Final = np.array([c < 128 and chr(c).lower() in FALSE_WORDS for c in range(256)])
_BLANK_BYTE: Final = np.array([c < 128 and chr(c).isspace() for c in range(256)])


def _string_chunks(col: pa.ChunkedArray) -> Iterator[tuple[int, pa.Array, np.ndarray, np.ndarray]]:
    """Each non-empty chunk of a large_string column: its first row's position in the column, the chunk, its value
    offsets and its value bytes (as numpy views, no copy), for kernels that read the bytes themselves."""
    at = 0
    for chunk in col.chunks:
        if len(chunk):
            offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
            values = chunk.buffers()[2]
            yield at, chunk, offsets, (np.frombuffer(values, np.uint8) if values is not None else np.zeros(0, np.uint8))
        at += len(chunk)


def _one_byte_flags(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """True words, false words and present values, if every value is empty or one byte (Y/N columns); else None."""
    byte = np.full(len(col), ord(" "), np.uint8)          # an empty value reads as blank
    for at, chunk, offsets, data in _string_chunks(col):
        if chunk.null_count:
            return None
        lengths = np.diff(offsets)
        if lengths.max() > 1:
            return None
        byte[at + np.flatnonzero(lengths)] = data[offsets[0]:offsets[-1]]   # the one-byte values, one after another
    return _TRUE_BYTE[byte], _FALSE_BYTE[byte], ~_BLANK_BYTE[byte]


def _clock_times(col: pa.ChunkedArray) -> np.ndarray | None:
    """Which values match the time pattern, if every value is empty or five bytes in the form dd:dd; else None.

    Five characters match the pattern only as HH:MM with HH 00 to 23 and MM 00 to 59.
    """
    ok = np.zeros(len(col), bool)
    for at, chunk, offsets, data in _string_chunks(col):
        if chunk.null_count:
            return None
        lengths = np.diff(offsets)
        five = lengths == 5
        if not (five | (lengths == 0)).all():
            return None
        if five.any():
            b = data[offsets[0]:offsets[-1]].reshape(-1, 5)
            v = b - np.uint8(ord("0"))
            if not ((b[:, 2] == ord(":")) & (v[:, [0, 1, 3, 4]] <= 9).all(axis=1)).all():
                return None
            ok[at + np.flatnonzero(five)] = (((v[:, 0] <= 1) | ((v[:, 0] == 2) & (v[:, 1] <= 3)))
                                             & (v[:, 3] <= 5))
    return ok


def _only_short_digits(col: pa.ChunkedArray) -> bool:
    """Whether every value is empty or 1 to 18 ASCII digits (a whole-number column as most files send it)."""
    for _, chunk, offsets, data in _string_chunks(col):
        if chunk.null_count:
            return False
        if np.diff(offsets).max() > 18:
            return False
        if not ((data[offsets[0]:offsets[-1]] - np.uint8(ord("0"))) <= 9).all():
            return False
    return True


def _integers(trimmed: pa.ChunkedArray, present: np.ndarray, other: np.ndarray,
              index: pd.RangeIndex) -> tuple[pd.Series, np.ndarray]:
    """Whole numbers: the digits before any ``.0`` (what the reference's replace leaves), then pandas' own cast."""
    digits = pac.struct_field(pac.extract_regex(trimmed, _INTEGER_PART), [0])
    if len(other):
        sub = _strings(trimmed.take(pa.array(other)), pd.RangeIndex(len(other)))
        ok = (sub != "") & textkernels.fullmatch(sub, _INTEGER)
        text = textkernels.arrow_strings(textkernels.replace(sub.where(ok), r"^\+|\.0*$", ""))
        mask = np.zeros(len(trimmed), bool)
        mask[other] = True
        digits = pac.replace_with_mask(digits.combine_chunks(), pa.array(mask), text.cast(pa.large_string()))
    ok = _numpy(pac.is_valid(digits))
    digits = pac.utf8_ltrim(digits, characters="+")      # one sign at most (the pattern): Arrow's cast refuses "+"
    return pd.Series(pd.Int64Dtype().__from_arrow__(digits.cast(pa.int64())), index=index), present & ~ok


def _dates(col: pa.ChunkedArray, index: pd.RangeIndex) -> tuple[pd.Series, np.ndarray]:
    """Dates in YYYY-MM-DD or DD/MM/YYYY between 1678 and 2261, as pandas' strict parsing with those formats reads
    them (a day that the month does not have is not a date).

    Ten-byte values of digits in those forms (nearly all) are read from the column's bytes; the others (one-digit
    days and months, spaces around, text) by pattern, or through the reference when not plain ASCII.
    """
    y, m, d, fixed = _fixed_date_parts(col)
    values, ok = _date_values(y, m, d)
    bad = fixed & ~ok
    blank = _numpy(pac.or_(pac.equal(pac.binary_length(col), 0), pac.utf8_is_space(col)))
    rest = np.flatnonzero(~fixed & ~blank)
    if len(rest):
        values[rest], bad[rest] = _dates_by_pattern(col.take(pa.array(rest)))
    return pd.Series(values.view("datetime64[ns]"), index=index), bad


def _fixed_date_parts(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of the values that are exactly YYYY-MM-DD or DD/MM/YYYY in ASCII digits, and which those are."""
    y, m, d = (np.zeros(len(col), np.int32) for _ in range(3))
    fixed = np.zeros(len(col), bool)
    for at, chunk, offsets, data in _string_chunks(col):
        if chunk.null_count:
            continue
        lengths = np.diff(offsets)
        ten = lengths == 10
        if ten.any():
            if (ten | (lengths == 0)).all():     # the ten-byte values lie one after another: a view, no copy
                b = data[offsets[0]:offsets[-1]].reshape(-1, 10)
            else:
                b = data[offsets[:-1][ten][:, None] + np.arange(10)]
            rows = at + np.flatnonzero(ten)
            y[rows], m[rows], d[rows], fixed[rows] = _ten_byte_dates(b)
    return y, m, d, fixed


def _ten_byte_dates(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of rows of ten bytes in the form YYYY-MM-DD or DD/MM/YYYY, and which rows are."""
    v = [b[:, i] - np.uint8(ord("0")) for i in range(10)]    # a digit's value; any other byte wraps to 10 or more
    digit = [x <= 9 for x in v]
    iso = (b[:, 4] == ord("-")) & (b[:, 7] == ord("-"))
    uk = (b[:, 2] == ord("/")) & (b[:, 5] == ord("/"))
    for i in (0, 1, 3, 6, 8, 9):
        iso &= digit[i]
        uk &= digit[i]
    iso &= digit[2] & digit[5]
    uk &= digit[4] & digit[7]
    y0, y1, y2, y3 = (np.where(iso, v[i], v[j]).astype(np.int32) for i, j in ((0, 6), (1, 7), (2, 8), (3, 9)))
    m0, m1, d0, d1 = (np.where(iso, v[i], v[j]).astype(np.int32) for i, j in ((5, 3), (6, 4), (8, 0), (9, 1)))
    return ((y0 * 10 + y1) * 10 + y2) * 10 + y3, m0 * 10 + m1, d0 * 10 + d1, iso | uk


_FIRST_YEAR: Final = 1678      # _MIN_DATE's year; _MAX_DATE is the first day of 2262
_LAST_YEAR: Final = 2261
_DAYS_IN_MONTH: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int32)
_CALENDAR: list[np.ndarray] = []


def _calendar() -> np.ndarray:
    """Nanoseconds since 1970 of every (year, month, day 0-31) from 1678 to 2261, by ((year - 1678) * 12 + month - 1)
    * 32 + day; NaT where the month has no such day."""
    if not _CALENDAR:
        key = np.arange((_LAST_YEAR - _FIRST_YEAR + 1) * 12 * 32, dtype=np.int64)
        d, m, y = key % 32, key // 32 % 12 + 1, key // (32 * 12) + _FIRST_YEAR
        leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        ok = (d >= 1) & (d <= _DAYS_IN_MONTH[m] + (leap & (m == 2)))
        # days from 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's days_from_civil)
        y = y - (m <= 2)
        era = y // 400
        yoe = y - era * 400
        days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + (153 * ((m + 9) % 12) + 2) // 5 + d - 1 - 719468
        _CALENDAR.append(np.where(ok, days * 86_400_000_000_000, _NAT))
    return _CALENDAR[0]


def _date_values(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since 1970 of the calendar dates from 1678 to 2261 (NaT for any other), and which those are."""
    inside = (y >= _FIRST_YEAR) & (y <= _LAST_YEAR) & (m >= 1) & (m <= 12) & (d >= 0) & (d <= 31)
    key = np.where(inside, ((y - _FIRST_YEAR) * 12 + m - 1) * 32 + d, 0)
    out = _calendar()[key]
    out[~inside] = _NAT
    return out, out != _NAT


def _dates_by_pattern(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Dates (as nanoseconds, NaT if none) and bad values of any column: the patterns in Arrow for plain ASCII rows,
    the reference for the others."""
    trimmed = pac.utf8_trim_whitespace(col)
    present = _numpy(pac.greater(pac.binary_length(trimmed), 0))
    y, m, d = (np.zeros(len(trimmed), np.int64) for _ in range(3))
    for pattern in (_ISO_PARTS, _UK_PARTS):
        parts = pac.extract_regex(trimmed, pattern)
        hit = _numpy(pac.is_valid(parts))
        if hit.any():
            for out, name in ((y, "y"), (m, "m"), (d, "d")):
                out[hit] = _numpy(pac.fill_null(pac.struct_field(parts, [name]), "0").cast(pa.int64()))[hit]
    values, ok = _date_values(y, m, d)
    bad = present & ~ok
    other = np.flatnonzero(~_plain(trimmed))
    if len(other):
        ref, ref_bad = convert_reference(_strings(col.take(pa.array(other)), pd.RangeIndex(len(other))), "date")
        values[other] = ref.to_numpy().view(np.int64)
        bad[other] = ref_bad.to_numpy(bool)
    return values, bad
