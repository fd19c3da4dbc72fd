"""Reading the published postcode extracts into reference frames: OS Code-Point Open, ONSPD, household estimates.

:func:`read_codepoint_open` and :func:`read_onspd` give reference frames (``postcodes.REFERENCE_COLUMNS``),
:func:`read_household_estimates` and :func:`attach_households` add Census household counts, and
:func:`combine_references` makes one frame of several. :func:`shipped_reference` is the demo reference shipped in
``include/postcodes`` (``include/postcodes/README.md`` says where each file comes from).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Iterable

import numpy as np
import pandas as pd

from csp_observatory.postcodes import (SHIPPED_CODEPOINT, SHIPPED_HOUSEHOLDS, SHIPPED_ONSPD, _blank_to_na, _typed,
                                       empty_reference, log, normalise_postcodes)

#: Code-Point Open has no header row; this is the order of ``Code-Point_Open_Column_Headers.csv``.
CODEPOINT_COLUMNS: Final = ["Postcode", "Positional_quality_indicator", "Eastings", "Northings", "Country_code",
                            "NHS_regional_HA_code", "NHS_HA_code", "Admin_county_code", "Admin_district_code",
                            "Admin_ward_code"]
#: Positional quality 90: Code-Point Open gives the postcode no coordinates.
CODEPOINT_NO_COORDINATES: Final = 90

#: Names the households count has had in the Census postcode estimates: 2011 ``Occupied_Households``;
#: the 2021 edition publishes a households count per postcode under another heading (``Households`` /
#: ``Number of households`` / ``Count`` in its households-only table). Matched case-insensitively,
#: ignoring spaces and underscores.
HOUSEHOLD_COLUMN_NAMES: Final = ("occupiedhouseholds", "households", "numberofhouseholds", "householdcount",
                                 "count")


def read_codepoint_open(path: str | Path, source: str | None = None) -> pd.DataFrame:
    """Read an OS Code-Point Open CSV (no header row) into a reference frame; all its postcodes are live.

    Rows with positional quality 90 have no coordinates: they are dropped and counted in
    ``frame.attrs["dropped_no_coordinates"]``.
    """
    path = Path(path)
    raw = pd.read_csv(path, header=None, names=CODEPOINT_COLUMNS, dtype=str, keep_default_na=False)
    quality = pd.to_numeric(raw["Positional_quality_indicator"], errors="coerce")
    e = pd.to_numeric(raw["Eastings"], errors="coerce")
    n = pd.to_numeric(raw["Northings"], errors="coerce")
    keep = (quality != CODEPOINT_NO_COORDINATES) & e.notna() & n.notna()
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d postcodes without coordinates (positional quality 90) dropped", path.name, dropped)
    raw = raw[keep]
    frame = pd.DataFrame({
        "postcode": normalise_postcodes(raw["Postcode"]),
        "easting": e[keep], "northing": n[keep], "households": 0,
        "ward_code": _blank_to_na(raw["Admin_ward_code"]),
        "district_code": _blank_to_na(raw["Admin_district_code"]),
        "terminated": False, "source": source or f"codepoint_open:{path.name}", "terminated_date": pd.NA,
    })
    frame = frame[frame["postcode"].notna()]
    frame.attrs["dropped_no_coordinates"] = dropped
    return _typed(frame)


def read_onspd(path: str | Path, source: str | None = None) -> pd.DataFrame:
    """Read an ONS Postcode Directory CSV (header row; live and terminated postcodes) into a reference frame.

    ``doterm`` non-empty means terminated (``terminated_date`` becomes ``YYYY-MM``). Coordinates may be
    zero-padded (``0801193``); postcodes without them are dropped and counted in
    ``frame.attrs["dropped_no_coordinates"]``.
    """
    path = Path(path)
    wanted = ["pcds", "doterm", "oseast1m", "osnrth1m", "osward", "oslaua"]
    raw = pd.read_csv(path, usecols=wanted, dtype=str, keep_default_na=False)
    e = pd.to_numeric(raw["oseast1m"].str.strip(), errors="coerce")
    n = pd.to_numeric(raw["osnrth1m"].str.strip(), errors="coerce")
    keep = e.notna() & n.notna()
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d postcodes without coordinates dropped", path.name, dropped)
    raw = raw[keep]
    doterm = _blank_to_na(raw["doterm"])
    frame = pd.DataFrame({
        "postcode": normalise_postcodes(raw["pcds"]),
        "easting": e[keep], "northing": n[keep], "households": 0,
        "ward_code": _blank_to_na(raw["osward"]), "district_code": _blank_to_na(raw["oslaua"]),
        "terminated": doterm.notna().to_numpy(),
        "source": source or f"onspd:{path.name}",
        "terminated_date": doterm.str.slice(0, 4) + "-" + doterm.str.slice(4, 6),
    })
    frame = frame[frame["postcode"].notna()]
    frame.attrs["dropped_no_coordinates"] = dropped
    return _typed(frame)


def combine_references(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One reference from several: where sources overlap, a live row wins over a terminated one, then the first."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_reference()
    both = pd.concat(frames, ignore_index=True)
    both = both.sort_values("terminated", kind="stable")
    return _typed(both.drop_duplicates("postcode", keep="first").sort_values("postcode"))


# --- households -------------------------------------------------------------------------------------

def _find_column(columns: Iterable[str], names: Iterable[str]) -> str | None:
    squashed = {re.sub(r"[\s_]+", "", c).lower(): c for c in columns}
    for name in names:
        if name in squashed:
            return squashed[name]
    return None


def read_household_estimates(path: str | Path, households_column: str | None = None) -> pd.DataFrame:
    """Read Census postcode household estimates into ``postcode, households`` (one row per postcode).

    Accepts the 2011 layout (``Postcode, Total, Males, Females, Occupied_Households``) and the 2021 one,
    whose households count has another heading (see ``HOUSEHOLD_COLUMN_NAMES``; or pass
    ``households_column``). Postcodes written with two spaces are normalised; a postcode split over
    several rows is summed; residents with zero households (communal establishments) stay 0.
    """
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, comment=None)
    pc_col = _find_column(raw.columns, ("postcode", "pcd", "pcds", "postcodes"))
    hh_col = households_column or _find_column(raw.columns, HOUSEHOLD_COLUMN_NAMES)
    if pc_col is None or hh_col is None or hh_col not in raw.columns:
        raise ValueError(f"{path}: not a postcode household estimates file: need a Postcode column and one of "
                         f"{HOUSEHOLD_COLUMN_NAMES}; columns are {list(raw.columns)}")
    postcode = normalise_postcodes(raw[pc_col])
    households = pd.to_numeric(raw[hh_col].str.replace(",", "").str.strip(), errors="coerce").fillna(0)
    bad = int(postcode.isna().sum())
    if bad:
        log.warning("%s: %d rows whose postcode is not a UK postcode were skipped", path, bad)
    frame = pd.DataFrame({"postcode": postcode, "households": households}).dropna(subset=["postcode"])
    frame = frame.groupby("postcode", as_index=False, sort=True)["households"].sum()
    frame["households"] = frame["households"].astype("int64")
    frame["postcode"] = frame["postcode"].astype("string")
    frame.attrs["skipped_rows"] = bad
    return frame


def attach_households(reference: pd.DataFrame, households: pd.DataFrame) -> pd.DataFrame:
    """The reference with ``households`` from an estimates frame; postcodes absent from it get 0 (no residents)."""
    counts = households.set_index("postcode")["households"]
    idx = counts.index.get_indexer(reference["postcode"])
    values = counts.to_numpy()
    out = reference.copy()
    out["households"] = np.where(idx >= 0, values[np.maximum(idx, 0)], 0).astype("int64")
    return out


# --- shipped extracts -------------------------------------------------------------------------------

def shipped_reference(include_terminated_onspd: bool = True) -> pd.DataFrame:
    """The demo reference shipped in include/postcodes: Calderdale Code-Point Open with the SYNTHETIC household
    counts, plus (by default) the terminated postcodes of the ONSPD AB extract, so terminated postcodes geocode.
    """
    cpo = attach_households(read_codepoint_open(SHIPPED_CODEPOINT, source="codepoint_open_2014-08"),
                            read_household_estimates(SHIPPED_HOUSEHOLDS))
    frames = [cpo]
    if include_terminated_onspd:
        onspd = read_onspd(SHIPPED_ONSPD, source="onspd_extract_AB")
        frames.append(onspd[onspd["terminated"]])
    return combine_references(frames)
