"""Postcode reference: normal form, loaders for OS Code-Point Open, ONSPD and Census household estimates.

The reference frame (ARCHITECTURE.md) has one row per postcode: ``postcode, easting, northing, households,
ward_code, district_code, terminated, source``, plus ``terminated_date`` (``YYYY-MM`` from ONSPD ``doterm``,
empty for live postcodes) so the geocoder can say when a postcode was terminated. It is loaded into
``reference.postcodes`` (PostGIS) by :func:`load_reference` and read back by :func:`read_reference`.
"""
from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any, Final, Iterable

import numpy as np
import pandas as pd

from csp_observatory.schema import REPO_ROOT

log = logging.getLogger(__name__)

POSTCODE_DIR: Final = REPO_ROOT / "include" / "postcodes"
SHIPPED_CODEPOINT: Final = POSTCODE_DIR / "codepoint_open_2014-08_hx_calderdale.csv"
SHIPPED_ONSPD: Final = POSTCODE_DIR / "onspd_extract_AB.csv.gz"
SHIPPED_HOUSEHOLDS: Final = POSTCODE_DIR / "households_SYNTHETIC_calderdale.csv"
#: Seed the shipped synthetic households file was generated with (see include/postcodes/README.md).
SHIPPED_HOUSEHOLDS_SEED: Final = 20140801

REFERENCE_COLUMNS: Final = ["postcode", "easting", "northing", "households", "ward_code", "district_code",
                            "terminated", "source", "terminated_date"]

#: Outward code (area letters, district digit(s), optional letter) + inward code (sector digit, two letters).
_POSTCODE_RE: Final = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)([0-9][A-Z]{2})$")
_POSTCODE_PATTERN: Final = _POSTCODE_RE.pattern

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

# Great Britain's extent on the National Grid: a point outside it is not a British location.
GB_EASTING: Final = (0.0, 700_000.0)
GB_NORTHING: Final = (0.0, 1_300_000.0)


# --- normal form ------------------------------------------------------------------------------------

def normalise_postcode(text: Any) -> str | None:
    """One postcode in normal form (``HX1 1AA``), or None if it is not a UK postcode shape."""
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return None
    compact = re.sub(r"\s+", "", str(text)).upper()
    m = _POSTCODE_RE.match(compact)
    return f"{m.group(1)} {m.group(2)}" if m else None


def normalise_postcodes(series: pd.Series) -> pd.Series:
    """Vectorised :func:`normalise_postcode`: a ``string`` Series with <NA> where a value is no postcode."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # pyarrow's RE2 kernels: pandas' str.extract falls back to a Python loop (6 s per million rows).
    arr = pa.array(series.astype("string[pyarrow]").array)
    compact = pc.replace_substring_regex(pc.utf8_upper(arr), r"\s+", "")
    valid = pc.match_substring_regex(compact, _POSTCODE_PATTERN)
    spaced = pc.replace_substring_regex(compact, _POSTCODE_PATTERN, r"\1 \2")
    out = pc.if_else(pc.fill_null(valid, False), spaced, pa.scalar(None, pa.string()))
    return pd.Series(pd.array(out, dtype="string"), index=series.index, name=series.name)


def postcode_positions(postcodes: pd.Series, reference_postcodes: pd.Series) -> np.ndarray:
    """For each postcode, the position of its first row in ``reference_postcodes``, or -1 (arrow hashing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.index_in(pa.array(postcodes.astype("string[pyarrow]").array),
                        value_set=pa.array(reference_postcodes.astype("string[pyarrow]").array))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def inside_gb(easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
    """True where a National Grid point lies in Great Britain's grid extent (NaN is outside)."""
    e = np.asarray(easting, dtype=float)
    n = np.asarray(northing, dtype=float)
    with np.errstate(invalid="ignore"):
        return (e > GB_EASTING[0]) & (e < GB_EASTING[1]) & (n > GB_NORTHING[0]) & (n < GB_NORTHING[1])


# --- reference frames -------------------------------------------------------------------------------

def empty_reference() -> pd.DataFrame:
    """A reference frame with no rows and the right dtypes."""
    return _typed(pd.DataFrame({c: [] for c in REFERENCE_COLUMNS}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a reference frame to its contract dtypes, in contract column order."""
    out = pd.DataFrame({
        "postcode": frame["postcode"].astype("string"),
        "easting": pd.to_numeric(frame["easting"]).astype("int64"),
        "northing": pd.to_numeric(frame["northing"]).astype("int64"),
        "households": pd.to_numeric(frame["households"]).fillna(0).astype("int64"),
        "ward_code": frame["ward_code"].astype("string"),
        "district_code": frame["district_code"].astype("string"),
        "terminated": frame["terminated"].astype(bool),
        "source": frame["source"].astype("string"),
        "terminated_date": frame["terminated_date"].astype("string"),
    })
    out.attrs.update(frame.attrs)
    return out.reset_index(drop=True)


def _blank_to_na(s: pd.Series) -> pd.Series:
    s = s.astype("string").str.strip()
    return s.mask(s == "")


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


#: Households in a residential postcode, 4 to 60: weights per 100,000 of a lognormal with median 16 and
#: sigma 0.55, rounded to whole households and clipped (tails folded into 4 and 60). Written out as integers
#: so that no machine's floating point decides a count; they sum to 100,000.
_HOUSEHOLD_WEIGHTS: Final = (
    1054, 1555, 2464, 3343, 4090, 4655, 5027, 5222, 5267, 5192, 5028, 4801, 4532, 4241, 3938, 3636, 3341, 3057,
    2789, 2538, 2304, 2088, 1890, 1709, 1544, 1395, 1259, 1136, 1025, 925, 834, 753, 680, 614, 554, 501, 453,
    410, 371, 335, 304, 275, 250, 227, 206, 187, 170, 154, 140, 128, 116, 106, 97, 88, 81, 74, 847)
_HOUSEHOLDS_MIN: Final = 4
#: Households of a small (non-residential) postcode: 0, 1, 2 or 3, weighted 45:20:20:15.
_SMALL_WEIGHTS: Final = (45, 20, 20, 15)


def _integer_choice(weights: Iterable[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """Indexes drawn with replacement in proportion to integer weights, in integer arithmetic only.

    ``Generator.choice(p=...)`` compares random doubles with a float cumulative sum; integers give the same
    draws on every CPU and platform.
    """
    cumulative = np.cumsum(np.asarray(list(weights), dtype=np.int64))
    return np.searchsorted(cumulative, rng.integers(0, int(cumulative[-1]), size), side="right")


def _household_counts(weights: np.ndarray, rng: np.random.Generator,
                      small_share: float = 0.11) -> tuple[np.ndarray, np.ndarray]:
    """Households and residents per postcode; the postcodes with 0-3 households cluster where ``weights`` are high.

    ``weights`` are positive integers (higher = more central: shops, offices, communal establishments). Each
    postcode gets 0-3 households with probability ``small_share * n * weight / sum(weights)`` (so about
    ``small_share`` of them do); the rest get 4 to 60, skewed towards 10-25 like real residential postcodes.

    Every decision is made on integers (``rng.integers``, integer products and comparisons): the shipped
    synthetic file must come out byte for byte the same on every CPU, and NumPy's float functions (``**``,
    ``log``, ``exp``) and its SIMD partition/sort code differ in the last bit or in order between CPUs.
    """
    weights = np.asarray(weights, dtype=np.int64)
    n = len(weights)
    if n and weights.min() < 1:
        raise ValueError("household weights must be positive integers")
    households = _HOUSEHOLDS_MIN + _integer_choice(_HOUSEHOLD_WEIGHTS, n, rng).astype(np.int64)
    n_small = int(round(small_share * n))
    if n_small:
        total = int(weights.sum())
        # P(small) = n_small * w / total, decided exactly: draw an integer in [0, total) per postcode.
        small = rng.integers(0, total, n) < n_small * weights
        households[small] = _integer_choice(_SMALL_WEIGHTS, int(small.sum()), rng)
    # 1.70 to 2.90 residents per household, rounded half up in integer arithmetic.
    residents = (households * rng.integers(170, 291, n) + 50) // 100
    zero = households == 0
    # Half the zero-household postcodes house people in communal establishments; the rest have nobody.
    communal = zero & (rng.integers(0, 2, n) == 1)
    residents[zero] = 0
    residents[communal] = rng.integers(3, 80, int(communal.sum()))
    return households, residents


def synthetic_households(reference: pd.DataFrame, seed: int = SHIPPED_HOUSEHOLDS_SEED,
                         two_space_share: float = 0.02) -> pd.DataFrame:
    """SYNTHETIC household estimates in the ONS 2011 layout (``Postcode, Total, Males, Females,
    Occupied_Households``) for the live postcodes of a reference; deterministic for a seed, on every CPU.

    Like the real file: postcodes with no residents are absent, communal establishments have residents
    and 0 households, and a few postcodes are written with two spaces. Non-residential postcodes
    cluster in town centres (the densest parts of the reference). Integer arithmetic throughout (see
    :func:`_household_counts`), so the shipped file can be regenerated exactly anywhere.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    live = reference[~reference["terminated"].to_numpy(bool)].sort_values("postcode").reset_index(drop=True)
    if len(live) == 0:
        return pd.DataFrame(columns=["Postcode", "Total", "Males", "Females", "Occupied_Households"])
    # Town centres are where postcodes are densest: count neighbours within 200 m. Reference coordinates are
    # whole metres, so every distance test is exact and every machine counts the same neighbours.
    xy = live[["easting", "northing"]].to_numpy(float)
    density = cKDTree(xy).query_ball_point(xy, r=200.0, return_length=True).astype(np.int64)
    # Weight 0.03 + (density / densest)^2, times 100 * densest^2 to stay an integer.
    densest = max(int(density.max()), 1)
    weights = 3 * densest * densest + 100 * density * density
    households, residents = _household_counts(weights, rng)
    n = len(live)
    # 45% to 55% of residents are male, rounded half up in integer arithmetic.
    males = (residents * rng.integers(45, 56, n) + 50) // 100
    postcode = live["postcode"].astype(str).to_numpy().copy()
    twin = rng.integers(0, 1_000_000, n) < int(round(two_space_share * 1_000_000))
    postcode[twin] = [p.replace(" ", "  ") for p in postcode[twin]]
    frame = pd.DataFrame({"Postcode": postcode, "Total": residents, "Males": males, "Females": residents - males,
                          "Occupied_Households": households})
    return frame[frame["Total"] > 0].reset_index(drop=True)


def synthetic_households_csv(reference: pd.DataFrame, seed: int = SHIPPED_HOUSEHOLDS_SEED) -> str:
    """:func:`synthetic_households` as CSV text, byte for byte as shipped in ``SHIPPED_HOUSEHOLDS``.

    Regenerate the shipped file with
    ``SHIPPED_HOUSEHOLDS.write_text(synthetic_households_csv(read_codepoint_open(SHIPPED_CODEPOINT)))``.
    """
    return synthetic_households(reference, seed).to_csv(index=False, lineterminator="\n")


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


# --- a Great-Britain-sized synthetic reference --------------------------------------------------------

_UNIT_LETTERS: Final = "ABDEFGHJLNPQRSTUWXYZ"  # letters Royal Mail uses in inward codes


def _take(table: list[str], index: np.ndarray) -> Any:
    """A pyarrow string array of ``table[index]``: fast for millions of rows from a small table."""
    import pyarrow as pa

    return pa.array(table, pa.string()).take(pa.array(index))


def _synthetic_postcodes(index: np.ndarray) -> pd.Series:
    """Distinct, well-formed (but invented) postcodes for integer indexes; neighbours share a sector."""
    import pyarrow.compute as pc

    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    areas = [a + b for a in letters for b in letters]
    units = [a + b for a in _UNIT_LETTERS for b in _UNIT_LETTERS]
    area = _take(areas, (index // (4000 * 99)) % len(areas))
    district = _take([str(d) for d in range(1, 100)], (index // 4000) % 99)
    sector = _take([str(d) for d in range(10)], (index // 400) % 10)
    unit = _take(units, index % 400)
    joined = pc.binary_join_element_wise(area, district, " ", sector, unit, "")
    return pd.Series(pd.array(joined, dtype="string"))


def _z_order(e: np.ndarray, n: np.ndarray, cell: float = 50.0) -> np.ndarray:
    """Morton (Z-order) keys on a grid: sorting by them keeps nearby points together."""
    x = (e / cell).astype(np.uint64)
    y = (n / cell).astype(np.uint64)

    def spread(v: np.ndarray) -> np.ndarray:
        v = v & np.uint64(0xFFFFFFFF)
        for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                            (2, 0x3333333333333333), (1, 0x5555555555555555)):
            v = (v | (v << np.uint64(shift))) & np.uint64(mask)
        return v

    return spread(x) | (spread(y) << np.uint64(1))


def _chunk_ids(n: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Group ids for n consecutive items in runs of ``low..high`` items."""
    sizes = rng.integers(low, high + 1, n // low + 2)
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def national_synthetic_reference(n_live: int = 1_700_000, n_terminated: int = 100_000,
                                 seed: int = 0) -> pd.DataFrame:
    """A SYNTHETIC Great-Britain-sized reference frame for benchmarks (invented postcodes, real structure).

    Postcodes cluster in towns (10-20 m apart in centres, hundreds of metres on the edges), wards hold
    100-300 postcodes, districts about 40 wards, households as :func:`synthetic_households`; terminated
    postcodes lie among the live ones with 0 households. Vectorised: a few seconds for 1.8M rows.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    # Town sizes follow a heavy-tailed (Pareto) law, like real settlements.
    sizes = np.maximum(20, rng.pareto(1.1, max(n_live // 400, 1)) * 120).astype(np.int64)
    sizes = np.maximum(1, np.round(sizes * n_live / sizes.sum())).astype(np.int64)
    sizes[-1] += n_live - sizes.sum()
    while sizes[-1] < 1:  # rounding can overshoot; take the excess from the largest town
        sizes[np.argmax(sizes)] += sizes[-1] - 1
        sizes[-1] = 1
    town = np.repeat(np.arange(len(sizes)), sizes)
    centre_e = rng.uniform(150_000, 650_000, len(sizes))
    centre_n = rng.uniform(20_000, 1_100_000, len(sizes))
    # A town of N postcodes spreads over sigma ~ 14 m * sqrt(N): dense cores, sparse fringes.
    sigma = 14.0 * np.sqrt(sizes)
    radius = np.abs(rng.standard_t(4, n_live)) * sigma[town]
    angle = rng.uniform(0, 2 * np.pi, n_live)
    e = np.clip(centre_e[town] + radius * np.cos(angle), 1000, 699_000)
    n = np.clip(centre_n[town] + radius * np.sin(angle), 1000, 1_249_000)
    order = np.argsort(_z_order(e, n), kind="stable")
    e, n, town, radius = e[order], n[order], town[order], radius[order]
    centrality = np.exp(-radius / (0.6 * sigma[town]))
    # Weights 0.05 + centrality^2 as integers per million. This reference is made for benchmarks and compared
    # only with itself on one machine; the shipped Calderdale file does not depend on float maths at all.
    weights = 50_000 + np.round(1_000_000 * centrality * centrality).astype(np.int64)
    households, _ = _household_counts(weights, rng)
    ward = _chunk_ids(n_live, 100, 300, rng)
    district = _chunk_ids(int(ward.max()) + 1, 30, 50, rng)[ward]

    # Terminated postcodes: old codes near live ones, no households, terminated 1980-2024.
    pick = rng.integers(0, n_live, n_terminated)
    t_e = np.clip(e[pick] + rng.normal(0, 40, n_terminated), 1000, 699_000)
    t_n = np.clip(n[pick] + rng.normal(0, 40, n_terminated), 1000, 1_249_000)
    months = [f"{y}-{m:02d}" for y in range(1980, 2025) for m in range(1, 13)]
    t_date = _take(months, rng.integers(0, len(months), n_terminated))

    total = n_live + n_terminated
    ward_all = np.concatenate([ward, ward[pick]])
    district_all = np.concatenate([district, district[pick]])
    frame = pd.DataFrame({
        "postcode": _synthetic_postcodes(np.arange(total)),
        "easting": np.round(np.concatenate([e, t_e])).astype(np.int64),
        "northing": np.round(np.concatenate([n, t_n])).astype(np.int64),
        "households": np.concatenate([households, np.zeros(n_terminated, np.int64)]),
        "ward_code": pd.array(_take([f"X05{i:06d}" for i in range(ward_all.max() + 1)], ward_all), dtype="string"),
        "district_code": pd.array(_take([f"X08{i:06d}" for i in range(district_all.max() + 1)], district_all),
                                  dtype="string"),
        "terminated": np.concatenate([np.zeros(n_live, bool), np.ones(n_terminated, bool)]),
        "source": "SYNTHETIC national",
        "terminated_date": pd.array(pa.concat_arrays([pa.nulls(n_live, pa.string()), t_date]), dtype="string"),
    })
    return _typed(frame)


# --- PostGIS -----------------------------------------------------------------------------------------

_TABLE_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS reference;
CREATE TABLE IF NOT EXISTS reference.postcodes (
    postcode text PRIMARY KEY,
    easting integer NOT NULL,
    northing integer NOT NULL,
    households integer NOT NULL DEFAULT 0,
    ward_code text,
    district_code text,
    terminated boolean NOT NULL DEFAULT false,
    source text,
    terminated_date text,
    geom geometry(Point, 27700) NOT NULL
);
"""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS postcodes_geom_gist ON reference.postcodes USING gist (geom)",
    "CREATE INDEX IF NOT EXISTS postcodes_households_idx ON reference.postcodes (households)",
)
_COLUMNS_SQL: Final = ", ".join(REFERENCE_COLUMNS)


def grant_read(cur: Any, table: str, roles: Iterable[str] = ("csp_analyst", "csp_engineer")) -> None:
    """GRANT SELECT on a reference table to those of the roles that exist."""
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),))
    for (role,) in cur.fetchall():
        cur.execute(f'GRANT USAGE ON SCHEMA reference TO "{role}"')
        cur.execute(f'GRANT SELECT ON {table} TO "{role}"')


def frame_to_csv(frame: pd.DataFrame) -> io.BytesIO:
    """A frame as header-less CSV for COPY (pyarrow: about 8x faster than ``DataFrame.to_csv``); nulls empty."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buf,
                    pacsv.WriteOptions(include_header=False))
    buf.seek(0)
    return buf


def copy_out(cur: Any, select_sql: str, names: list[str], types: dict[str, str] | None = None) -> pd.DataFrame:
    """Run ``COPY (select) TO STDOUT`` and parse it with pyarrow; ``types`` maps columns to ``int64``,
    ``float64`` or ``bool`` (others are text); empty fields are null."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow_types = {c: {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}.get(
        (types or {}).get(c, ""), pa.string()) for c in names}
    buf = io.BytesIO()
    cur.copy_expert(f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv)", buf)
    buf.seek(0)
    if not buf.getbuffer().nbytes:
        return pa.table({c: pa.array([], arrow_types[c]) for c in names}).to_pandas(
            types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
    table = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=names),
                           convert_options=pacsv.ConvertOptions(column_types=arrow_types, strings_can_be_null=True,
                                                                true_values=["t"], false_values=["f"]))
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)


def load_reference(conn: Any, frame: pd.DataFrame, replace: bool = True, commit: bool = True) -> int:
    """Load a reference frame into ``reference.postcodes`` in one transaction; returns the rows loaded.

    COPY into a temporary staging table, then one INSERT ... SELECT that builds the points (no UPDATE of
    the whole table, so no bloat). ``replace`` empties the table first and rebuilds its indexes once after
    the insert; otherwise rows are upserted by postcode.
    """
    frame = _typed(frame.drop_duplicates("postcode", keep="first"))
    buf = frame_to_csv(frame[REFERENCE_COLUMNS])
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            cur.execute(_TABLE_DDL)
            # A temporary table is never WAL-logged (like UNLOGGED) and is private to this session, so two
            # loaders cannot collide on its name; ON COMMIT DROP cleans it up.
            cur.execute("""CREATE TEMP TABLE postcodes_staging (
                postcode text, easting integer, northing integer, households integer, ward_code text,
                district_code text, terminated boolean, source text, terminated_date text) ON COMMIT DROP""")
            cur.copy_expert(f"COPY postcodes_staging ({_COLUMNS_SQL}) FROM STDIN WITH (FORMAT csv)", buf)
            select = (f"SELECT {_COLUMNS_SQL}, ST_SetSRID(ST_MakePoint(easting, northing), 27700) "
                      "FROM postcodes_staging")
            if replace:
                cur.execute("TRUNCATE reference.postcodes")
                # Building the indexes once after the insert is much faster than maintaining them row by row.
                cur.execute("ALTER TABLE reference.postcodes DROP CONSTRAINT IF EXISTS postcodes_pkey")
                cur.execute("DROP INDEX IF EXISTS reference.postcodes_geom_gist")
                cur.execute("DROP INDEX IF EXISTS reference.postcodes_households_idx")
                cur.execute(f"INSERT INTO reference.postcodes ({_COLUMNS_SQL}, geom) {select}")
                cur.execute("ALTER TABLE reference.postcodes ADD CONSTRAINT postcodes_pkey PRIMARY KEY (postcode)")
            else:
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*REFERENCE_COLUMNS[1:], "geom"])
                cur.execute(f"INSERT INTO reference.postcodes ({_COLUMNS_SQL}, geom) {select} "
                            f"ON CONFLICT (postcode) DO UPDATE SET {updates}")
            for sql in _INDEXES:
                cur.execute(sql)
            grant_read(cur, "reference.postcodes")
            cur.execute("ANALYZE reference.postcodes")
        if commit:
            conn.commit()
    except Exception:
        conn.rollback()
        raise
    return len(frame)


def read_reference(conn: Any) -> pd.DataFrame:
    """The reference frame from ``reference.postcodes`` (COPY TO STDOUT); empty if the table does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('reference.postcodes') IS NOT NULL")
        if not cur.fetchone()[0]:
            return empty_reference()
        raw = copy_out(cur, f"SELECT {_COLUMNS_SQL} FROM reference.postcodes", REFERENCE_COLUMNS,
                       {"easting": "int64", "northing": "int64", "households": "int64", "terminated": "bool"})
    return _typed(raw)


def pack_postcodes(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each value as one integer (its bytes, zero-padded to 8, big-endian) and whether it could be packed.

    A value packs when it is present, ASCII, at most 8 bytes and holds no NUL: every postcode in normal form
    does. Two packed values are equal exactly when the strings are.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else \
        pa.array(pd.Series(values).astype("string[pyarrow]").array)
    arr = arr.cast(pa.large_string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    lengths = pc.binary_length(arr).fill_null(99).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = ((lengths <= 8) & pc.fill_null(pc.string_is_ascii(arr), False).to_numpy(zero_copy_only=False)
          & ~pc.fill_null(pc.match_substring(arr, "\x00"), True).to_numpy(zero_copy_only=False))
    if not n:
        return np.zeros(0, dtype=np.uint64), ok
    # every value that packs, NUL-padded to exactly 8 bytes (the others as 8 NULs): one contiguous buffer
    padded = pc.ascii_rpad(pc.if_else(pa.array(ok), arr, pa.scalar("", pa.large_string())), width=8,
                           padding="\x00")
    _, offsets_buf, data_buf = padded.buffers()
    first = int(np.frombuffer(offsets_buf, dtype=np.int64)[padded.offset])
    packed = np.frombuffer(data_buf, dtype=">u8", count=n, offset=first)
    return packed.astype(np.uint64), ok


class PostcodeLookup:
    """Row numbers of postcodes in a fixed list, by integer codes (``pack_postcodes``) in a hash index.

    Built once per list (a reference, a displacement map) and kept: each lookup then costs a probe per value,
    not a hash table of the whole list of strings. Same answer as ``pyarrow.compute.index_in`` (the first row holding the
    value, -1 where none does); a list with a value that does not pack is looked up with ``index_in``.
    """

    def __init__(self, postcodes: Any) -> None:
        import pyarrow as pa

        arr = postcodes if isinstance(postcodes, (pa.Array, pa.ChunkedArray)) else \
            pa.array(pd.Series(postcodes).astype("string[pyarrow]").array)
        self._values = arr
        codes, ok = pack_postcodes(arr)
        self._exact = bool(ok.all())
        order = np.argsort(codes, kind="stable")       # stable: the first of equal values comes first
        keys = codes[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        # a hash index of the distinct codes (pandas builds its table once, on the first lookup, and keeps it)
        self._index = pd.Index(keys[first])
        self._rows = order[first].astype(np.int64)
        self._index.get_indexer(self._index[:1])       # builds the hash table now, not on the first lookup

    def positions(self, query: Any) -> np.ndarray:
        """Row of each queried value in the list (the first, if repeated), -1 where absent."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self._exact:
            q = query if isinstance(query, (pa.Array, pa.ChunkedArray)) else \
                pa.array(pd.Series(query).astype("string[pyarrow]").array)
            return pc.fill_null(pc.index_in(q, value_set=self._values), -1).to_numpy(
                zero_copy_only=False).astype(np.int64)
        codes, ok = pack_postcodes(query)
        at = self._index.get_indexer(codes)
        hit = ok & (at >= 0)
        return np.where(hit, self._rows[np.where(hit, at, 0)] if len(self._rows) else -1, -1)
