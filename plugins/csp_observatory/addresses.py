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

import pandas as pd

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


def sanitise_addresses(texts: pd.Series, postcodes: pd.Series | None = None) -> pd.Series:
    """Vectorised ``sanitise_address`` (each distinct text is cleaned once); postcodes: per-row replacement."""
    if postcodes is None:
        values = texts.astype(object).where(texts.notna(), None)
        uniq = pd.unique(values)
        cleaned = {t: sanitise_address(t) for t in uniq if t is not None}
        return pd.Series([cleaned.get(t) if t is not None else None for t in values],
                         index=texts.index, dtype="string")
    pcs = postcodes.reindex(texts.index).astype(object).where(postcodes.reindex(texts.index).notna(), None)
    pairs = list(zip(texts.astype(object).where(texts.notna(), None), pcs))
    cache: dict[tuple[str | None, str | None], str | None] = {}
    out = []
    for pair in pairs:
        if pair not in cache:
            cache[pair] = sanitise_address(pair[0], pair[1])
        out.append(cache[pair])
    return pd.Series(out, index=texts.index, dtype="string")
