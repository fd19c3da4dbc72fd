"""The invariant check of a sanitised frame: nothing personal left, every point on a safe postcode centroid.

:func:`check_sanitised` is driven by the feed file's schema and returns the problems found (empty when the frame
is safe to load), naming columns and row labels, never values. The sanitise stage (``pipeline_geo.py``) refuses to
load a frame with a problem: it stops the supply and says why.
"""
from __future__ import annotations

import re
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory import scrubbing
from csp_observatory.addresses import address_leaks
from csp_observatory.sanitising_displacement import PostcodeMap
from csp_observatory.schema import FeedFile

_GEO_COLUMNS: Final = ("geo_easting", "geo_northing", "geo_postcode", "geocode_note")


def check_sanitised(frame: pd.DataFrame, postcode_map: PostcodeMap, feed_file: FeedFile) -> list[str]:
    """Invariant check of a sanitised frame, driven by its schema; returns the problems found (empty when safe).

    Points sit on the centroid of a postcode with enough households; nothing dropped on sanitising survives
    (``schema.DROPPED_ON_SANITISING`` roles, ``free_text: drop`` columns, the exact geocoded point); no free-text
    column lacks a rule; scrubbed free text holds none of the patterns ``scrubbing.py`` removes; address text
    holds no house or flat number, none of those patterns, and no postcode but the record's sanitised one.
    Problems name columns and row labels, never values.
    """
    problems: list[str] = []
    rules = frame["sanitise_rule"].astype(str)
    checked = ~rules.isin(["non_addressable", "not_geocoded"]).to_numpy()
    pc = frame["sanitised_postcode"].astype("string")
    # the map's own row of each eligible target postcode (an Arrow lookup, no Python string per record)
    pos = postcode_map.target_rows(pc)
    e = frame["sanitised_easting"].astype(float).to_numpy()
    n = frame["sanitised_northing"].astype(float).to_numpy()
    ok_pc = pos >= 0
    te = np.where(ok_pc, postcode_map._array("easting")[np.maximum(pos, 0)], np.nan)
    tn = np.where(ok_pc, postcode_map._array("northing")[np.maximum(pos, 0)], np.nan)
    bad = checked & ~(ok_pc & (te == e) & (tn == n))
    if bad.any():
        problems.append(f"{int(bad.sum())} record(s) have a sanitised point that is not the centroid of a postcode "
                        f"with at least {postcode_map.threshold} households (first rows: "
                        f"{list(frame.index[bad][:5])})")
    leaked_pc = (rules == "not_geocoded").to_numpy() & (pc.notna().to_numpy() | ~np.isnan(e))
    if leaked_pc.any():
        problems.append(f"{int(leaked_pc.sum())} record(s) not geocoded still carry a postcode or point")
    personal = [f.name for f in feed_file.datafields if f.dropped_on_sanitising and f.name in frame.columns]
    personal += [c for c in frame.columns if c in _GEO_COLUMNS]
    if personal:
        problems.append(f"personal, precise-location or dropped free-text columns survive: {sorted(personal)}")
    unruled = [f.name for f in feed_file.datafields
               if f.needs_free_text_rule and f.free_text is None and f.name in frame.columns]
    if unruled:
        problems.append(f"free-text columns without a sanitising rule (scrub, drop or codes): {sorted(unruled)}")
    for col in [f.name for f in feed_file.datafields if f.free_text == "scrub" and f.name in frame.columns]:
        problems += _scrub_leaks(frame[col], col, "free_text")
    address = feed_file.location.address
    if address and address in frame.columns:
        text = frame.loc[(rules != "non_addressable").to_numpy(), address]
        leaks = text[address_leaks(text)]
        if len(leaks):
            problems.append(f"{len(leaks)} address(es) in {address} still hold a house or flat number "
                            f"(first rows: {list(leaks.index[:5])})")
        problems += _scrub_leaks(frame[address], address, "address")
        problems += _foreign_postcodes(frame[address], pc, address)
    for name, other in feed_file.other_locations:
        own = frame[other.postcode].astype("string") if other.postcode and other.postcode in frame else \
            pd.Series(pd.NA, index=frame.index, dtype="string")
        unsafe = own.notna().to_numpy() & (postcode_map.target_rows(own) < 0)
        if unsafe.any():
            problems.append(f"{int(unsafe.sum())} value(s) in {other.postcode} ({name}) are not a postcode with at "
                            f"least {postcode_map.threshold} households (first rows: "
                            f"{list(frame.index[unsafe][:5])})")
        if other.address and other.address in frame.columns:
            text = frame[other.address]
            leaks = text[address_leaks(text)]
            if len(leaks):
                problems.append(f"{len(leaks)} address(es) in {other.address} ({name}) still hold a house or flat "
                                f"number (first rows: {list(leaks.index[:5])})")
            problems += _scrub_leaks(frame[other.address], other.address, "address")
            problems += _foreign_postcodes(frame[other.address], own, other.address)
    return problems


def _scrub_leaks(texts: pd.Series, col: str, profile: scrubbing.Profile) -> list[str]:
    """One problem per kind of personal data still found in a column (counts and row labels only)."""
    found = scrubbing.find(texts, profile)
    out = []
    for kind in found.columns:
        rows = found.index[found[kind].to_numpy() > 0]
        if len(rows):
            out.append(f"{len(rows)} value(s) in {col} still hold a {kind} after scrubbing "
                       f"(first rows: {list(rows[:5])})")
    return out


_ANY_POSTCODE: Final = r"(?i)\b(?P<outward>[A-Z]{1,2}[0-9][A-Z0-9]?)\s*(?P<inward>[0-9][A-Z]{2})\b"


def _foreign_postcodes(texts: pd.Series, sanitised: pd.Series, col: str) -> list[str]:
    """Address text may hold only the record's own sanitised postcode (Appendix 1), never the one supplied."""
    values = scrubbing.as_arrow(texts)
    n = pac.count_substring_regex(values, _ANY_POSTCODE).fill_null(0).to_numpy(zero_copy_only=False)
    has = np.flatnonzero(n > 0)
    if not len(has):
        return []
    first = pac.extract_regex(values.take(pa.array(has)), _ANY_POSTCODE)
    outward, inward = first.field("outward"), first.field("inward")
    found = pac.utf8_upper(pac.binary_join_element_wise(outward, inward, pa.scalar(" ", type=outward.type)))
    own = scrubbing.as_arrow(sanitised).take(pa.array(has)).cast(found.type)
    # no sanitised postcode (not geocoded): any postcode in the text is the supplied one
    bad = pac.fill_null(pac.not_equal(found, own), True).to_numpy(zero_copy_only=False).astype(bool)
    # several postcodes in one text are rare: those rows are compared one by one (ASCII \b, as RE2 above)
    for i in np.flatnonzero((n[has] > 1) & ~bad):
        text = str(values[int(has[i])].as_py())
        codes = {f"{a} {b}".upper() for a, b in re.findall(_ANY_POSTCODE, text, flags=re.ASCII)}
        bad[i] = codes != {own[i].as_py()}
    rows = texts.index[has[bad]]
    if not len(rows):
        return []
    return [f"{len(rows)} address(es) in {col} hold a postcode other than the record's sanitised postcode "
            f"(first rows: {list(rows[:5])})"]
