"""Regular expressions over whole string columns in Arrow (RE2), giving exactly what Python's ``re`` gives.

pandas runs a pattern through Python, value by value, whenever RE2 might read it differently (``\\d`` and
``\\s`` are Unicode-wide in Python, ASCII in RE2; ``$`` also matches before a final newline in Python). For
ASCII text without a newline the two agree once ``\\d`` is written ``[0-9]`` and ``\\s`` as Python's ASCII
whitespace, so those values (nearly all of a partner's file) go through one Arrow kernel, and the rest
(Unicode, newlines) through pandas as before. Patterns here must not use look-arounds or back-references.
"""
from __future__ import annotations

import re
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

#: Python's ``\s`` on ASCII text (``str.isspace``): RE2's ``\s`` lacks \v and \x1c-\x1f. The characters, for use
#: inside a character class, and the class.
_ASCII_SPACE_CHARS: Final = r"\t\n\x0b\x0c\r\x1c-\x1f "
_ASCII_SPACE: Final = f"[{_ASCII_SPACE_CHARS}]"
#: What RE2 cannot run as Python does: look-arounds, back-references, \A and \Z.
_NEEDS_PYTHON: Final = re.compile(r"\(\?[=!<]|\\[1-9]|\\[AZ]")
#: A word boundary: the same in both on ASCII text (all :func:`contains` gives RE2); :func:`re2_pattern` refuses it.
_WORD_EDGE: Final = re.compile(r"\\[bB]")
_CLASS: Final = re.compile(r"\[(?:\\.|[^\]\\])*\]")


def _re2_spelling(pattern: str) -> str:
    r"""``\d`` and ``\s`` as Python reads them on ASCII text, inside a character class or outside one."""
    inside = _CLASS.sub(lambda m: m.group(0).replace(r"\d", "0-9").replace(r"\s", _ASCII_SPACE_CHARS), pattern)
    return inside.replace(r"\d", "[0-9]").replace(r"\s", _ASCII_SPACE)


def re2_pattern(pattern: str) -> str:
    """The RE2 spelling of a Python pattern, for ASCII text without newlines."""
    if _NEEDS_PYTHON.search(pattern) or _WORD_EDGE.search(pattern):
        raise ValueError(f"pattern needs Python's regex engine: {pattern!r}")
    return _re2_spelling(pattern)


def arrow_strings(values: pd.Series) -> pa.Array:
    """A column as one Arrow string array (missing values as nulls; no copy when it already is one)."""
    if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
        values = values.astype("string[pyarrow]")
    arr = pa.array(values.array)
    if isinstance(arr, pa.ChunkedArray):        # combine_chunks copies, even one chunk
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def plain_rows(arr: pa.Array) -> np.ndarray:
    """Rows RE2 reads as Python does: ASCII without a newline, or missing."""
    ok = pac.and_(pac.string_is_ascii(arr), pac.invert(pac.match_substring(arr, "\n")))
    return pac.fill_null(ok, True).to_numpy(zero_copy_only=False)


def _series(arr: pa.Array, like: pd.Series) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(arr.cast(pa.large_string())), index=like.index,
                     name=like.name).astype("string")


def replace(values: pd.Series, pattern: str, repl: str) -> pd.Series:
    """``values.str.replace(pattern, repl, regex=True)`` as a ``string`` column (``repl``: ``\\1`` style only)."""
    arr = arrow_strings(values)
    fast = plain_rows(arr)
    out = pac.replace_substring_regex(arr, re2_pattern(pattern), repl)
    if not fast.all():
        slow = values.astype("string")[~fast].str.replace(pattern, repl, regex=True)
        out = pac.replace_with_mask(out, pa.array(~fast), arrow_strings(slow).cast(out.type))
    return _series(out, values)


def squeeze_spaces(values: pd.Series) -> pd.Series:
    """``values.str.replace(r"\\s+", " ", regex=True)``, rewriting only the values it changes.

    A value whose whitespace is all single spaces is its own result, and that is nearly every value: one
    match finds the others (a tab, a line end, two spaces), and only they are rewritten.
    """
    arr = arrow_strings(values)
    # one pass finds the rows that may change or that Python must do (non-ASCII): the others are their own result
    odd = pac.fill_null(pac.match_substring_regex(arr, r"[\t\n\x0b\x0c\r\x1c-\x1f]| {2}|[^\x00-\x7f]"), False)
    odd = odd.to_numpy(zero_copy_only=False)
    if not odd.any():
        return _series(arr, values)
    if odd.mean() < 0.5:
        rows = np.flatnonzero(odd)
        squeezed = arrow_strings(squeeze_spaces(values.iloc[rows]))
        return _series(pac.replace_with_mask(arr, pa.array(odd), squeezed.cast(arr.type)), values)
    fast = plain_rows(arr)
    out = arr
    change = pac.fill_null(pac.match_substring_regex(arr, r"[\t\n\x0b\x0c\r\x1c-\x1f]| {2}"), False)
    change = change.to_numpy(zero_copy_only=False) & fast
    if change.any():
        rows = pa.array(np.flatnonzero(change))
        squeezed = pac.replace_substring_regex(arr.take(rows), f"{_ASCII_SPACE}+", " ")
        out = pac.replace_with_mask(out, pa.array(change), squeezed)
    if not fast.all():
        slow = values.astype("string")[~fast].str.replace(r"\s+", " ", regex=True)
        out = pac.replace_with_mask(out, pa.array(~fast), arrow_strings(slow).cast(out.type))
    return _series(out, values)


def fullmatch(values: pd.Series, pattern: str) -> pd.Series:
    """``values.str.fullmatch(pattern).fillna(False)``: a plain bool column, False where missing."""
    arr = arrow_strings(values)
    fast = plain_rows(arr)
    hit = pac.fill_null(pac.match_substring_regex(arr, f"^(?:{re2_pattern(pattern)})$"), False)
    out = hit.to_numpy(zero_copy_only=False).copy()
    if not fast.all():
        slow = values.astype("string")[~fast].str.fullmatch(pattern).fillna(False)
        out[~fast] = slow.to_numpy(bool)
    return pd.Series(out, index=values.index)


def extract(values: pd.Series, pattern: str, groups: int) -> list[pd.Series]:
    """``values.str.extract(pattern)``'s columns as ``string`` columns (missing where it does not match).

    Every group of ``pattern`` must take part in any match (no optional groups).
    """
    arr = arrow_strings(values)
    fast = plain_rows(arr)
    names = [f"g{i}" for i in range(groups)]
    # RE2 in Arrow wants named groups: number them in order (the pattern's groups are all capturing)
    named = re.sub(r"\((?!\?)", lambda _m, it=iter(names): f"(?P<{next(it)}>", re2_pattern(pattern))
    cols = pac.extract_regex(arr, named).flatten()     # flatten: a row that does not match is missing
    if not fast.all():
        slow = values.astype("string")[~fast].str.extract(pattern)
        mask = pa.array(~fast)
        cols = [pac.replace_with_mask(c, mask, arrow_strings(slow[i].astype("string")).cast(c.type))
                for i, c in enumerate(cols)]
    return [_series(c, values) for c in cols]


def contains(values: pd.Series, pattern: str) -> np.ndarray:
    """``values.str.contains(pattern).fillna(False)`` as a bool array.

    One RE2 pass over the plain rows (ASCII without a line end, where a word boundary ``\\b`` is Python's too);
    Python's ``re`` only for the rest, once per distinct value (:func:`contains_distinct`). For a column that hardly
    repeats (addresses), Python once per distinct value was one search per row.
    """
    if _NEEDS_PYTHON.search(pattern):
        return contains_distinct(values, pattern)
    arr = arrow_strings(values)
    plain = plain_rows(arr)
    hit = pac.fill_null(pac.match_substring_regex(arr, _re2_spelling(pattern)), False)
    out = hit.to_numpy(zero_copy_only=False).astype(bool)
    if not plain.all():
        rest = np.flatnonzero(~plain)
        out[rest] = contains_distinct(values.iloc[rest], pattern)
    return out


def contains_distinct(values: pd.Series, pattern: str) -> np.ndarray:
    """``values.str.contains(pattern).fillna(False)`` with Python's ``re``, once per distinct value.

    For patterns RE2 cannot run (look-arounds, word boundaries on Unicode text) over columns that repeat.
    """
    encoded = pac.dictionary_encode(arrow_strings(values))
    compiled = re.compile(pattern)
    hit = [compiled.search(v) is not None for v in encoded.dictionary.to_pylist()] + [False]
    return np.asarray(hit, dtype=bool)[encoded.indices.fill_null(len(hit) - 1).to_numpy(zero_copy_only=False)]
