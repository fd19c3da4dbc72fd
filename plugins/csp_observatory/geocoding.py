"""Geocode records to British National Grid (EPSG:27700) and say how each point was found.

Order, first that applies (ARCHITECTURE.md): supplied easting/northing inside Great Britain
(``supplied``); WGS84 longitude/latitude (``wgs84``); a live postcode's centroid (``postcode``); a
terminated postcode's centroid from ONSPD (``terminated_postcode``, flagged for the report); a
non-addressable location matched in the gazetteer (``gazetteer``: the centre of the place, exempt from
the household rule); otherwise ``failed``, kept with a note and counted, never dropped. A supplied point
further than the feed's ``coverage_max_m`` from every reference postcode is ``outside_coverage``: it is not
placed (the sanitiser could only move it, silently and far, to a postcode it does not belong to).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from csp_observatory import gazetteer, textkernels
from csp_observatory.cleaning import postcodes_in_normal_form
from csp_observatory.postcodes import inside_gb, postcode_positions

METHODS: Final = ("supplied", "wgs84", "postcode", "terminated_postcode", "gazetteer", "outside_coverage",
                   "failed")
_CODE: Final = {m: i for i, m in enumerate(METHODS)}
#: Methods that leave a record without a point: it is loaded, but flagged for the partner.
UNPLACED: Final = frozenset({"outside_coverage", "failed"})
GEO_COLUMNS: Final = ("geo_easting", "geo_northing", "geo_postcode", "geocode_method", "geocode_note")

# WGS84 box around Great Britain and its islands: a lon/lat outside it is a typo (or swapped).
_LON: Final = (-9.0, 2.5)
_LAT: Final = (49.0, 61.5)
FAR_FROM_POSTCODE_M: Final = 1000.0
_OUTSIDE_COVERAGE: Final = "outside the reference's coverage"
#: Value-free wording of each geocoding problem, for reports: a note may hold the partner's postcode.
_PROBLEMS: Final = (
    (_OUTSIDE_COVERAGE, "the point is outside the postcode reference's coverage (too far from every known postcode)"),
    ("not in the postcode reference", "the postcode is not in the postcode reference"),
    ("is not a UK postcode", "the postcode is not a valid UK postcode"),
    ("easting/northing outside Great Britain", "the easting/northing is outside Great Britain"),
    ("longitude/latitude outside Great Britain", "the longitude/latitude is outside Great Britain"),
    ("no coordinates, postcode or recognised place", "no coordinates, postcode or recognised place"),
)


@dataclass
class GeocodeResult:
    """The geocoded frame and how many records each method placed (for the quality report)."""

    frame: pd.DataFrame
    counts: dict[str, int]


def _numbers(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    """A column as float64 with NaN for missing or non-numeric values (all NaN if there is no column)."""
    if not column or column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").astype("Float64").to_numpy(float, na_value=np.nan)


@lru_cache(maxsize=1)
def _transformer() -> Any:
    from pyproj import Transformer

    # Without the OSTN15 grid (uk_os_OSTN15_NTv2_OSGBtoETRS.tif, not downloadable offline) PROJ falls back
    # to the OSGB36 Helmert transformation: 2-5 m, plenty for a postcode-level product. Install the grid
    # into PROJ's data directory for centimetre accuracy; this code then uses it unchanged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Transformer.from_crs(4326, 27700, always_xy=True)


def wgs84_to_bng(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude (EPSG:4326) to easting/northing (EPSG:27700), vectorised with pyproj."""
    e, n = _transformer().transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(e, float), np.asarray(n, float)


class _NearestLive:
    """Nearest live postcode centroid to a point (a KD-tree, built only when first needed)."""

    def __init__(self, reference: pd.DataFrame) -> None:
        self.rows = np.flatnonzero(~reference["terminated"].to_numpy(bool))
        self.live = reference.iloc[self.rows]
        self._tree: Any = None

    def __call__(self, e: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reference row (position) of the nearest live postcode to each point, -1 if none, and its distance."""
        if len(self.live) == 0 or len(e) == 0:
            return np.full(len(e), -1, np.int64), np.full(len(e), np.nan)
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.live[["easting", "northing"]].to_numpy(float))
        dist, idx = self._tree.query(np.column_stack([e, n]))
        return self.rows[idx], dist


def problem_reasons(notes: pd.Series) -> pd.Series:
    """Why each record got no point, in words that hold none of its values (for the partner's report)."""
    text = notes.astype("string").fillna("")
    out = pd.Series("", index=text.index, dtype=object)
    for key, words in _PROBLEMS:
        hit = text.str.contains(key, regex=False).to_numpy(bool)
        out[hit] = np.where(out[hit] == "", words, out[hit] + "; " + words)
    return out.where(out != "", "the location could not be placed")


def geocode(frame: pd.DataFrame, feed_file: Any, reference: pd.DataFrame,
            places: pd.DataFrame | None = None, coverage_max_m: float = FAR_FROM_POSTCODE_M) -> GeocodeResult:
    """Add ``geo_easting, geo_northing, geo_postcode, geocode_method, geocode_note`` to a frame.

    ``feed_file`` is the schema's FeedFile: its ``location`` names the easting/northing, longitude/latitude,
    postcode and address datafields. ``reference`` is the postcode reference frame; ``places`` the gazetteer
    (a places frame or ``gazetteer.PlaceIndex``), optional. A supplied point further than ``coverage_max_m``
    from every live reference postcode is left unplaced as ``outside_coverage``.
    """
    loc = feed_file.location
    n_rows = len(frame)
    geo_e = np.full(n_rows, np.nan)
    geo_n = np.full(n_rows, np.nan)
    # each record's postcode as a row of the (sorted) reference, -1 for none; its method as a code of METHODS:
    # no Python string per record until the columns are made, in Arrow
    geo_pc = np.full(n_rows, -1, np.int64)
    method = np.full(n_rows, _CODE["failed"], np.int8)
    note = np.full(n_rows, None, object)
    done = np.zeros(n_rows, bool)

    # Live rows first, so a postcode both live and terminated in the reference is found as live.
    ref = reference.iloc[np.argsort(reference["terminated"].to_numpy(bool), kind="stable")]
    ref_e = ref["easting"].to_numpy(float)
    ref_n = ref["northing"].to_numpy(float)
    ref_term = ref["terminated"].to_numpy(bool)
    ref_date = ref["terminated_date"] if "terminated_date" in ref else pd.Series(pd.NA, index=ref.index)
    nearest = _NearestLive(ref)

    raw_pc = frame[loc.postcode] if loc.postcode and loc.postcode in frame else pd.Series(pd.NA, index=frame.index)
    pc = postcodes_in_normal_form(raw_pc)
    pos = postcode_positions(pc, ref["postcode"])
    in_ref = pos >= 0
    posc = np.maximum(pos, 0)

    def assign_postcodes(rows: np.ndarray) -> None:
        """The record's own postcode if the reference knows it, else the nearest live postcode centroid."""
        own = rows & in_ref
        geo_pc[own] = pos[own]                  # the reference's own spelling: the same string (an exact match)
        other = np.flatnonzero(rows & ~in_ref)
        if len(other):
            geo_pc[other], dist = nearest(geo_e[other], geo_n[other])
            # A point far from every known postcode is outside the reference's area (or wrong): placing it at
            # the nearest postcode would move it silently and far, so it is not placed and the partner is told.
            far = other[dist > coverage_max_m]
            geo_e[far], geo_n[far], geo_pc[far] = np.nan, np.nan, -1
            method[far] = _CODE["outside_coverage"]
            note[far] = (f"{_OUTSIDE_COVERAGE}: the nearest live postcode is more than {coverage_max_m:,.0f} m "
                         "away; not placed")

    # 1 (and 6, below). Non-addressable places (a park, a car park, a station) the gazetteer knows: Appendix 1
    # places them at the place's centre point and exempts them from the household rule. Text that names such a
    # place outright ("car park", "waste ground") is matched before any coordinates the partner sent, which
    # might be a house's; text with only a weaker hint ("... Bridge", "... Fields") is tried last, when nothing
    # else placed the record. A home address (offenders, victims) is never non-addressable.
    address_col = loc.address if loc.address and loc.address in frame else None
    use_places = (places is not None and address_col is not None and len(places) > 0
                  and getattr(loc, "kind", "incident") != "home")
    index = None
    texts = frame[address_col].astype("string") if use_places else None
    matches: dict[Any, Any] = {}

    def match_places(rows: np.ndarray) -> None:
        nonlocal index
        if index is None:
            index = places if isinstance(places, gazetteer.PlaceIndex) else gazetteer.PlaceIndex.build(places)
        at = np.flatnonzero(rows)
        if not len(at):
            return
        # the same place is named by many records: each distinct text is matched once, then spread to its rows
        codes, distinct = pd.factorize(texts.iloc[at])
        found = np.zeros(len(distinct) + 1, bool)        # last slot: a missing text (code -1), never matched
        d_e, d_n = np.full(len(distinct) + 1, np.nan), np.full(len(distinct) + 1, np.nan)
        d_note = np.full(len(distinct) + 1, None, object)
        for j, text in enumerate(distinct.tolist()):
            if text not in matches:
                matches[text] = (gazetteer.match_location(text, index) if gazetteer.is_non_addressable(text)
                                 else None)
            match = matches[text]
            if match is None:
                continue
            found[j], d_e[j], d_n[j] = True, match.easting, match.northing
            d_note[j] = (f"non-addressable location matched to {match.name!r} "
                         f"(confidence {match.confidence:.2f}){'; ' + match.note if match.note else ''}")
        hit = found[codes]
        i, j = at[hit], codes[hit]
        geo_e[i], geo_n[i] = d_e[j], d_n[j]
        method[i] = _CODE["gazetteer"]
        note[i] = d_note[j]
        done[i] = True

    if use_places:
        match_places(textkernels.contains(texts, gazetteer.STRONG_HINT))

    # 2. Supplied easting/northing inside Great Britain.
    e = _numbers(frame, loc.easting)
    n = _numbers(frame, loc.northing)
    has_en = ~done & ~np.isnan(e) & ~np.isnan(n)
    ok = has_en & inside_gb(e, n)
    geo_e[ok], geo_n[ok] = e[ok], n[ok]
    method[ok] = _CODE["supplied"]
    assign_postcodes(ok)
    done |= ok
    bad_en = has_en & ~ok
    note[bad_en] = "supplied easting/northing outside Great Britain: not used"

    # 3. WGS84 longitude/latitude.
    lon = _numbers(frame, loc.longitude)
    lat = _numbers(frame, loc.latitude)
    has_ll = ~done & ~np.isnan(lon) & ~np.isnan(lat)
    plausible = has_ll & (lon > _LON[0]) & (lon < _LON[1]) & (lat > _LAT[0]) & (lat < _LAT[1])
    rows = np.flatnonzero(plausible)
    if len(rows):
        te, tn = wgs84_to_bng(lon[rows], lat[rows])
        good = np.isfinite(te) & np.isfinite(tn) & inside_gb(te, tn)
        rows = rows[good]
        geo_e[rows], geo_n[rows] = te[good], tn[good]
        method[rows] = _CODE["wgs84"]
        mask = np.zeros(n_rows, bool)
        mask[rows] = True
        assign_postcodes(mask)
        done |= mask
    bad_ll = has_ll & ~done
    note[bad_ll] = "longitude/latitude outside Great Britain: not used"

    # 4 and 5. Live postcode centroid; terminated postcode centroid (flagged).
    hit = ~done & in_ref
    geo_e[hit], geo_n[hit] = ref_e[posc[hit]], ref_n[posc[hit]]
    geo_pc[hit] = pos[hit]
    term = hit & ref_term[posc]
    live = hit & ~term
    method[live] = _CODE["postcode"]
    method[term] = _CODE["terminated_postcode"]
    if term.any():
        dates = ref_date.iloc[posc[term]].astype("string").fillna("(date unknown)").to_numpy(object)
        note[term] = "postcode terminated " + dates + "; centroid of the terminated postcode used"
    done |= hit

    if use_places and (~done).any():
        match_places(~done & textkernels.contains(texts, gazetteer.NON_ADDRESSABLE_HINT))

    # 7. Failed: say why, so the partner can fix it.
    failed = ~done
    if failed.any():
        rows = np.flatnonzero(failed)
        raw_text = raw_pc.iloc[rows].astype("string").str.strip().fillna("").to_numpy(object)
        norm = pc.iloc[rows].to_numpy(object, na_value=None)
        reasons = np.array([
            f"postcode {p} is not in the postcode reference" if p is not None
            else f"postcode {t!r} is not a UK postcode" if t
            else "no coordinates, postcode or recognised place"
            for p, t in zip(norm, raw_text)], dtype=object)
        prior = note[rows]
        note[rows] = np.where(pd.isna(prior), reasons, prior.astype(str) + "; " + reasons)

    out = frame.copy(deep=False)      # the new columns are added, no column is changed in place
    out["geo_easting"] = pd.array(geo_e, dtype="Float64")
    out["geo_northing"] = pd.array(geo_n, dtype="Float64")
    ref_pc = textkernels.arrow_strings(ref["postcode"].astype("string"))
    out["geo_postcode"] = pd.array(ref_pc.take(pa.array(geo_pc, mask=geo_pc < 0)), dtype="string")
    out["geocode_method"] = pd.array(pa.array(METHODS, pa.string()).take(pa.array(method)), dtype="string")
    # None or str only: Arrow converts them in C (pandas' string array checks each in Python first)
    out["geocode_note"] = pd.array(pa.array(note, pa.large_string(), from_pandas=True), dtype="string")
    tally = {m: int(c) for m, c in zip(METHODS, np.bincount(method, minlength=len(METHODS)))}
    tally["total"] = n_rows
    return GeocodeResult(out, tally)
