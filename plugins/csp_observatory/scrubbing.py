"""Scrub personal data out of free text before it reaches a depersonalised table (issue 6, part 7).

Partners type things into free-text datafields (method of entry, property stolen, occupation...) that the
guidance never meant to share: a victim's name, their address, a date of birth, a phone number. Every
free-text datafield of a depersonalised feed has a rule in its schema (``free_text: scrub | drop``, or a code
list); this module does the scrubbing. Each match is replaced by a marker, and only the counts are returned,
by kind (never the values):

=========  ===============  ==========================================================================
kind       marker           what is found
=========  ===============  ==========================================================================
email      ``[email]``      ``jo.bloggs@example.com``
postcode   ``[postcode]``   full UK postcodes, any case, with or without the space (``HX1 2AB``, ``hx12ab``)
phone      ``[phone]``      UK numbers with 10 or 11 digits from a leading 0, +44 or 0044, with spaces,
                            hyphens or brackets (``07700 900123``, ``+44 (0)1422 123456``, ``(01422) 123456``)
date       ``[date]``       ``12/03/1985``, ``12-3-85``, ``1985-03-12``, ``12 March 1985``, ``12th of Mar``,
                            ``March 12, 1985``, ``March 1985``, and digits after ``DOB`` / ``born``
address    ``[address]``    a house number followed by a street (``12 Acacia Avenue``, ``12a High St``,
                            ``12-14 King Cross Road``, ``no. 3 acacia avenue``) and flat, apartment, unit,
                            room and plot numbers (``Flat 3``, ``Apartment 4B``, ``Flat B``)
name       ``[name]``       a title and the words after it (``Mr John Smith``, ``Mrs Smith``, ``Dr J. Patel``,
                            ``Lady Jane Grey``), a labelled name (``Name: X``, ``surname - X``, ``known as X``,
                            ``called X``), and a common forename followed by a capitalised word
                            (``John Smith``, ``SARAH JONES``)
=========  ===============  ==========================================================================

The kinds are applied in the order above, each to the text the previous one left, so a phone number inside
an e-mail address is counted once, as an e-mail address. A street name that starts like a name (``Victoria
Road``, ``Lord Street``) is not taken for one when a strong street word (Road, Street, Avenue...) follows it.

Address text (the ``role: address`` datafield) is cleaned by ``addresses.py`` first; what it cannot reach is
then scrubbed with the ``address`` profile: e-mail addresses, phone numbers, dates and names after a personal
title (Mr, Mrs, Ms, Mx, Miss, or a ``Name:`` label). Postcodes stay there (the sanitised one), and the forename
list is not used on addresses, where it would take streets and towns for people.

The whole column is scrubbed at once with RE2 regular expressions in ``pyarrow.compute`` (no Python loop per
value), so a million rows take seconds.

What scrubbing cannot catch (it is a safety net, not a guarantee; analysts must still treat free text as
restricted):

- names without a title, a label or a forename from the list: a surname alone (``Smith said``), nicknames
  (``Smudger``), unusual or non-English forenames, names written in lower case without a title
  (``john smith``), and initials alone;
- addresses without a house number (``the house on Acacia Avenue``, ``Rose Cottage``), house numbers
  without a street (``at number 12``), streets written with a type not in the list, and outward codes alone
  (``HX1``);
- dates written in words (``the twelfth of March``), day and month with no year in figures (``12/03``), and
  ages or years alone (``born in the eighties``, ``aged 34``);
- phone numbers from outside the UK, numbers with unusual separators (``07700.900.123``), and spelt-out
  e-mail addresses (``jo at example dot com``);
- other identifiers: vehicle registrations, National Insurance numbers, bank card and account numbers,
  serial numbers and IMEIs, social media handles, and descriptions that single someone out
  (``the vicar's wife``).

It can also remove too much: a capitalised phrase after a forename (``Victoria Park``), a street written
without a strong street word (``Lady Lane``), a small number before a word like Garden or Lane.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory.addresses import STREET_TYPES

Kind = Literal["email", "postcode", "phone", "date", "address", "name"]
#: Every kind, in the order they are applied.
KINDS: Final[tuple[Kind, ...]] = ("email", "postcode", "phone", "date", "address", "name")
Profile = Literal["free_text", "address"]
MARKERS: Final[dict[str, str]] = {k: f"[{k}]" for k in KINDS}

# --- the patterns (RE2 syntax: no look-around, so order and the street protection below do that work) ----

_EMAIL: Final = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
_POSTCODE: Final = r"\b[A-Za-z]{1,2}[0-9][A-Za-z0-9]?\s*[0-9][A-Za-z]{2}\b"
# 0 then 9 or 10 more digits (UK numbers), or +44 / 0044 and the same without the 0.
_PHONE: Final = (r"(?:\+44[\s-]?(?:\(0\)[\s-]?)?|\b0044[\s-]?|\(0|\b0)"
                 r"[1-9](?:[\s-]?\)?[\s-]?[0-9]){8,9}\b")
_MONTH: Final = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
                 r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DAY: Final = r"(?:0?[1-9]|[12][0-9]|3[01])(?:st|nd|rd|th)?"
_DATE_FORMS: Final = [
    r"\b[0-9]{1,2}[/.-][0-9]{1,2}[/.-](?:[0-9]{4}|[0-9]{2})\b",                       # 12/03/1985, 12.3.85
    r"\b[0-9]{4}[/.-][0-9]{1,2}[/.-][0-9]{1,2}\b",                                  # 1985-03-12
    rf"(?i:\b{_DAY}\s+(?:of\s+)?{_MONTH}\b\.?(?:,?\s+(?:[0-9]{{4}}|'[0-9]{{2}})\b)?)",  # 12 March 1985
    rf"(?i:\b{_MONTH}\.?\s+{_DAY},?\s+[0-9]{{4}}\b)",                                 # March 12, 1985
    rf"(?i:\b{_MONTH}\.?,?\s+[0-9]{{4}}\b)",                                          # March 1985
]
#: A date after a birth label is one date with its label; digits there are a date whatever their form (120385).
_BIRTH: Final = (r"(?i:\b(?:dob|d\.o\.b|date\s+of\s+birth|born(?:\s+(?:on|in))?)\b\.?\s*[:=-]?\s*)"
                 rf"(?:{'|'.join(_DATE_FORMS)}|[0-9][0-9/.-]{{1,9}})")
_DATE: Final = "|".join([_BIRTH, *_DATE_FORMS])
_NUMBER: Final = r"[0-9]+[A-Za-z]?(?:\s*(?:-|/|&)\s*[0-9]+[A-Za-z]?)?"
_STREETS: Final = "|".join(sorted(STREET_TYPES, key=lambda w: (-len(w), w)))
#: Street words that are hardly ever a surname: a name-like word before one of them is a street, not a person.
_STRONG_STREETS: Final = "road|rd|street|avenue|ave|drive|crescent|cres|terrace|tce|gardens|gdns|square|mews|way"
_ADDRESS: Final = "|".join([
    # a number, then up to three capitalised words, then any street type: 12 Acacia Avenue, 3 The Green
    rf"\b(?i:(?:no|number)\.?\s*)?{_NUMBER},?\s+(?:[A-Z][A-Za-z'-]*\s+){{0,3}}(?i:{_STREETS})\b",
    # lower case is common in typed text: then only strong street words, so "2 bikes from the garden" stays
    rf"\b(?i:(?:no|number)\.?\s*)?{_NUMBER},?\s+(?:[A-Za-z][A-Za-z'-]*\s+){{0,3}}"
    rf"(?i:{_STRONG_STREETS}|st|lane)\b",
    r"\b(?i:flat|apartment|apt|maisonette|unit|room|suite|plot)\b\.?\s*(?i:no\.?\s*)?[0-9]+[A-Za-z]?\b",
    r"\b(?i:flat|apartment|apt)\s+[A-Z]\b",
])

#: Common forenames in England and Wales (ONS births 1950s-2010s, both sexes). Words that are as often
#: something else (Will, Bill, May, Rose, Amber, Grace, Hope...) are left out: the cost is a missed name,
#: never a mangled sentence. A forename is only taken with a capitalised word after it.
FORENAMES: Final = frozenset("""
Aaron Abdul Abigail Adam Adrian Ahmed Aidan Aiden Alan Albert Alex Alexander Alexandra Ali Alice Alison Amanda
Amelia Amy Andrea Andrew Angela Ann Anna Anne Anthony Archie Arthur Ashley Barbara Barry Ben Benjamin Beth
Bethany Brandon Brenda Brian Caitlin Callum Cameron Carl Carol Caroline Catherine Charles Charlie Charlotte
Chelsea Chloe Christine Christopher Claire Clare Colin Connor Craig Daniel Danielle Darren David Deborah
Debra Denise Dennis Derek Diane Dominic Donna Dorothy Douglas Dylan Edward Eleanor Elizabeth Ella Ellie Emily
Emma Eric Ethan Evie Fatima Fiona Florence Frances Freddie Gail Gareth Gary Gavin Gemma Geoffrey George Georgia
Gillian Gordon Graham Hannah Harriet Harrison Harry Harvey Hayley Heather Helen Henry Hollie Ian Imran
Isaac Isabel Isabella Isabelle Isla Jacob Jacqueline James Jamie Jane Janet Jason Jayden Jennifer Jessica Joan
Joanna Joanne Joe Joel John Jonathan Joseph Joshua Julia Julie Justin Karen Katherine Kathleen Kathryn Katie
Kayleigh Keith Kelly Kenneth Kerry Kevin Kieran Kimberley Kirsty Kyle Laura Lauren Leah Lee Leo Leon Lesley
Leslie Lewis Liam Linda Lindsay Lisa Logan Louise Lucy Luke Lynn Mandy Margaret Maria Marie Martin Mary
Matthew Megan Melissa Michael Michelle Mohammad Mohammed Muhammad Nathan Neil Nicholas Nicola Nigel Noah
Oliver Olivia Oscar Owen Pamela Patricia Paul Paula Pauline Peter Philip Phillip Rachel Rebecca Reece Rhys
Richard Robert Robin Ryan Sally Samantha Samuel Sandra Sarah Scott Sean Sharon Shaun Sheila Simon Sophie
Stacey Stephanie Stephen Steven Stuart Susan Suzanne Tanya Teresa Thomas Timothy Tina Tony Tracey Tracy
Trevor Tyler Usman Valerie Vanessa Victoria Wayne Wendy William Yasmin Yusuf Zara Zoe
""".split())
_FORENAME: Final = "|".join(sorted({*FORENAMES, *(n.upper() for n in FORENAMES)}, key=lambda w: (-len(w), w)))
_WORD: Final = r"[A-Za-z][A-Za-z'-]*\.?"
_CAP: Final = r"[A-Z][A-Za-z'-]*\.?"
#: Titles that are never ordinary words; the word after one is taken whatever its case (``mrs smith``).
_PERSONAL_TITLES: Final = r"(?i:mr|mrs|ms|mx|dr|prof)"
#: Titles that are also ordinary words (``did not miss the bus``, ``master bedroom``, ``rev the engine``): only
#: capitalised, before a capitalised word.
_WORD_TITLES: Final = r"(?:Miss|Master|Sir|Dame|Lady|Lord|Revd|Rev|MISS|MASTER|SIR|DAME|LADY|LORD|REVD|REV)"
_LABEL: Final = (r"(?i:\b(?:(?:sur|fore|first\s+|last\s+|full\s+|maiden\s+|given\s+)?names?)\s*[:=-]\s*)"
                 rf"{_WORD}(?:,?\s+{_WORD}){{0,2}}")
_CALLED: Final = rf"(?i:\b(?:called|named|known\s+as|aka|a\.k\.a\.))\s+{_CAP}(?:\s+{_CAP}){{0,2}}"
_NAME: Final = "|".join([
    rf"\b{_PERSONAL_TITLES}\b\.?\s+{_WORD}(?:\s+{_CAP}){{0,2}}",
    rf"\b{_WORD_TITLES}\s+{_CAP}(?:\s+{_CAP}){{0,2}}",
    _LABEL, _CALLED,
    rf"\b(?:{_FORENAME})(?:\s+[A-Z][A-Za-z'-]+){{1,2}}\b",
])
#: On address text: only personal titles (not Dr: "Park Dr") and labels, no forename list ("Victoria Road").
_ADDRESS_NAME: Final = "|".join([rf"\b(?i:mr|mrs|ms|mx|miss)\b\.?\s+{_WORD}(?:\s+{_CAP}){{0,2}}", _LABEL])

#: A name-like word followed by a strong street word is a street ("Victoria Road", "Lord Street"): the space
#: after it is swapped for a private-use character that no name pattern accepts, and swapped back after.
_GLUE: Final = "\ue000"
_STREET_NAME: Final = (rf"\b((?:{_FORENAME}|{_WORD_TITLES}))\s+((?:[A-Z][A-Za-z'-]*\s+){{0,2}}"
                       rf"(?i:{_STRONG_STREETS})\b)")


@dataclass(frozen=True)
class _Rule:
    kind: Kind
    pattern: str
    protect_streets: bool = False


_PROFILES: Final[dict[str, tuple[_Rule, ...]]] = {
    "free_text": (_Rule("email", _EMAIL), _Rule("postcode", _POSTCODE), _Rule("phone", _PHONE),
                  _Rule("date", _DATE), _Rule("address", _ADDRESS), _Rule("name", _NAME, protect_streets=True)),
    # address text after addresses.py: it keeps the sanitised postcode and has lost house and flat numbers
    "address": (_Rule("email", _EMAIL), _Rule("phone", _PHONE), _Rule("date", _DATE),
                _Rule("name", _ADDRESS_NAME)),
}


def as_arrow(texts: pd.Series) -> pa.Array:
    """The column as one Arrow string array (no copy of the text when it already is one)."""
    if not (isinstance(texts.dtype, pd.StringDtype) and texts.dtype.storage == "pyarrow"):
        texts = texts.astype("string[pyarrow]")
    values = pa.array(texts.array)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _to_series(values: pa.Array, like: pd.Series) -> pd.Series:
    """Back to pandas with the input's index, name and (string) dtype."""
    out = pd.Series(pd.arrays.ArrowStringArray(values), index=like.index, name=like.name)
    if isinstance(like.dtype, pd.StringDtype) and out.dtype != like.dtype:
        out = out.astype(like.dtype)
    return out


def _rules(profile: Profile) -> tuple[_Rule, ...]:
    try:
        return _PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown scrubbing profile {profile!r}: one of {sorted(_PROFILES)}") from None


#: One pattern per profile that matches wherever any rule could: most values hold nothing, and one pass over
#: them is much cheaper than one per kind. (Street protection only removes name matches, so this is a superset.)
_SCREENS: Final = {name: "|".join(f"(?:{r.pattern})" for r in rules) for name, rules in _PROFILES.items()}


def _protect(values: pa.Array) -> pa.Array:
    return pac.replace_substring_regex(values, _STREET_NAME, rf"\1{_GLUE}\2")


def _unprotect(values: pa.Array) -> pa.Array:
    return pac.replace_substring(values, _GLUE, " ")


def _count(values: pa.Array, pattern: str) -> np.ndarray:
    return pac.count_substring_regex(values, pattern).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _distinct(values: pa.Array, profile: Profile) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(distinct values, each row's position among them or -1 if missing, which distinct values may hold data).

    Free text repeats a lot (``Rear door forced``, ``retired``): each distinct value is looked at once.
    """
    encoded = pac.dictionary_encode(values)
    positions = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    distinct = encoded.dictionary
    suspect = pac.match_substring_regex(distinct, _SCREENS[profile]).fill_null(False)
    return distinct, positions, suspect.to_numpy(zero_copy_only=False).astype(bool)


def _scrub_distinct(texts: pa.Array, profile: Profile) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """Scrub every value, kind after kind; returns the new values and, per kind, the matches per value."""
    counts: dict[str, np.ndarray] = {}
    for rule in _rules(profile):
        if rule.protect_streets:
            texts = _protect(texts)
        counts[rule.kind] = n = _count(texts, rule.pattern)
        if n.any():
            texts = pac.replace_substring_regex(texts, rule.pattern, MARKERS[rule.kind])
        if rule.protect_streets:
            texts = _unprotect(texts)
    return texts, counts


def scrub(texts: pd.Series, profile: Profile = "free_text") -> tuple[pd.Series, dict[str, int]]:
    """Replace each postcode, address, date, phone number, e-mail address and name with its marker.

    Returns the scrubbed column (same index, name and string dtype; missing values stay missing) and the
    number of replacements by kind, every kind of the profile listed (0 when none): counts, never values.
    """
    kinds = [r.kind for r in _rules(profile)]
    values = as_arrow(texts)
    distinct, positions, suspect = _distinct(values, profile)
    if not suspect.any():
        return _to_series(values, texts), dict.fromkeys(kinds, 0)
    hit = np.flatnonzero(suspect)
    scrubbed, per_value = _scrub_distinct(distinct.take(pa.array(hit)), profile)
    # how many rows hold each distinct value: a value's matches count once per row that holds it
    rows_per_value = np.bincount(positions[positions >= 0], minlength=len(distinct))[hit]
    counts = {k: int((per_value[k] * rows_per_value).sum()) for k in kinds}
    new_distinct = pac.replace_with_mask(distinct, pa.array(suspect), scrubbed.cast(distinct.type))
    taken = new_distinct.take(pa.array(positions, mask=positions < 0))
    return _to_series(taken, texts), counts


def find(texts: pd.Series, profile: Profile = "free_text") -> pd.DataFrame:
    """How many of each kind every value still holds (one int column per kind, the input's index).

    The privacy check runs this on scrubbed output, where every count must be 0.
    """
    kinds = [r.kind for r in _rules(profile)]
    values = as_arrow(texts)
    distinct, positions, suspect = _distinct(values, profile)
    per_value = {k: np.zeros(len(distinct) + 1, dtype=np.int64) for k in kinds}   # last slot: missing values
    hit = np.flatnonzero(suspect)
    if len(hit):
        subset = distinct.take(pa.array(hit))
        for rule in _rules(profile):
            per_value[rule.kind][hit] = _count(_protect(subset) if rule.protect_streets else subset, rule.pattern)
    return pd.DataFrame({k: per_value[k][positions] for k in kinds}, index=texts.index)
