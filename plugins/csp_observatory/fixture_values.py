"""The values of a made-up supply's good rows (``fixtures.py``), from a file's datafields alone.

Values come from each datafield's type, role, code list and pattern; locations are real postcodes and centroids of
the reference with invented house numbers on real street names (:class:`Places`). Every value is drawn from the
``random.Random`` the caller gives, with integer arithmetic for every value compared exactly (no NumPy), so a seed
gives the same rows on every machine; a longitude/latitude is the one exception (pyproj computes it).
"""
from __future__ import annotations

import random
import re
from datetime import date, timedelta
from typing import Any, Final

import pandas as pd

from csp_observatory.demo_data import FIRST_NAMES, LAST_NAMES, OCCUPATIONS, STREETS, TOWNS
from csp_observatory.schema import Datafield, FeedFile, LocationFields

# Street names with a park or a market in them could be read as a non-addressable place: left out, so that every
# fixture address is an addressable one and its point a postcode centroid after sanitising.
_STREETS: Final = tuple(s for s in STREETS if not re.search(r"(?i)\b(park|market|station|bridge)\b", s))
_HOUSE_NAMES: Final = ("Rose Cottage", "The Laurels", "Moorview", "Beech House")
_OFFENCES: Final = ("Theft from a shop", "Assault occasioning actual bodily harm", "Burglary in a dwelling",
                    "Criminal damage to a vehicle", "Possession of a controlled drug", "Public order offence",
                    "Robbery of personal property", "Theft of a pedal cycle", "Common assault",
                    "Harassment", "Possession of an offensive weapon")
_DRUGS: Final = ("Heroin", "Crack cocaine", "Cocaine", "Cannabis", "Alcohol", "Amphetamine", "Benzodiazepines",
                 "Ketamine", "Ecstasy")
#: Words for free-text datafields, by datafield name (exact) or by a word in the name; the first that fits wins.
_WORDS: Final = (
    ("incident_type", ("Rowdy and inconsiderate behaviour", "Domestic incident", "Street drinking",
                       "Vehicle nuisance", "Hoax call", "Neighbour dispute", "Nuisance youths", "Fall",
                       "Breathing problems", "Overdose or poisoning", "Road traffic collision", "Assault")),
    ("reason_for_admission", ("F10.0 Acute alcohol intoxication", "T40.1 Poisoning by heroin",
                              "F11.2 Opioid dependence", "K70.3 Alcoholic cirrhosis of liver",
                              "T40.5 Poisoning by cocaine", "F19.1 Harmful use of several drugs")),
    ("reason_for_search", ("Controlled drugs", "Offensive weapons", "Stolen goods", "Article for use in theft",
                           "Firearms", "Anything to threaten or harm anyone")),
    ("result_of_search", ("Arrest", "Nothing found - no further action", "Community resolution",
                          "Caution (simple or conditional)", "Penalty Notice for Disorder", "Summons")),
    ("assault_method_other", ("struck with a glass bottle", "pushed to the ground", "bitten", "headbutted")),
    ("assault_method", ("Punched", "Kicked", "Glass or bottle", "Knife or sharp object", "Blunt object", "Other")),
    ("site_code", ("RXF01", "RWY02", "RR801")),
    ("school_name", ("Calder High School", "Brighouse High School", "Ryburn Valley High School",
                     "The Halifax Academy", "Trinity Academy Halifax", "The Crossley Heath School",
                     "Todmorden High School", "Rastrick High School")),
    ("site_name", ("Moor End Yard", "Old Quarry Works", "Valley Recycling", "Top Field Yard")),
    ("vehicle_make", ("Ford", "Vauxhall", "Volkswagen", "Renault", "Peugeot", "Toyota", "Nissan")),
    ("vehicle_model", ("Fiesta", "Corsa", "Golf", "Clio", "Yaris", "Micra", "Focus", "Astra")),
    ("route", ("576 Halifax - Bradford", "X6 Halifax - Huddersfield", "Calder Valley line",
               "503 Halifax - Hebden Bridge", "Route 8 Halifax - Mixenden")),
    ("referral", ("Self", "Criminal Justice System", "Drug Interventions Programme", "GP", "Probation",
                  "Arrest referral", "Youth Offending Team", "Social services")),
    ("treatment", ("Structured psychosocial intervention", "Prescribing", "Inpatient detoxification",
                   "Residential rehabilitation", "Structured day programme")),
    ("drug", _DRUGS),
    ("occupation", OCCUPATIONS),
    ("offence", _OFFENCES),
)
_FALLBACK_WORDS: Final = ("Recorded as reported", "Not known", "See the partner's case notes")
#: Role defaults for a whole-number range, before the datafield's own min/max narrow them.
_AGE_RANGE: Final = (14, 85)


def _address(rng: random.Random, postcode: str, home: bool) -> str:
    town = TOWNS.get(postcode.split(" ")[0], "Halifax")
    street = rng.choice(_STREETS)
    roll = rng.random()
    if roll < 0.15:
        return f"Flat {rng.randint(1, 12)}, {rng.randint(1, 180)} {street}, {town}"
    if home and roll < 0.25:
        return f"{rng.choice(_HOUSE_NAMES)}, {street}, {town}"
    if roll < 0.35:
        # Some systems put the postcode in the address text too: sanitising replaces it.
        return f"{rng.randint(1, 250)} {street}, {town} {postcode}"
    return f"{rng.randint(1, 250)}{rng.choice(['', '', '', 'A'])} {street}, {town}"


def _written_postcode(rng: random.Random, postcode: str) -> str:
    # Partners do not all write postcodes the same way: cleaning puts them in normal form.
    return postcode if rng.random() < 0.85 else postcode.replace(" ", "").lower()


class Places:
    """Real postcodes with their centroids, picked at random (integers only: every machine picks the same)."""

    def __init__(self, reference: pd.DataFrame) -> None:
        live = reference[~reference["terminated"].fillna(False).astype(bool)]
        live = live[["postcode", "easting", "northing"]].dropna().drop_duplicates("postcode").sort_values("postcode")
        if live.empty:
            raise ValueError("the reference has no live postcodes")
        self.rows = [(str(p), int(e), int(n)) for p, e, n in live.itertuples(index=False)]
        self._wgs84: Any = None

    def pick(self, rng: random.Random) -> tuple[str, int, int]:
        """A postcode and its centroid's easting and northing."""
        return self.rows[rng.randrange(len(self.rows))]

    def lonlat(self, e: int, n: int) -> tuple[str, str]:
        """A point's longitude and latitude (WGS84) as a partner writes them, to six decimals."""
        if self._wgs84 is None:
            from pyproj import Transformer

            self._wgs84 = Transformer.from_crs("EPSG:27700", "EPSG:4326", always_xy=True)
        lon, lat = self._wgs84.transform(e, n)
        return f"{lon:.6f}", f"{lat:.6f}"


def _location_values(rng: random.Random, places: Places, loc: LocationFields) -> dict[str, str]:
    """Values for one location's datafields: an address on a real postcode, and a point near its centroid."""
    cols = loc.columns
    if not cols:
        return {}
    postcode, e, n = places.pick(rng)
    out: dict[str, str] = {}
    if "address" in cols:
        out[cols["address"]] = _address(rng, postcode, loc.kind == "home")
    if "postcode" in cols:
        out[cols["postcode"]] = _written_postcode(rng, postcode)
    has_en = "easting" in cols and "northing" in cols
    has_ll = "longitude" in cols and "latitude" in cols
    # Without a postcode the point is the only way to place the record: send it nearly always.
    keep_point = 0.92 if "postcode" not in cols else 0.65
    roll = rng.random()
    # A point a few metres from the postcode centroid, as a partner's own geocoder would give.
    pe, pn = e + rng.randint(-25, 25), n + rng.randint(-25, 25)
    if has_en and (roll < keep_point or not has_ll and "postcode" not in cols and "address" not in cols):
        out[cols["easting"]], out[cols["northing"]] = str(pe), str(pn)
    elif has_ll and roll < keep_point + 0.15:
        out[cols["longitude"]], out[cols["latitude"]] = places.lonlat(pe, pn)
    return out


def _words_for(d: Datafield) -> tuple[str, ...]:
    for key, words in _WORDS:
        if d.name == key or key in d.name:
            return words
    return _FALLBACK_WORDS


def _reference_prefix(feed_file: FeedFile) -> str:
    letters = "".join(part[:1] for part in feed_file.table.split("_") if part).upper()
    return (letters or "R")[:3]


def _reference(d: Datafield, prefix: str, period: str, seq: int) -> str:
    for candidate in (f"{prefix}{period[2:]}{seq:05d}", f"R{period[2:]}{seq:05d}", f"{seq:08d}"):
        if not d.pattern or re.fullmatch(d.pattern, candidate):
            return candidate
    raise ValueError(f"no reference value fits the pattern of {d.name}: {d.pattern}")


def _integer(rng: random.Random, d: Datafield) -> int:
    lo = int(d.min) if d.min is not None else 0
    hi = int(d.max) if d.max is not None else lo + 48
    if d.role == "age":
        a, b = max(lo, _AGE_RANGE[0]), min(hi, _AGE_RANGE[1])
        return rng.randint(a, b) if a <= b else rng.randint(lo, hi)
    return rng.randint(lo, min(hi, lo + 48))


def good_row(rng: random.Random, feed_file: FeedFile, places: Places, period: str, start: date, days: int,
         seq: int, links: dict[str, list[str]]) -> dict[str, str]:
    """One good row of a file."""
    row: dict[str, str] = {}
    # Location datafields hold only what _location_values chose (a point, or none, for a postcode-only record).
    located = {c for _, loc in (("location", feed_file.location), *feed_file.other_locations)
               for c in loc.columns.values()}
    row.update(_location_values(rng, places, feed_file.location))
    for _, other in feed_file.other_locations:
        row.update(_location_values(rng, places, other))
    when = start + timedelta(days=rng.randrange(days))
    last = start + timedelta(days=days - 1)
    ages = [d for d in feed_file.datafields if d.role == "age"]
    age = _integer(rng, ages[0]) if ages else rng.randint(*_AGE_RANGE)
    prefix = _reference_prefix(feed_file)
    for d in feed_file.datafields:
        if d.name in row or d.name in located:
            continue
        required = d.required or d.name in feed_file.key
        # Optional details are not always recorded.
        if not required and d.role in ("attribute", "flag", "time", "ethnicity", "category") and rng.random() < 0.15:
            continue
        if d.role == "reference_number":
            row[d.name] = _reference(d, prefix, period, seq)
        elif d.role == "link":
            pool = links.get(d.name)
            row[d.name] = rng.choice(pool) if pool else _reference(d, "CR", period, rng.randint(1, 99999))
        elif d.allowed_codes is not None:
            row[d.name] = rng.choice(sorted(d.allowed_codes))
        elif d.type == "date":
            if d.role == "date_of_birth":
                born = when - timedelta(days=age * 365 + rng.randint(0, 364))
                row[d.name] = born.isoformat() if rng.random() < 0.7 else born.strftime("%d/%m/%Y")
            elif d.name == feed_file.event_date or d.required:
                row[d.name] = when.isoformat()
            else:
                row[d.name] = min(when + timedelta(days=rng.randint(0, 3)), last).isoformat()
        elif d.type == "time":
            hour, minute = rng.choice([rng.randint(0, 23), rng.randint(17, 23)]), rng.choice([0, 15, 30, 45, 7, 52])
            # Some systems export times without the colon (0930): the parser accepts both.
            row[d.name] = f"{hour:02d}:{minute:02d}" if rng.random() < 0.85 else f"{hour:02d}{minute:02d}"
        elif d.type == "integer":
            row[d.name] = str(age if d.role == "age" and d is ages[0] else _integer(rng, d))
        elif d.type == "float":
            lo = d.min if d.min is not None else 0
            row[d.name] = f"{lo + rng.randint(0, 500000) / 100:.2f}"
        elif d.type == "boolean":
            row[d.name] = "Y" if rng.random() < 0.2 else "N"
        elif d.type == "postcode":
            row[d.name] = _written_postcode(rng, places.pick(rng)[0])
        elif d.role == "name":
            row[d.name] = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        elif d.role == "address":
            row[d.name] = _address(rng, places.pick(rng)[0], home=True)
        else:
            row[d.name] = rng.choice(_words_for(d))
    return row
