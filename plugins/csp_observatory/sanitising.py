"""Sanitise geocoded records (Appendix 1 of the guidance): move every point to a safe postcode centroid.

Appendix 1 rule: a record geocoded to an address takes the centroid of its postcode; if that postcode
holds fewer than ``threshold`` (four) households, it takes the centroid of the next nearest postcode
that holds at least ``threshold``. The address loses its house number, house name and flat number,
and a postcode with too few households is replaced by the postcode the record moved to.

Beyond Appendix 1 (issue 6): every free-text datafield of a depersonalised feed has a rule in its schema.
``free_text: drop`` removes the column; ``free_text: scrub`` replaces postcodes, house numbers with a street,
dates, phone numbers, e-mail addresses and names with markers (``scrubbing.py``, which says what it cannot
catch); a code list is validated upstream. Address text is scrubbed too, after ``addresses.py``. What columns
are dropped or rewritten by role is listed once, in ``schema.py`` (``DROPPED_ON_SANITISING``,
``REWRITTEN_ON_SANITISING``).

This module sanitises a feed file's records (:func:`sanitise`, :func:`sanitise_other_location`) and summarises
what was done (:func:`summarise`). Where a postcode's records go, and how "next nearest" is decided exactly, is
``sanitising_displacement.py``; the check that a sanitised frame is safe to load is ``sanitising_checks.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from csp_observatory import scrubbing
from csp_observatory.addresses import sanitise_addresses
from csp_observatory.sanitising_checks import _GEO_COLUMNS
from csp_observatory.sanitising_displacement import POSTCODE_RULES, RULES, PostcodeMap
from csp_observatory.schema import FeedFile

#: Histogram bins of displacement in metres, as reported in the summary.
DISPLACEMENT_BINS: Final = (("0", 0.0, 0.0), ("1-50", 0.0, 50.0), ("50-100", 50.0, 100.0),
                            ("100-250", 100.0, 250.0), ("250-500", 250.0, 500.0),
                            ("500-1000", 500.0, 1000.0), (">1000", 1000.0, np.inf))
_NO_POINT_METHODS: Final = frozenset({"failed"})


@dataclass(frozen=True)
class SanitiseResult:
    """The depersonalised frame and what was done to it."""

    frame: pd.DataFrame
    summary: dict[str, Any]


def _whole_years(born: pd.Series, at: pd.Series) -> pd.Series:
    """Age in completed years at a date (vectorised; NaT gives <NA>)."""
    born = pd.to_datetime(born)
    at = pd.to_datetime(at)
    years = at.dt.year - born.dt.year
    before_birthday = (at.dt.month < born.dt.month) | ((at.dt.month == born.dt.month) & (at.dt.day < born.dt.day))
    return (years - before_birthday.astype("Int64")).astype("Int64")


def _taken(values: pa.Array, rows: np.ndarray, index: pd.Index) -> pd.Series:
    """``values[rows]`` as a ``string`` Series (missing where a row is -1), taken in Arrow."""
    taken = values.take(pa.array(rows, mask=rows < 0))
    return pd.Series(pd.arrays.ArrowStringArray(taken.cast(pa.large_string())), index=index).astype("string")


def sanitise(frame: pd.DataFrame, feed_file: FeedFile, postcode_map: PostcodeMap,
             event_dates: pd.Series | None = None, period_end: Any = None) -> SanitiseResult:
    """Depersonalise a geocoded frame: safe points and postcodes, clean addresses, no names or birth dates."""
    out = frame.copy(deep=False)     # columns are replaced, never changed in place (copy-on-write)
    idx = out.index
    method = out["geocode_method"].astype("string").fillna("failed") if "geocode_method" in out \
        else pd.Series("failed", index=idx, dtype="string")
    geo_e = pd.to_numeric(out.get("geo_easting", pd.Series(np.nan, index=idx)), errors="coerce").astype(float)
    geo_n = pd.to_numeric(out.get("geo_northing", pd.Series(np.nan, index=idx)), errors="coerce").astype(float)
    geo_pc = out.get("geo_postcode", pd.Series(pd.NA, index=idx)).astype("string")

    gazetteer = (method == "gazetteer").to_numpy(bool)
    has_point = geo_e.notna().to_numpy() & geo_n.notna().to_numpy()
    addressable = ~gazetteer & ~method.isin(list(_NO_POINT_METHODS)).to_numpy(bool)
    # a record with a point but no postcode we know goes to the nearest live postcode first
    pos = postcode_map.positions(geo_pc)
    need_nearest = addressable & (pos < 0) & has_point
    if need_nearest.any():
        geo_pc = geo_pc.copy()
        geo_pc.iloc[np.flatnonzero(need_nearest)] = postcode_map.nearest_live(
            geo_e.to_numpy()[need_nearest], geo_n.to_numpy()[need_nearest])
        pos = postcode_map.positions(geo_pc)
    # integer rows of the map throughout: no Python string per record (1M records in a fraction of a second)
    hit = pos >= 0
    at = np.where(hit, pos, 0)
    target = np.where(hit, postcode_map._array("target_row")[at], -1)
    mapped = addressable & (target >= 0)

    s_e = np.where(mapped, postcode_map._array("target_easting")[at], np.nan)
    s_n = np.where(mapped, postcode_map._array("target_northing")[at], np.nan)
    s_e = np.where(gazetteer & has_point, geo_e.to_numpy(), s_e)
    s_n = np.where(gazetteer & has_point, geo_n.to_numpy(), s_n)
    s_pc = _taken(postcode_map._array("index"), np.where(mapped | gazetteer, target, -1), idx)
    rules = np.where(mapped, postcode_map._array("rule_code")[at], RULES.index("not_geocoded"))
    rules[gazetteer & has_point] = RULES.index("non_addressable")
    # where the record had no precise point (postcode-only), displacement is from its postcode centroid
    from_e = np.where(has_point, geo_e.to_numpy(), np.where(hit, postcode_map._array("easting")[at], np.nan))
    from_n = np.where(has_point, geo_n.to_numpy(), np.where(hit, postcode_map._array("northing")[at], np.nan))
    disp = np.where(mapped, np.hypot(s_e - from_e, s_n - from_n), np.nan)
    disp[gazetteer & has_point] = 0.0

    loc = feed_file.location
    scrubbed: dict[str, dict[str, int]] = {}
    if loc.address and loc.address in out:
        text = out[loc.address]
        # Every text is cleaned, non-addressable ones too: Appendix 1 does not require it for a park or a car
        # park, but a text wrongly taken for one must not keep a house name ("Rose Cottage, ...").
        # Then what addresses.py does not look for (an e-mail address, "c/o Mrs Smith") is scrubbed.
        out[loc.address], scrubbed[loc.address] = scrubbing.scrub(sanitise_addresses(text, postcodes=s_pc),
                                                                   "address")
    for f in feed_file.datafields:
        if f.free_text == "scrub" and f.name in out:
            out[f.name], scrubbed[f.name] = scrubbing.scrub(out[f.name])
    if loc.postcode and loc.postcode in out:
        out[loc.postcode] = s_pc
    others = {name: sanitise_other_location(out, other, postcode_map, scrubbed)
              for name, other in feed_file.other_locations}

    # each date of birth -> its own person's age at the event (or at the end of the supply period); every date of
    # birth is then dropped by role below, paired or not
    pairs = [(dob, age) for dob, age in feed_file.age_pairs if dob in out]
    if pairs:
        if event_dates is None and feed_file.event_date and feed_file.event_date in out:
            event_dates = out[feed_file.event_date]
        at = pd.Series(pd.NaT, index=idx, dtype="datetime64[ns]")
        if event_dates is not None:
            at = pd.to_datetime(pd.Series(event_dates, index=idx))
        if period_end is not None:
            at = at.fillna(pd.Timestamp(period_end))
        for dob, age_col in pairs:
            age = _whole_years(out[dob], at)
            if age_col in out:
                # the age sent stands where there is no date of birth (or no date to measure it at)
                age = age.fillna(pd.to_numeric(out[age_col], errors="coerce").astype("Int64"))
            out[age_col] = age

    drop = [f.name for f in feed_file.datafields if f.dropped_on_sanitising and f.name in out]
    drop += [c for c in _GEO_COLUMNS if c in out]
    out = out.drop(columns=drop)
    out["sanitised_postcode"] = s_pc
    out["sanitised_easting"] = pd.array(s_e, dtype="Float64")
    out["sanitised_northing"] = pd.array(s_n, dtype="Float64")
    out["sanitise_rule"] = _taken(pa.array(RULES, pa.string()), rules, idx).array
    out["displacement_m"] = pd.array(disp, dtype="Float64")
    summary = summarise(out)
    summary["displacement"] = postcode_map.displacement    # named in the report: how "next nearest" was read
    if others:
        summary["other_locations"] = others
    # counts by kind per column, never the values (the report shows them)
    summary["scrubbed"] = scrubbed
    return SanitiseResult(frame=out, summary=summary)


def sanitise_other_location(out: pd.DataFrame, loc: Any, postcode_map: PostcodeMap,
                            scrubbed: dict[str, dict[str, int]]) -> dict[str, int]:
    """Sanitise a further location of a record (a vehicle keeper's or a patient's home) to postcode level, in place.

    Its postcode becomes the map's target (itself when it has enough households, else the next nearest that has);
    a postcode the reference does not know is removed. Its address loses house numbers and names, keeps only that
    sanitised postcode, and is scrubbed. Its coordinates are dropped by role, like every exact point.
    Returns counts by outcome, never values.
    """
    from csp_observatory.postcodes import normalise_postcodes

    idx = out.index
    if loc.postcode and loc.postcode in out:
        given = normalise_postcodes(out[loc.postcode])
        looked = postcode_map.lookup(given)
        target = pd.Series(looked["target_postcode"].to_numpy(object), index=idx, dtype="string")
        rule = pd.Series(looked["rule"].to_numpy(object), index=idx, dtype="string")
        out[loc.postcode] = target
    else:
        given = target = pd.Series(pd.NA, index=idx, dtype="string")
        rule = pd.Series(pd.NA, index=idx, dtype="string")
    if loc.address and loc.address in out:
        out[loc.address], scrubbed[loc.address] = scrubbing.scrub(
            sanitise_addresses(out[loc.address], postcodes=target), "address")
    return {"own_postcode": int((rule == "own_postcode").sum()),
            "moved": int((rule.notna() & (rule != "own_postcode")).sum()),
            "postcode_unknown": int((given.notna() & target.isna()).sum()),
            "no_postcode": int(given.isna().sum())}


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts per rule and the distribution of displacement over records moved to a postcode centroid."""
    # compared in Arrow, never as a million Python strings (a missing rule counts under none)
    rules = frame["sanitise_rule"].astype("string")
    counts = {r: int((rules == r).fillna(False).sum()) for r in RULES}
    moved = rules.isin(POSTCODE_RULES).fillna(False).to_numpy(bool)
    d = frame.loc[moved, "displacement_m"].astype(float).dropna().to_numpy()
    dist: dict[str, Any] = {"records": int(len(d))}
    if len(d):
        q = np.percentile(d, [50, 90, 99])
        dist.update(min=float(d.min()), median=float(q[0]), p90=float(q[1]), p99=float(q[2]),
                    max=float(d.max()))
    hist = {}
    for label, lo, hi in DISPLACEMENT_BINS:
        hist[label] = int((d == 0).sum()) if label == "0" else int(((d > lo) & (d <= hi)).sum())
    dist["histogram"] = hist
    return {"records": int(len(frame)), "rules": counts, "displacement_m": dist}
