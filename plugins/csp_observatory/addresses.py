"""Sanitise address text (Appendix 1): no house number, house name, or flat/apartment number survives.

What is kept: street, locality, town and postcode. The rules, in order, per comma-separated component:

1. Postcodes are set aside first (and replaced by the sanitised postcode when one is given, or removed when
   the record has none), so their digits are never mistaken for house numbers.
2. Sub-premises are removed: ``Flat 3``, ``Flat B``, ``Apartment 4B``, ``Unit 2A-2C``, ``Room 12``,
   ``Suite 5``, ``Plot 4``, ``PO Box 12``, ``1st Floor Flat``, ``Ground Floor``.
3. Positional phrases before a house number go with the number: ``Land adjacent to 3 High Street``,
   ``Rear of 20 Rhodes Street``, ``o/s 14 Southgate`` (outside), ``opp 5 ...`` all become the street.
4. House numbers, letters and ranges are removed: ``12``, ``12a``, ``12-14``, ``14 - 16``, ``2/3`` (Scottish
   flat position), ``12 & 14``. What follows a removed number is taken to be the street.
5. House and building names: a component before the first street component is a house name and is removed
   when a street follows it (``The Old Vicarage, Church Street``), or when it names a building whatever
   follows (its last word is Cottage, House, Farm, Lodge, Barn, Villa, Hall, Mill, Manor, Vicarage, ...:
   ``Rose Cottage, Moor Lane, Luddenden``). A component is a *street* when its last word is a street type
   (Road, Street, Lane, Avenue, Close, Drive, Terrace, Way, Court, Green, Row, Estate, ...) or it ends in
   ``-gate`` (Southgate). So ``Dean Court`` is a street, and ``Mill Lane`` is a street, not a mill.
   Exception: the building a flat/apartment/unit/room number was in (the rest of that component, or the
   next component when the number stood alone) is a multi-occupancy building or estate, not one household,
   and is kept (``Apartment 4B Dean Clough Mills`` and ``Apartment 14, Dean Clough Mills`` -> ``Dean Clough
   Mills``; ``Unit 7, Bankfield Industrial Estate`` -> ``Bankfield Industrial Estate``).
6. A final sweep removes any remaining digit-led token that is not a postcode's inward code.

Text that names a non-addressable place (car park, park, recreation ground, waste ground, ...) and holds
no number and no building word is not residential and is returned unchanged.

Known limit: a lone name with no street after it and no building word (``Highfield, Luddenden``) cannot
be told from a locality and is kept.
"""
from __future__ import annotations

import re
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

#: Matches text that still holds a house number or a flat/unit number (used by the invariant check).
ADDRESS_LEAK: Final = (r"(?<![A-Za-z0-9])\d(?![A-Z]{2}\b)"
                       r"|(?i:\b(?:flat|apartment|apt|unit|room|suite|plot|po\s+box)\b\.?\s*(?:no\.?\s*)?[a-z]?\d)"
                       r"|\b(?i:flat|apartment|apt)\s+[A-Z]\b")

STREET_TYPES: Final = frozenset("""
road rd street st lane ln avenue ave av close cl drive dr terrace terr ter tce way court ct crescent cres
place pl grove gr gardens gdns garden square sq walk row hill green mews rise bank fold croft parade view
mount yard wynd vale lea brow side boulevard parkway approach circus embankment hollow end edge heights
causeway highway broadway estate park fields field chase wharf quay bridge bottom top meadow meadows
passage alley ginnel snicket loan brae gait vennel crossing grange way market precinct arcade
""".split()) - {"grange"}
BUILDING_WORDS: Final = frozenset("""
cottage cottages house farm farmhouse lodge barn villa hall mill mills manor vicarage rectory parsonage
bungalow chapel granary stables coach barns cote nook manse school schoolhouse works tower towers
""".split())
NON_ADDRESSABLE: Final = re.compile(
    r"(?i)\b(car\s*park|park|recreation\s+ground|playing\s+fields?|waste\s+ground|cemetery|churchyard|"
    r"bus\s+(?:station|stop|shelter)|railway|station|footpath|towpath|canal|woods?|moor|museum|"
    r"shopping\s+centre|subway|underpass|play\s*ground|skate\s*park|allotments?|river|reservoir)\b")

_POSTCODE: Final = re.compile(r"(?i)\b([A-Z]{1,2}\d[A-Z\d]?)\s*(\d[A-Z]{2})\b")
_ID: Final = r"(?:\d+[A-Z]?|[A-Z]\d*)(?:\s*(?:-|/|to|&)\s*(?:\d+[A-Z]?|[A-Z]\d*))?"
_FLOOR: Final = r"(?:ground|first|second|third|fourth|top|upper|lower|basement|\d+(?:st|nd|rd|th))\s+floor"
_SUBPREMISE: Final = re.compile(
    rf"(?i)^(?:(?:{_FLOOR})\s*(?:(?:flat|apartment|apt)\b\.?\s*(?:{_ID}\b)?)?"
    rf"|(?:flat|apartment|apt|unit|units|room|suite|plot|studio|maisonette|bedsit|block|po\s+box|p\.o\.\s*box)"
    rf"\b\.?\s*(?:no\.?\s*)?(?:{_ID}\b)?)[\s,]*")
_POSITIONAL: Final = (r"(?:land\s+)?(?:adjacent\s+to|adj\.?(?:\s+to)?|next\s+to|to\s+the\s+rear\s+of|rear\s+of|r/o|"
                      r"back\s+of|side\s+of|outside|o/s|opposite|opp\.?|near|nr\.?|at|off|by)\s+|land\s+")
_NUMBER: Final = re.compile(rf"(?i)^(?:{_POSITIONAL})?(?:no\.?\s*)?\d+[A-Z]?(?:\s*(?:-|/|to|&|and)\s*\d+[A-Z]?)?\b\.?[\s,]*")
_STRAY_DIGITS: Final = re.compile(r"(?<![A-Za-z0-9])\d[\w/.-]*")
_SPACE: Final = re.compile(r"\s+")
_PC_MARK: Final = "\x00PC\x00"
# sanitise_addresses: how a row's postcode argument is read, and the placeholder for its replacement postcode
_KEEP, _REPLACE, _REMOVE, _ODD = 0, 1, 2, 3
_SLOT: Final = "\ue001"
_PLAIN_POSTCODE: Final = r"^[A-Za-z0-9]+(?: [A-Za-z0-9]+)?$"
_ANY_DIGIT: Final = re.compile(r"[0-9]")
# _POSTCODE in RE2 for ASCII text (Python's \s spelt out), and the postcode every one of them reads as
_POSTCODE_RE2: Final = r"\b(?i:[A-Z]{1,2}[0-9][A-Z0-9]?)[\t\n\x0b\x0c\r\x1c-\x1f ]*[0-9](?i:[A-Z]{2})\b"
_CANON_POSTCODE: Final = "AA0 0AA"


def _words(component: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", component.lower())


def _is_street(component: str) -> bool:
    words = _words(component)
    return bool(words) and (words[-1] in STREET_TYPES or (words[-1].endswith("gate") and len(words[-1]) > 4))


def _is_building(component: str) -> bool:
    words = _words(component)
    return bool(words) and words[-1] in BUILDING_WORDS


def _strip_component(component: str) -> tuple[str, bool, bool]:
    """Remove sub-premises and house numbers from the front of a component: (rest, had_flat, had_number)."""
    had_flat = had_number = False
    while True:
        before = component
        m = _SUBPREMISE.match(component)
        if m and m.end():
            component, had_flat = component[m.end():], True
        m = _NUMBER.match(component)
        if m and m.end():
            component, had_number = component[m.end():], True
        if component == before:
            return component.strip(" ,.-"), had_flat, had_number


def sanitise_address(text: str | None, postcode: str | None | bool = True) -> str | None:
    """Remove house number, house name and flat number from an address; None if nothing is left.

    ``postcode``: True keeps postcodes in the text as they are; a string replaces each one with it (the
    sanitised postcode); None or False removes them.
    """
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return None
    text = _SPACE.sub(" ", str(text)).strip()
    if not text:
        return None
    if (NON_ADDRESSABLE.search(text) and not re.search(r"\d", _POSTCODE.sub("", text))
            and not any(_is_building(c) for c in text.split(","))):
        return _replace_postcodes(text, postcode)
    found = [f"{m.group(1).upper()} {m.group(2).upper()}" for m in _POSTCODE.finditer(text)]
    text = _POSTCODE.sub(_PC_MARK, text)

    parts = []
    for raw in text.split(","):
        rest, had_flat, had_number = _strip_component(raw.strip())
        parts.append((rest, had_flat, had_number))
    first_street = next((i for i, (rest, _, had_number) in enumerate(parts)
                         if rest and (had_number or _is_street(rest))), None)
    kept = []
    after_flat = False
    for i, (rest, had_flat, had_number) in enumerate(parts):
        if not rest:
            # a component that was only a flat/unit number: the next one names the building it is in
            after_flat = after_flat or had_flat
            continue
        if (_PC_MARK not in rest and not had_number and not had_flat and not after_flat
                and not _is_street(rest)):
            leading = first_street is None or i < first_street
            if leading and (first_street is not None or _is_building(rest)):
                continue  # a house or building name
        after_flat = False
        kept.append(rest)
    out = ", ".join(kept)
    out = _STRAY_DIGITS.sub("", out)
    out = _SPACE.sub(" ", re.sub(r"\s+,", ",", out)).strip(" ,")
    out = re.sub(r"(,\s*)+", ", ", out)
    for pc in found:
        out = out.replace(_PC_MARK, pc if postcode is True else (postcode or ""), 1)
    out = re.sub(r"(,\s*)+", ", ", _SPACE.sub(" ", out)).strip(" ,")
    return out or None


def _replace_postcodes(text: str, postcode: str | None | bool) -> str | None:
    if postcode is True:
        return text
    out = _POSTCODE.sub(postcode or "", text)
    return re.sub(r"(,\s*)+", ", ", _SPACE.sub(" ", out)).strip(" ,") or None


def _arrow_text(values: pd.Series) -> pa.Array:
    """A column as one Arrow string array (missing values as nulls)."""
    if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
        values = values.astype("string[pyarrow]")
    arr = pa.array(values.array)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr.cast(pa.large_string())


#: Each byte's value after :func:`_digits_as_zero`: ASCII 1-9 read as 0, every other byte as it is.
_DIGIT_AS_ZERO: Final = np.where((np.arange(256) > 0x30) & (np.arange(256) <= 0x39), 0x30,
                                 np.arange(256)).astype(np.uint8)


def _digits_as_zero(values: pa.Array) -> pa.Array:
    """``pac.replace_substring_regex(values, "[0-9]", "0")`` on the bytes: an ASCII digit's byte never occurs
    inside a UTF-8 sequence of another character, so the offsets and missing values stay as they are."""
    validity, offsets, data = values.buffers()
    if data is None:
        return values
    raw = _DIGIT_AS_ZERO[np.frombuffer(data, dtype=np.uint8)]       # one lookup per byte: a new buffer
    return pa.Array.from_buffers(values.type, len(values), [validity, offsets, pa.py_buffer(raw)],
                                 null_count=values.null_count, offset=values.offset)


def _one(text: str | None, mode: int, postcode: str | None) -> str | None:
    return sanitise_address(text, True if mode == _KEEP else (postcode if mode == _REPLACE else None))


def sanitise_addresses(texts: pd.Series, postcodes: pd.Series | None = None) -> pd.Series:
    """``sanitise_address`` over a column (``postcodes``: each row's replacement postcode), same results.

    Columnar: every ASCII digit is read as ``0`` (Arrow kernel), every postcode in the text as one canonical
    postcode when the row's own replaces it, and each distinct such *skeleton* of an address is cleaned once, with a placeholder for the replacement postcode that Arrow then fills in per row. This is
    exact because every rule above treats all ASCII digits alike (they appear only as ``\\d``, ``\\w`` or a
    class holding every digit): cleaning commutes with the digit mapping, so a skeleton's result that holds no
    digit is the result of every address with that skeleton. A result that holds a digit (a postcode kept, a
    road number like ``A58``) is computed again from the address itself, once per distinct address. A
    replacement postcode that is not plain letters and digits (one space at most), or a text holding the
    placeholder, takes the per-row path. Typical address columns have thousands of skeletons, not millions.
    """
    values = _arrow_text(texts)
    n = len(values)
    if postcodes is None:
        modes = np.full(n, _KEEP, dtype=np.int64)
        pcs = pa.nulls(n, pa.large_string())
    else:
        pcs = _arrow_text(postcodes.reindex(texts.index))
        given = pac.fill_null(pac.greater(pac.utf8_length(pcs), 0), False).to_numpy(zero_copy_only=False)
        modes = np.where(given, _REPLACE, _REMOVE).astype(np.int64)
        plain = pac.fill_null(pac.match_substring_regex(pcs, _PLAIN_POSTCODE), False).to_numpy(zero_copy_only=False)
        modes[given & ~plain] = _ODD
    present = values.is_valid().to_numpy(zero_copy_only=False)
    # Every ASCII digit read as 0 first (the skeleton): the placeholder test, ASCII-ness and the postcode pattern
    # read all digits alike and a digit byte is never part of another character, so each is asked once per
    # distinct skeleton, not per row. Missing values point at a last, empty slot.
    zeroed = pac.dictionary_encode(_digits_as_zero(values))
    distinct = zeroed.dictionary
    idx = zeroed.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False).astype(np.int64)

    def per_row(flags: pa.Array) -> np.ndarray:
        return np.append(pac.fill_null(flags, False).to_numpy(zero_copy_only=False), False)[idx]

    odd = per_row(pac.match_substring(distinct, _SLOT)) & present
    modes[odd] = _ODD

    # Where the row's postcode replaces or removes those in its text, their letters and digits never reach the
    # result (they are set aside before any rule runs, no rule word fits in one, and each is found again in
    # the same place): every postcode in an ASCII text reads as one canonical postcode in its skeleton.
    canon = (modes == _REPLACE) | (modes == _REMOVE)
    canon &= per_row(pac.string_is_ascii(distinct))
    texts_of = [distinct.to_pylist() + [None]]
    if canon.any():
        texts_of.append(pac.replace_substring_regex(distinct, _POSTCODE_RE2, _CANON_POSTCODE).to_pylist() + [None])
    # a skeleton: (distinct zeroed text, its postcodes canonical or not); two may read the same, then both are
    # cleaned, to the same result
    skel_idx = idx * 2 + canon
    pair = skel_idx * 4 + modes
    common = present & (modes != _ODD)
    # np.unique(pair[common], return_inverse=True) without sorting a million codes: they are below 8 x skeletons
    seen = np.zeros(8 * (len(distinct) + 1), dtype=bool)
    seen[pair[common]] = True
    pairs = np.flatnonzero(seen)
    inverse = (np.cumsum(seen) - 1)[pair[common]]
    templates: list[str | None] = []
    exact = np.zeros(len(pairs), dtype=bool)
    for k, code in enumerate(pairs.tolist()):
        skel = code // 4
        out = _one(texts_of[skel % 2][skel // 2], code % 4, _SLOT)
        exact[k] = out is not None and _ANY_DIGIT.search(out) is not None
        templates.append(out)
    # each row's result is pool[where[row]]: its skeleton's template, or one computed for it below
    pool = templates
    where = np.full(n, -1, dtype=np.int64)
    rows = np.flatnonzero(common)
    where[rows] = inverse
    # results holding a digit: from the address itself, once per distinct (address, mode)
    redo = rows[exact[inverse]]
    if len(redo):
        seen: dict[tuple[str, int], int] = {}
        for r, text in zip(redo.tolist(), values.take(pa.array(redo)).to_pylist()):
            key = (text, int(modes[r]))
            if key not in seen:
                seen[key] = len(pool)
                pool.append(_one(text, key[1], _SLOT))
            where[r] = seen[key]
    # the rare rows nothing can be shared for: one by one, as they are
    for r in np.flatnonzero(present & (modes == _ODD)).tolist():
        where[r] = len(pool)
        pool.append(sanitise_address(values[r].as_py(), True if postcodes is None else pcs[r].as_py()))
    out = pa.array(pool, type=pa.large_string()).take(pa.array(where, mask=where < 0))
    fill = modes == _REPLACE
    if fill.any():
        # each row's own postcode into its template's placeholder(s)
        at = pa.array(np.flatnonzero(fill))
        joined = pac.binary_join(pac.split_pattern(out.take(at), _SLOT), pcs.take(at))
        out = pac.replace_with_mask(out, pa.array(fill), joined)
    return pd.Series(pd.arrays.ArrowStringArray(out.cast(pa.string())), index=texts.index).astype("string")


def address_leaks(texts: pd.Series) -> np.ndarray:
    """Which values still hold a house or flat number (``ADDRESS_LEAK``); missing values never do.

    The pattern needs look-arounds RE2 lacks, so it runs in Python, but once per distinct value: sanitised
    addresses repeat (a street and a town), so a million rows hold a few thousand distinct values.
    """
    values = pac.dictionary_encode(_arrow_text(texts))
    leak = re.compile(ADDRESS_LEAK)
    distinct = np.array([leak.search(t) is not None for t in values.dictionary.to_pylist()] + [False], dtype=bool)
    return distinct[values.indices.fill_null(len(values.dictionary)).to_numpy(zero_copy_only=False)]
