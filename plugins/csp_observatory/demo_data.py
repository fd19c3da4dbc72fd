"""A made-up month of police recorded crime on real postcodes, for the demo, the end-to-end tests and benchmarks.

The people, addresses and offences are invented; the postcodes and their centroids are real (the caller
passes an OS Code-Point Open extract). A handful of rows are made bad on purpose, and listed in
``DemoSupply.bad_rows``, so the demo shows quarantine and cleaning at work.

Every column is drawn at once with NumPy (one draw per column, never per row) and written as CSV text by Arrow's
string kernels, so that a million offences with their offenders and victims take seconds (issue 9). Draws are
integers only (probabilities in whole percent, weights in tenths), so a seed gives the same text on every CPU:
nothing depends on the last bits of a float. The one float step, WGS84 coordinates, is rounded to 6 decimals.
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from csp_observatory.schema import REFERENCE_DIR, SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schema

DEFAULT_SEED: Final = 20260901
TOWNS: Final = {"HX1": "Halifax", "HX2": "Halifax", "HX3": "Halifax", "HX4": "Halifax", "HX5": "Elland",
                "HX6": "Sowerby Bridge", "HX7": "Hebden Bridge"}
# Real street names in Calderdale; the house numbers and flats on them are made up.
STREETS: Final = (
    "King Cross Road", "Skircoat Road", "Gibbet Street", "Hopwood Lane", "Queens Road", "Commercial Street",
    "Northgate", "Southgate", "Horton Street", "Pellon Lane", "Ovenden Road", "Haugh Shaw Road", "Moorside",
    "Bradshaw Lane", "Sowerby New Road", "Burnley Road", "Wakefield Road", "Huddersfield Road", "Rochdale Road",
    "Halifax Road", "Elland Road", "Savile Park Road", "Warley Road", "Godley Lane", "Keighley Road",
    "Market Street", "Westgate", "Crossley Street", "Lee Mount Road", "Shay Syke",
)
HOUSE_NAMES: Final = ("Rose Cottage", "The Laurels", "Moorview", "Hill Top House", "Beech House", "The Old Barn")
NON_ADDRESSABLE: Final = (
    "Car park, Bankfield Museum", "Footpath by the Rochdale Canal", "Bus station, Cripplegate",
    "People's Park", "Shroggs Park", "Car park, Piece Hall", "Calder Holmes Park", "Towpath, Salterhebble locks",
)
FIRST_NAMES: Final = ("Oliver", "Amelia", "Harry", "Isla", "Jack", "Ava", "Mohammed", "Emily", "Charlie", "Sophia",
                      "George", "Grace", "Leo", "Aisha", "Noah", "Freya", "Zain", "Ruby", "Jacob", "Maryam")
LAST_NAMES: Final = ("Smith", "Jones", "Taylor", "Brown", "Hussain", "Wilson", "Khan", "Walker", "Wright", "Ali",
                     "Robinson", "Thompson", "Sutcliffe", "Greenwood", "Crossley", "Ahmed", "Hirst", "Barker")
OCCUPATIONS: Final = ("unemployed", "student", "retail assistant", "driver", "nurse", "labourer", "teacher",
                      "retired", "self-employed", "unknown")
ASSOCIATIONS: Final = ("stranger", "stranger", "stranger", "acquaintance", "partner", "ex-partner", "family",
                       "friend", "none", "unknown")
ETHNICITY: Final = ("IC1", "IC1", "IC1", "IC1", "IC4", "IC4", "IC3", "IC2", "IC6", "IC5", "IC9", "IC0")
# Common offence categories are much more frequent than rare ones (weights in tenths: 0.3 for the rest).
CATEGORY_WEIGHT: Final = {"Violence and sexual offences": 8, "Criminal Damage and Arson": 4, "Burglary": 4,
                          "Vehicle Crime": 3, "Shoplifting": 3, "Other Theft": 3, "Public Order": 3,
                          "Drugs": 2, "Theft from the Person": 1, "Bicycle Theft": 1, "Robbery": 1}
OTHER_CATEGORY_TENTHS: Final = 3
ENTRY: Final = ("Rear door forced", "Front door forced", "Window smashed", "Insecure door", "Lock snapped",
                "Distraction: caller claimed to be from the water board")
PROPERTY: Final = ("Mobile phone", "Cash", "Laptop", "Bicycle", "Jewellery", "Power tools", "Handbag",
                   "Vehicle keys", "Catalytic converter", "Groceries")
WEAPONS: Final = ("Knife", "Bottle", "Blunt instrument", "Hands/feet")
THEFTS: Final = ("Burglary", "Other Theft", "Shoplifting", "Theft from the Person", "Bicycle Theft", "Robbery",
                 "Vehicle Crime")
#: How many offenders (victims) an offence has: one of these, equally likely.
OFFENDER_COUNTS: Final = (0, 0, 1, 1, 1, 2)
VICTIM_COUNTS: Final = (1, 1, 1, 1, 2)

Columns = dict[str, pa.Array]


@dataclass
class DemoSupply:
    """The CSV text of each file of one supply, and which rows were made bad on purpose (and why)."""

    period: str
    files: dict[str, str]
    bad_rows: list[dict[str, Any]] = field(default_factory=list)


def _codes() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DIR / "ho_offence_codes.csv", dtype=str, keep_default_na=False)


# --- vector helpers -------------------------------------------------------------------------------------------

def _pick(values: Sequence[str], index: np.ndarray) -> pa.Array:
    """values[index] for every index, as an Arrow string array."""
    return pa.array(list(values), pa.string()).take(pa.array(index, pa.int64()))


def _text(numbers: np.ndarray) -> pa.Array:
    return pa.array(numbers, pa.int64()).cast(pa.string())


def _cat(*parts: pa.Array | str) -> pa.Array:
    """Concatenate string arrays (and literal strings) row by row."""
    return pc.binary_join_element_wise(*parts, "")


def _only(mask: np.ndarray, values: pa.Array | np.ndarray) -> pa.Array:
    """values where mask, else null (an empty CSV field)."""
    values = pa.array(values) if isinstance(values, np.ndarray) else values
    return pc.if_else(pa.array(mask, pa.bool_()), values, pa.nulls(len(values), values.type))


def _percent(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """True with probability p% for each of n rows (an integer draw: no float comparison)."""
    return rng.integers(0, 100, n) < p


def _iso(days: np.ndarray) -> pa.Array:
    """Days since 1970-01-01 as YYYY-MM-DD."""
    return pa.array(days.astype("datetime64[D]")).cast(pa.string())


#: Every town a made-up address can be in; a postcode's town is its outward code's (Halifax if unlisted).
TOWN_NAMES: Final = tuple(sorted(set(TOWNS.values()) | {"Halifax"}))
#: The start of a made-up address: a flat and house number, a house name, or a house number (with a letter).
_PREFIXES: Final = ([f"Flat {k}, {m} " for k in range(1, 13) for m in range(1, 181)]
                    + [f"{h}, " for h in HOUSE_NAMES]
                    + [f"{m}{a} " for m in range(1, 251) for a in ("", "A")])


def _address(rng: np.random.Generator, town: np.ndarray) -> pa.Array:
    """A made-up address in each row's town (an index into TOWN_NAMES): a flat (20%), a named house (10%) or a
    numbered house. Built from two lookups (its start; its street and town), so no row is formatted alone."""
    n = len(town)
    roll = rng.integers(0, 100, n)
    flat = (rng.integers(1, 13, n) - 1) * 180 + rng.integers(1, 181, n) - 1
    named = 12 * 180 + rng.integers(0, len(HOUSE_NAMES), n)
    # One house in five has a letter (12A).
    house = 12 * 180 + len(HOUSE_NAMES) + (rng.integers(1, 251, n) - 1) * 2 + (rng.integers(0, 5, n) == 4)
    prefix = np.where(roll < 20, flat, np.where(roll < 30, named, house))
    streets = [f"{street}, {t}" for street in STREETS for t in TOWN_NAMES]
    street = rng.integers(0, len(STREETS), n) * len(TOWN_NAMES) + town
    return _cat(_pick(_PREFIXES, prefix), _pick(streets, street))


def _ages(born: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Whole years from each birth date to each event date (datetime64[D])."""
    by, oy = born.astype("datetime64[Y]"), on.astype("datetime64[Y]")
    # Compare (month, day), not the day of the year, which a leap year shifts.
    bm = (born.astype("datetime64[M]") - by.astype("datetime64[M]")).astype(np.int64)
    om = (on.astype("datetime64[M]") - oy.astype("datetime64[M]")).astype(np.int64)
    bd = (born - born.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    od = (on - on.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    years = oy.astype(np.int64) - by.astype(np.int64)
    return years - ((om * 100 + od) < (bm * 100 + bd))


def _people(rng: np.random.Generator, offence_rows: np.ndarray, on: np.ndarray, refs: pa.Array, prefix: str,
            pcs: dict[str, Any]) -> Columns:
    """The offenders (or victims) of the offences at ``offence_rows`` (each repeated once per person)."""
    n = len(offence_rows)
    first = np.r_[0, np.flatnonzero(np.diff(offence_rows)) + 1] if n else np.zeros(0, np.int64)
    rank = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    when = on[offence_rows]
    # About normal around 32 (sd 14) from four integer draws; clipped to 10..95 as before.
    age = np.clip(32 + rng.integers(-12, 13, (4, n)).sum(axis=0), 10, 95)
    born = when - (age * 365 + rng.integers(0, 365, n)).astype("timedelta64[D]")
    iso = _iso(born.astype(np.int64))
    # Most systems export ISO dates; some forces' exports use the UK day-first form.
    uk = _cat(pc.utf8_slice_codeunits(iso, 8, 10), "/", pc.utf8_slice_codeunits(iso, 5, 7), "/",
              pc.utf8_slice_codeunits(iso, 0, 4))
    pc_index = rng.integers(0, len(pcs["postcode"]), n)
    mixed = _percent(rng, n, 50)
    gender = pc.if_else(pa.array(mixed), _pick("MMMMFFFXU", rng.integers(0, 9, n)),
                        _pick("MF", rng.integers(0, 2, n)))
    located = _percent(rng, n, 60)
    columns: Columns = {
        "crime_reference": refs.take(pa.array(offence_rows, pa.int64())),
        f"{prefix}_reference": _cat(prefix[0].upper(), _text(rank + 1)),
        f"{prefix}_name": _cat(_pick(FIRST_NAMES, rng.integers(0, len(FIRST_NAMES), n)), " ",
                               _pick(LAST_NAMES, rng.integers(0, len(LAST_NAMES), n))),
        "gender": gender,
        "date_of_birth": pc.if_else(pa.array(_percent(rng, n, 70)), iso, uk),
        "age": _only(_percent(rng, n, 90), _ages(born, when)),
        "ethnicity": _pick(ETHNICITY, rng.integers(0, len(ETHNICITY), n)),
        "occupation": _pick(OCCUPATIONS, rng.integers(0, len(OCCUPATIONS), n)),
        "home_address": _address(rng, pcs["town"][pc_index]),
        "home_postcode": pcs["postcode"].take(pa.array(pc_index)),
        "home_easting": _only(located, pcs["easting"][pc_index] + rng.integers(-20, 21, n)),
        "home_northing": _only(located, pcs["northing"][pc_index] + rng.integers(-20, 21, n)),
    }
    if prefix == "victim":
        columns["association_with_offender"] = _pick(ASSOCIATIONS, rng.integers(0, len(ASSOCIATIONS), n))
    return columns


def _csv(header: list[str], columns: Columns, n: int) -> str:
    """CSV text of the columns in header order (a missing column is empty).

    Written as many systems export: text quoted, numbers and empty fields bare (Python's QUOTE_NONNUMERIC).
    """
    table = pa.table({name: columns.get(name, pa.nulls(n, pa.string())) for name in header})
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return ",".join(header) + "\n" + out.getvalue().decode("utf-8")


def _seed(seed: int, period: str) -> int:
    """One integer seed per (seed, period), the same on every machine and Python (no salted str hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{period}".encode()).digest()[:16], "big")


def _reference(postcodes: pd.DataFrame) -> dict[str, Any]:
    pcs = postcodes[["postcode", "easting", "northing"]].dropna().sort_values("postcode").reset_index(drop=True)
    towns = pcs["postcode"].astype(str).str.split(" ").str[0].map(TOWNS).fillna("Halifax").map(TOWN_NAMES.index)
    return {"postcode": pa.array(pcs["postcode"].astype(str).tolist(), pa.string()),
            "town": towns.to_numpy().astype(np.int64),
            "easting": pcs["easting"].to_numpy().astype(np.int64),
            "northing": pcs["northing"].to_numpy().astype(np.int64)}


def _clock(hours: np.ndarray, minutes: np.ndarray, colon: np.ndarray | None = None) -> pa.Array:
    hh = _pick([f"{h:02d}" for h in range(24)], hours)
    mm = _pick([f"{m:02d}" for m in range(60)], minutes)
    sep = _pick((":", ""), (~colon).astype(np.int64)) if colon is not None else ":"
    return _cat(hh, sep, mm)


def _offences(rng: np.random.Generator, period: str, n: int, pcs: dict[str, Any],
              first: int = 1) -> tuple[Columns, np.ndarray]:
    """The offences' columns, and each offence's date (datetime64[D]) for its people; the crime references are
    numbered from ``first``."""
    from pyproj import Transformer

    codes = _codes()
    tenths = np.array([CATEGORY_WEIGHT[c] * 10 if c in CATEGORY_WEIGHT else OTHER_CATEGORY_TENTHS
                       for c in codes["police_uk_category"]], np.int64)
    code = np.searchsorted(np.cumsum(tenths), rng.integers(0, tenths.sum(), n), side="right")
    category = codes["police_uk_category"].to_numpy()[code]
    start = date(int(period[:4]), int(period[4:]), 1)
    days = ((start.replace(day=28) + timedelta(days=4)).replace(day=1) - start).days
    day = rng.integers(0, days, n)
    on = np.datetime64(start, "D") + day
    # Evenings are busier: half the offences fall between 17:00 and 23:59.
    hour = np.where(_percent(rng, n, 50), rng.integers(0, 24, n), rng.integers(17, 24, n))
    quarter = rng.integers(0, 5, n)
    minute = np.where(quarter < 4, quarter * 15, rng.integers(0, 60, n))
    has_to = _percent(rng, n, 50)
    later = np.minimum(day + rng.integers(0, 3, n), days - 1)
    burglary = category == "Burglary"
    entry = rng.integers(0, len(ENTRY), n)
    violent = np.isin(category, ("Violence and sexual offences", "Robbery")) & _percent(rng, n, 30)
    yes_no = ("N", "Y")
    cols: Columns = {
        "crime_reference": _cat(f"13{period[2:]}", pc.utf8_lpad(_text(np.arange(first, first + n)), width=5,
                                                                padding="0")),
        "ho_offence_code": _pick(codes["ho_code"].tolist(), code),
        "committed_from_date": _iso(on.astype(np.int64)),
        # Some systems export times without the colon (0930): the parser accepts both.
        "committed_from_time": _clock(hour, minute, _percent(rng, n, 85)),
        "committed_to_date": _only(has_to, _iso((np.datetime64(start, "D") + later).astype(np.int64))),
        "committed_to_time": _only(has_to, _clock(np.minimum(23, hour + rng.integers(0, 4, n)),
                                                  rng.integers(0, 60, n))),
        "flag_drugs": _pick(yes_no, (category == "Drugs").astype(np.int64)),
        "flag_alcohol": _pick(yes_no, _percent(rng, n, 15).astype(np.int64)),
        "flag_racially_motivated": _pick(yes_no, codes["offence"].str.contains("acial").to_numpy()[code]
                                         .astype(np.int64)),
        "flag_domestic": _pick(yes_no, ((category == "Violence and sexual offences") & _percent(rng, n, 30))
                               .astype(np.int64)),
        "method_of_entry": _only(burglary, _pick(ENTRY, entry)),
        "flag_distraction_burglary": _pick(yes_no, (burglary & (entry == len(ENTRY) - 1)).astype(np.int64)),
        "property_stolen": _only(np.isin(category, THEFTS), _pick(PROPERTY, rng.integers(0, len(PROPERTY), n))),
        "weapon_used": _only(violent, _pick(WEAPONS, rng.integers(0, len(WEAPONS), n))),
    }
    at = rng.integers(0, len(pcs["postcode"]), n)
    town = pcs["town"][at]
    # A point a few metres from the postcode centroid, as a force's own geocoder would give.
    e = pcs["easting"][at] + rng.integers(-30, 31, n)
    north = pcs["northing"][at] + rng.integers(-30, 31, n)
    roll = rng.integers(0, 100, n)
    place = roll < 5        # a park, a car park, a towpath: no postcode, and a point
    places = [f"{p}, {t}" for p in NON_ADDRESSABLE for t in TOWN_NAMES]
    cols["location_address"] = pc.if_else(pa.array(place), _pick(
        places, rng.integers(0, len(NON_ADDRESSABLE), n) * len(TOWN_NAMES) + town), _address(rng, town))
    # Partners do not all write postcodes the same way: cleaning puts them in normal form.
    postcode = pcs["postcode"].take(pa.array(at))
    squashed = pc.utf8_lower(pc.replace_substring(postcode, " ", ""))
    cols["location_postcode"] = _only(~place, pc.if_else(pa.array(_percent(rng, n, 90)), postcode, squashed))
    en = place | (roll < 70)
    cols["easting"], cols["northing"] = _only(en, e), _only(en, north)
    ll = np.flatnonzero(~place & (roll >= 70) & (roll < 82))   # else: only the postcode
    lon, lat = Transformer.from_crs("EPSG:27700", "EPSG:4326", always_xy=True).transform(
        e[ll].astype(float), north[ll].astype(float))
    for name, values in (("longitude", lon), ("latitude", lat)):
        full = np.full(n, None, dtype=object)
        full[ll] = [f"{v:.6f}" for v in np.asarray(values).tolist()]
        cols[name] = pa.array(full, pa.string()).cast(pa.decimal128(9, 6))     # written unquoted, 6 places
    return cols, on


def make_police_recorded_crime(period: str, postcodes: pd.DataFrame, n_offences: int = 600,
                               seed: int = DEFAULT_SEED, schema: FeedSchema | None = None,
                               first_offence: int = 1) -> DemoSupply:
    """One month (``period`` = YYYYMM) of offences, offenders and victims as CSV text; deterministic per seed.

    ``first_offence`` numbers the crime references from there, so that a supply too large to make at once can be
    made in parts (each with its own seed) whose files are joined.
    """
    if n_offences < 20:
        raise ValueError("make at least 20 offences: the deliberately bad rows need room")
    schema = schema or load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    rng = np.random.default_rng(_seed(seed, period))
    pcs = _reference(postcodes)
    header = {f.name: f.field_names for f in schema.files}

    def csv_of(name: str, cols: Columns) -> str:
        return _csv(header[name], cols, len(next(iter(cols.values()))))

    # Each file's CSV is written in a thread while the next file's rows are made (Arrow's CSV writer lets go of the
    # GIL): 1M offences in 4.8-6.0 s against 6.7-8.7 s on two cores. The rows are made in this thread alone, in the same
    # order, so the random draws, and so the files, are the same as one after another.
    with ThreadPoolExecutor(max_workers=2) as pool:
        offences, on = _offences(rng, period, n_offences, pcs, first=first_offence)
        refs = offences["crime_reference"]
        offences, bad = _spoil(offences, period, n_offences)
        texts = {"offences": pool.submit(csv_of, "offences", offences)}
        offenders = _people(rng, np.repeat(np.arange(n_offences), np.array(OFFENDER_COUNTS)[
            rng.integers(0, len(OFFENDER_COUNTS), n_offences)]), on, refs, "offender", pcs)
        texts["offenders"] = pool.submit(csv_of, "offenders", offenders)
        victims = _people(rng, np.repeat(np.arange(n_offences), np.array(VICTIM_COUNTS)[
            rng.integers(0, len(VICTIM_COUNTS), n_offences)]), on, refs, "victim", pcs)
        texts["victims"] = pool.submit(csv_of, "victims", victims)
        files = {name: text.result() for name, text in texts.items()}
    return DemoSupply(period=period, files=files, bad_rows=sorted(bad, key=lambda b: b["row"]))


def _set(col: pa.Array, i: int, value: Any) -> pa.Array:
    return pa.concat_arrays([col.slice(0, i), pa.array([value], col.type), col.slice(i + 1)])


def _spoil(cols: Columns, period: str, n: int) -> tuple[Columns, list[dict[str, Any]]]:
    """Make a few offence rows bad on purpose; return the columns and each bad row (1-based), what is wrong and
    what should happen to it."""
    at = [int(n * f) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
    bad: list[dict[str, Any]] = []

    def spoilt(i: int, why: str, expect: str, stage: str) -> None:
        bad.append({"file": "offences", "row": i + 1, "why": why, "expect": expect, "stage": stage})

    cols["committed_from_date"] = _set(cols["committed_from_date"], at[0], f"31/02/{period[:4]}")
    spoilt(at[0], "committed_from_date is 31 February", "rejected", "parse")
    cols["crime_reference"] = _set(cols["crime_reference"], at[1], "")
    spoilt(at[1], "crime reference missing", "rejected", "validate")
    cols["ho_offence_code"] = _set(cols["ho_offence_code"], at[2], "999Z")
    spoilt(at[2], "offence code 999Z is not a Home Office code", "rejected", "validate")

    # The point outside GB is blanked and the row geocoded by its postcode, so pick a row that has one.
    has_postcode = cols["location_postcode"].is_valid().to_numpy(zero_copy_only=False)
    row = at[3] + int(np.flatnonzero(has_postcode[at[3]:at[4]])[0])
    cols["easting"] = _set(cols["easting"], row, 912345)
    cols["northing"] = _set(cols["northing"], row, cols["northing"][row].as_py() or 425000)
    cols["longitude"], cols["latitude"] = _set(cols["longitude"], row, None), _set(cols["latitude"], row, None)
    spoilt(row, "easting 912345 is outside Great Britain", "nulled", "validate")

    cols["location_postcode"] = _set(cols["location_postcode"], at[4], "HX1 1A")
    spoilt(at[4], "postcode HX1 1A is not a full postcode", "nulled", "clean")

    # Duplicates go after their originals (the first row of a key is the one kept); insert the later one first
    # so the earlier insertion point does not move.
    rows = pa.array(np.insert(np.arange(n), [at[5] + 1, at[6] + 1], [at[5], at[6]]))
    cols = {name: col.take(rows) for name, col in cols.items()}
    cols["committed_from_time"] = _set(cols["committed_from_time"], at[6] + 2, "23:59")
    cols["property_stolen"] = _set(cols["property_stolen"], at[6] + 2, "Bicycle")
    spoilt(at[5] + 1, "exact duplicate of the row above", "rejected", "clean")
    spoilt(at[6] + 2, "same crime reference as the row above, different content", "rejected", "clean")
    return cols, bad
