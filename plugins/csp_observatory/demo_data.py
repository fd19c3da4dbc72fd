"""A made-up month of police recorded crime on real postcodes, for the demo and the end-to-end tests.

The people, addresses and offences are invented; the postcodes and their centroids are real (the caller
passes an OS Code-Point Open extract). A handful of rows are made bad on purpose, and listed in
``DemoSupply.bad_rows``, so the demo shows quarantine and cleaning at work.
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

import pandas as pd

from csp_observatory.schema import REFERENCE_DIR, SCHEMA_DIR, FeedSchema, load_schema

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
# Common offence categories are much more frequent than rare ones.
CATEGORY_WEIGHT: Final = {"Violence and sexual offences": 8, "Criminal Damage and Arson": 4, "Burglary": 4,
                          "Vehicle Crime": 3, "Shoplifting": 3, "Other Theft": 3, "Public Order": 3,
                          "Drugs": 2, "Theft from the Person": 1, "Bicycle Theft": 1, "Robbery": 1}
ENTRY: Final = ("Rear door forced", "Front door forced", "Window smashed", "Insecure door", "Lock snapped",
                "Distraction: caller claimed to be from the water board")
PROPERTY: Final = ("Mobile phone", "Cash", "Laptop", "Bicycle", "Jewellery", "Power tools", "Handbag",
                   "Vehicle keys", "Catalytic converter", "Groceries")
WEAPONS: Final = ("Knife", "Bottle", "Blunt instrument", "Hands/feet")


@dataclass
class DemoSupply:
    """The CSV text of each file of one supply, and which rows were made bad on purpose (and why)."""

    period: str
    files: dict[str, str]
    bad_rows: list[dict[str, Any]] = field(default_factory=list)


def _codes() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DIR / "ho_offence_codes.csv", dtype=str, keep_default_na=False)


def _address(rng: random.Random, postcode: str) -> str:
    town = TOWNS.get(postcode.split(" ")[0], "Halifax")
    street = rng.choice(STREETS)
    roll = rng.random()
    if roll < 0.2:
        return f"Flat {rng.randint(1, 12)}, {rng.randint(1, 180)} {street}, {town}"
    if roll < 0.3:
        return f"{rng.choice(HOUSE_NAMES)}, {street}, {town}"
    return f"{rng.randint(1, 250)}{rng.choice(['', '', '', '', 'A'])} {street}, {town}"


def _write(header: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in header})
    return buf.getvalue()


def _person(rng: random.Random, on: date, postcodes: pd.DataFrame) -> dict[str, Any]:
    age = max(10, min(95, int(rng.gauss(32, 14))))
    born = on - timedelta(days=age * 365 + rng.randint(0, 364))
    pc = postcodes.iloc[rng.randrange(len(postcodes))]
    # Most systems export ISO dates; some forces' exports use the UK day-first form.
    dob = born.isoformat() if rng.random() < 0.7 else born.strftime("%d/%m/%Y")
    person = {
        "gender": rng.choice("MMMMFFFXU" if rng.random() < 0.5 else "MF"),
        "date_of_birth": dob, "age": _age(born, on) if rng.random() < 0.9 else "",
        "ethnicity": rng.choice(ETHNICITY), "occupation": rng.choice(OCCUPATIONS),
        "home_address": _address(rng, pc["postcode"]), "home_postcode": pc["postcode"],
    }
    if rng.random() < 0.6:
        person["home_easting"] = int(pc["easting"]) + rng.randint(-20, 20)
        person["home_northing"] = int(pc["northing"]) + rng.randint(-20, 20)
    return person


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def make_police_recorded_crime(period: str, postcodes: pd.DataFrame, n_offences: int = 600,
                               seed: int = DEFAULT_SEED, schema: FeedSchema | None = None) -> DemoSupply:
    """One month (``period`` = YYYYMM) of offences, offenders and victims as CSV text; deterministic per seed."""
    from pyproj import Transformer

    if n_offences < 20:
        raise ValueError("make at least 20 offences: the deliberately bad rows need room")
    schema = schema or load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    rng = random.Random(f"{seed}/{period}")
    pcs = postcodes[["postcode", "easting", "northing"]].dropna().sort_values("postcode").reset_index(drop=True)
    to_wgs84 = Transformer.from_crs("EPSG:27700", "EPSG:4326", always_xy=True)
    codes = _codes()
    weights = [CATEGORY_WEIGHT.get(c, 0.3) for c in codes["police_uk_category"]]
    start = date(int(period[:4]), int(period[4:]), 1)
    days = ((start.replace(day=28) + timedelta(days=4)).replace(day=1) - start).days

    offences: list[dict[str, Any]] = []
    offenders: list[dict[str, Any]] = []
    victims: list[dict[str, Any]] = []
    for seq in range(1, n_offences + 1):
        ref = f"13{period[2:]}{seq:05d}"
        code_row = codes.iloc[rng.choices(range(len(codes)), weights=weights)[0]]
        when = start + timedelta(days=rng.randrange(days))
        hour = rng.choice([rng.randint(0, 23), rng.randint(17, 23)])     # evenings are busier
        minute = rng.choice([0, 15, 30, 45, rng.randint(0, 59)])
        category = code_row["police_uk_category"]
        row: dict[str, Any] = {
            "crime_reference": ref, "ho_offence_code": code_row["ho_code"],
            "committed_from_date": when.isoformat(),
            # Some systems export times without the colon (0930): the parser accepts both.
            "committed_from_time": f"{hour:02d}:{minute:02d}" if rng.random() < 0.85 else f"{hour:02d}{minute:02d}",
            "flag_drugs": "Y" if category == "Drugs" else "N",
            "flag_alcohol": "Y" if rng.random() < 0.15 else "N",
            "flag_racially_motivated": "Y" if "acial" in code_row["offence"] else "N",
            "flag_domestic": "Y" if category == "Violence and sexual offences" and rng.random() < 0.3 else "N",
            "flag_distraction_burglary": "N",
        }
        if rng.random() < 0.5:
            later = min(when + timedelta(days=rng.randint(0, 2)), start + timedelta(days=days - 1))
            row["committed_to_date"] = later.isoformat()
            row["committed_to_time"] = f"{min(23, hour + rng.randint(0, 3)):02d}:{rng.randint(0, 59):02d}"
        if category == "Burglary":
            row["method_of_entry"] = rng.choice(ENTRY)
            row["flag_distraction_burglary"] = "Y" if row["method_of_entry"].startswith("Distraction") else "N"
        if category in ("Burglary", "Other Theft", "Shoplifting", "Theft from the Person", "Bicycle Theft",
                        "Robbery", "Vehicle Crime"):
            row["property_stolen"] = rng.choice(PROPERTY)
        if category in ("Violence and sexual offences", "Robbery") and rng.random() < 0.3:
            row["weapon_used"] = rng.choice(WEAPONS)

        pc = pcs.iloc[rng.randrange(len(pcs))]
        # A point a few metres from the postcode centroid, as a force's own geocoder would give.
        e, n = int(pc["easting"]) + rng.randint(-30, 30), int(pc["northing"]) + rng.randint(-30, 30)
        roll = rng.random()
        if roll < 0.05:
            town = TOWNS.get(pc["postcode"].split(" ")[0], "Halifax")
            row["location_address"] = f"{rng.choice(NON_ADDRESSABLE)}, {town}"
            row["easting"], row["northing"] = e, n
        else:
            row["location_address"] = _address(rng, pc["postcode"])
            # Partners do not all write postcodes the same way: cleaning puts them in normal form.
            written = pc["postcode"] if rng.random() < 0.9 else pc["postcode"].replace(" ", "").lower()
            row["location_postcode"] = written
            if roll < 0.70:
                row["easting"], row["northing"] = e, n
            elif roll < 0.82:
                lon, lat = to_wgs84.transform(e, n)
                row["longitude"], row["latitude"] = f"{lon:.6f}", f"{lat:.6f}"
            # else: only the postcode
        offences.append(row)

        for k in range(rng.choice([0, 0, 1, 1, 1, 2])):
            person = _person(rng, when, pcs)
            offenders.append({"crime_reference": ref, "offender_reference": f"O{k + 1}",
                              "offender_name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}", **person})
        for k in range(rng.choice([1, 1, 1, 1, 2])):
            person = _person(rng, when, pcs)
            victims.append({"crime_reference": ref, "victim_reference": f"V{k + 1}",
                            "victim_name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                            "association_with_offender": rng.choice(ASSOCIATIONS), **person})

    bad = _spoil(offences, rng, period, n_offences)
    header = {f.name: f.field_names for f in schema.files}
    files = {"offences": _write(header["offences"], offences), "offenders": _write(header["offenders"], offenders),
             "victims": _write(header["victims"], victims)}
    # Row numbers are known only once every bad row is in place.
    position = {id(r): i + 1 for i, r in enumerate(offences)}
    bad_rows = [{"file": "offences", "row": position[id(r)], **info} for r, info in bad]
    return DemoSupply(period=period, files=files, bad_rows=sorted(bad_rows, key=lambda b: b["row"]))


def _spoil(offences: list[dict[str, Any]], rng: random.Random, period: str,
           n: int) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Make a few offence rows bad on purpose; return each with what is wrong and what should happen to it."""
    at = [int(n * f) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
    year = period[:4]
    bad: list[tuple[dict[str, Any], dict[str, str]]] = []

    row = offences[at[0]]
    row["committed_from_date"] = f"31/02/{year}"
    bad.append((row, {"why": "committed_from_date is 31 February", "expect": "rejected", "stage": "parse"}))

    row = offences[at[1]]
    row["crime_reference"] = ""
    bad.append((row, {"why": "crime reference missing", "expect": "rejected", "stage": "validate"}))

    row = offences[at[2]]
    row["ho_offence_code"] = "999Z"
    bad.append((row, {"why": "offence code 999Z is not a Home Office code", "expect": "rejected",
                      "stage": "validate"}))

    # The point outside GB is blanked and the row geocoded by its postcode, so pick a row that has one.
    row = next(r for r in offences[at[3]:at[4]] if r.get("location_postcode"))
    row["easting"], row["northing"] = 912345, row.get("northing") or 425000
    row.pop("longitude", None), row.pop("latitude", None)
    bad.append((row, {"why": "easting 912345 is outside Great Britain", "expect": "nulled", "stage": "validate"}))

    row = offences[at[4]]
    row["location_postcode"] = "HX1 1A"
    bad.append((row, {"why": "postcode HX1 1A is not a full postcode", "expect": "nulled", "stage": "clean"}))

    # Duplicates go after their originals (the first row of a key is the one kept); insert the later one first
    # so the earlier insertion point does not move.
    original = offences[at[6]]
    conflicting = dict(original, committed_from_time="23:59", property_stolen="Bicycle")
    offences.insert(at[6] + 1, conflicting)
    copy = dict(offences[at[5]])
    offences.insert(at[5] + 1, copy)
    bad.append((copy, {"why": "exact duplicate of the row above", "expect": "rejected", "stage": "clean"}))
    bad.append((conflicting, {"why": "same crime reference as the row above, different content",
                              "expect": "rejected", "stage": "clean"}))
    return bad
