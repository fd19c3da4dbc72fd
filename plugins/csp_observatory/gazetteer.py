"""Gazetteer of named places for non-addressable locations (Appendix 1: parks, car parks, waste ground...).

Appendix 1 of the guidance gives a non-addressable location the centre point of the place, exempt from
the household rule. Places come in the OS Open Names CSV layout (no header row); they are loaded into
``reference.places`` and matched against free location text with :func:`match_location`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from csp_observatory.postcodes_postgis import copy_out, frame_to_csv, grant_read
from csp_observatory.schema import REFERENCE_DIR

SHIPPED_PLACES: Final = REFERENCE_DIR / "places_calderdale_SYNTHETIC.csv"
HY20_PLACES: Final = REFERENCE_DIR / "places_os_open_names_HY20.csv.gz"

#: OS Open Names CSV columns, in file order (the files have no header row).
OS_OPEN_NAMES_COLUMNS: Final = [
    "ID", "NAMES_URI", "NAME1", "NAME1_LANG", "NAME2", "NAME2_LANG", "TYPE", "LOCAL_TYPE", "GEOMETRY_X",
    "GEOMETRY_Y", "MOST_DETAIL_VIEW_RES", "LEAST_DETAIL_VIEW_RES", "MBR_XMIN", "MBR_YMIN", "MBR_XMAX",
    "MBR_YMAX", "POSTCODE_DISTRICT", "POSTCODE_DISTRICT_URI", "POPULATED_PLACE", "POPULATED_PLACE_URI",
    "POPULATED_PLACE_TYPE", "DISTRICT_BOROUGH", "DISTRICT_BOROUGH_URI", "DISTRICT_BOROUGH_TYPE",
    "COUNTY_UNITARY", "COUNTY_UNITARY_URI", "COUNTY_UNITARY_TYPE", "REGION", "REGION_URI", "COUNTRY",
    "COUNTRY_URI", "RELATED_SPATIAL_OBJECT", "SAME_AS_DBPEDIA", "SAME_AS_GEONAMES",
]
#: What the observatory keeps of a place (frame columns and ``reference.places`` columns, lower case);
#: ``x``/``y`` is the point a matched location gets.
PLACE_COLUMNS: Final = ["id", "name1", "name2", "type", "local_type", "geometry_x", "geometry_y", "mbr_xmin",
                        "mbr_ymin", "mbr_xmax", "mbr_ymax", "postcode_district", "populated_place",
                        "district_borough", "county_unitary", "region", "country", "x", "y"]
_NUMERIC: Final = ["geometry_x", "geometry_y", "mbr_xmin", "mbr_ymin", "mbr_xmax", "mbr_ymax", "x", "y"]

#: Features whose named point is a line or a spot (roads, postcodes, settlements): their GEOMETRY_X/Y is
#: the right point. Everything else with a bounding box is an area and gets the box's centre.
_POINT_TYPES: Final = frozenset({"transportNetwork", "populatedPlace"})

# Words that make a location non-addressable (Appendix 1), unless they are part of a street name
# ("Park Road", "Station Lane" are addresses).
_STREET_WORDS: Final = ("road|rd|street|st|lane|ln|avenue|ave|drive|dr|close|way|view|terrace|place|crescent|"
                        "grove|gardens|court|row|walk|square|hill|mount|parade|rise|fold|gate|side|top|bank")
#: Always a non-addressable place, whatever else the text says.
_STRONG_WORDS: Final = (
    r"car\s*parks?|parking|multi[\s-]*storey|waste\s*ground|wasteland|spare\s*land|open\s*land|open\s*space|"
    r"parks?|playing\s*fields?|sports?\s*(?:ground|field)s?|recreation\s*grounds?|rec\s*ground|"
    r"play\s*(?:ground|area)s?|bus\s*station|railway\s*station|train\s*station|bus\s*stops?|"
    r"cemetery|cemeteries|churchyard|graveyard|crematorium|footpaths?|foot\s*paths?|bridleways?|"
    r"(?:canal\s*)?towpath|beach|foreshore|allotments?|alley(?:way)?|ginnel|snicket|subway|underpass|"
    r"lay[\s-]*by|roundabout|junction|corner\s+of"
)
#: Also part of many town and building names ("Sowerby Bridge", "Market Street"): a non-addressable place
#: only when the text does not start with a house number.
_WEAK_WORDS: Final = (
    r"stations?|fields?|woods?|woodland|forest|common|moor(?:land)?|canal(?:\s*side)?|"
    r"river(?:\s*bank|side)?|reservoir|bridge|marina|quarry|market(?:\s*place)?|museum|precinct|"
    r"retail\s*park|industrial\s*estate|shopping\s*centre"
)
_STRONG_RE: Final = re.compile(rf"\b(?:{_STRONG_WORDS})\b(?!\s+(?:{_STREET_WORDS})\b)", re.I)
_WEAK_RE: Final = re.compile(rf"\b(?:{_WEAK_WORDS})\b(?!\s+(?:{_STREET_WORDS})\b)", re.I)
#: A cheap, vectorisable pre-filter: text that is_non_addressable() could accept contains one of these words.
NON_ADDRESSABLE_HINT: Final = rf"(?i)\b(?:{_STRONG_WORDS}|{_WEAK_WORDS})\b"
#: The same for the words that always make a location non-addressable.
STRONG_HINT: Final = rf"(?i)\b(?:{_STRONG_WORDS})\b"
_HOUSE_NUMBER_RE: Final = re.compile(r"^\s*(?:(?:flat|apartment|unit)\s+\w+\s*,?\s*)?\d+[a-z]?\b", re.I)

# Text around a place name that says where, not what: dropped before matching.
_ABBREVIATIONS: Final = {"rd": "road", "st": "street", "ln": "lane", "ave": "avenue", "dr": "drive",
                         "cres": "crescent", "sq": "square", "pk": "park", "stn": "station", "&": "and"}


def read_os_open_names(path: str | Path) -> pd.DataFrame:
    """Read an OS Open Names CSV (no header row, may start with a UTF-8 BOM, may be .gz) into a places frame."""
    raw = pd.read_csv(path, header=None, names=OS_OPEN_NAMES_COLUMNS, dtype=str, keep_default_na=False,
                      encoding="utf-8-sig")
    return places_frame(raw)


def places_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The places frame (``PLACE_COLUMNS``) from OS Open Names columns; computes the matched point ``x, y``."""
    out = pd.DataFrame({c: raw[c.upper()] for c in PLACE_COLUMNS if c.upper() in raw.columns})
    for c in PLACE_COLUMNS:
        if c not in out:
            out[c] = pd.NA
    for c in _NUMERIC:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    has_box = out[["mbr_xmin", "mbr_ymin", "mbr_xmax", "mbr_ymax"]].notna().all(axis=1)
    area = has_box & ~out["type"].isin(_POINT_TYPES)
    area |= out["geometry_x"].isna() & has_box
    out["x"] = np.where(area, (out["mbr_xmin"] + out["mbr_xmax"]) / 2, out["geometry_x"])
    out["y"] = np.where(area, (out["mbr_ymin"] + out["mbr_ymax"]) / 2, out["geometry_y"])
    for c in PLACE_COLUMNS:
        if c not in _NUMERIC:
            s = out[c].astype("string").str.strip()
            out[c] = s.mask(s == "")
    return out[PLACE_COLUMNS].reset_index(drop=True)


def shipped_places() -> pd.DataFrame:
    """The demo gazetteer shipped in include/reference (SYNTHETIC Calderdale places, OS Open Names layout)."""
    return read_os_open_names(SHIPPED_PLACES)


def is_non_addressable(text: Any) -> bool:
    """True if location text names a non-addressable place (park, car park, waste ground, station...)."""
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return False
    text = str(text)
    if _STRONG_RE.search(text):
        return True
    return bool(_WEAK_RE.search(text)) and not _HOUSE_NUMBER_RE.match(text)


# --- matching ---------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9&']+", text.lower().replace("\u2019", "'"))
    return [_ABBREVIATIONS.get(w, w).replace("'", "") for w in words]


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _key(text: str) -> str:
    return " ".join(_words(text))


@dataclass(frozen=True)
class Match:
    """A place matched to location text: the point it gets, how sure we are, and which name matched."""

    name: str
    easting: float
    northing: float
    confidence: float
    place_id: str | None = None
    local_type: str | None = None
    note: str = ""


@dataclass
class PlaceIndex:
    """Places keyed by normalised name, for matching many texts against a large gazetteer."""

    places: pd.DataFrame
    by_name: dict[str, list[int]] = field(default_factory=dict)
    longest: int = 1

    @classmethod
    def build(cls, places: pd.DataFrame) -> PlaceIndex:
        """Index a places frame by NAME1 and NAME2."""
        places = places.reset_index(drop=True)
        by_name: dict[str, list[int]] = defaultdict(list)
        usable = places["x"].notna() & places["y"].notna()
        for col in ("name1", "name2"):
            names = places[col].astype("string")
            for i in np.flatnonzero((names.notna() & usable).to_numpy()):
                key = _key(str(names.iloc[i]))
                if key:
                    by_name[key].append(int(i))
        longest = max((k.count(" ") + 1 for k in by_name), default=1)
        return cls(places, dict(by_name), longest)

    def candidates(self, text: str) -> list[tuple[str, int, int]]:
        """Every (name, start word, place row) whose name occurs in the text as whole words."""
        words = _words(text)
        found = []
        for size in range(min(self.longest, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                key = " ".join(words[start:start + size])
                for row in self.by_name.get(key, ()):
                    found.append((key, start, row))
        return found


# Generic words that match a place name only by accident ("Park", "Station"): never matched on their own.
_GENERIC: Final = frozenset({"park", "car park", "station", "road", "street", "field", "fields", "wood", "woods",
                             "common", "green", "bridge", "junction", "the", "and", "of", "off", "at", "near"})


def match_location(text: Any, places: pd.DataFrame | PlaceIndex) -> Match | None:
    """Match free location text to a named place; its point is the place's centre (or named point).

    Longer names win ("Bankfield Museum" over "Bankfield"); a populated place also named in the text
    settles ties ("Kirk Road, Stromness"); "junction of A and B" takes the point between the two roads,
    inside the overlap of their bounding boxes when they overlap.
    """
    if text is None or (not isinstance(text, str) and pd.isna(text)) or not str(text).strip():
        return None
    index = places if isinstance(places, PlaceIndex) else PlaceIndex.build(places)
    frame = index.places
    found = [c for c in index.candidates(str(text)) if c[0] not in _GENERIC and not c[0].isdigit()]
    if not found:
        return None
    words = _words(str(text))
    named_places = {k for k, _, r in found if frame.at[r, "type"] == "populatedPlace"}

    def pick(key: str) -> tuple[int, int]:
        rows = [r for k, _, r in found if k == key]
        # A settlement also named in the text settles which of several same-named places it is.
        in_town = [r for r in rows if _key(_text(frame.at[r, "populated_place"])) in named_places]
        rows = in_town or rows
        rows.sort(key=lambda r: _text(frame.at[r, "local_type"]) == "Postcode")
        return rows[0], len(rows)

    if re.search(r"\bjunction\b|\bcorner of\b|\bj/w\b|\bjw\b", str(text), re.I):
        roads = []
        for key, start, row in sorted(found, key=lambda c: (-len(c[0]), c[1])):
            if frame.at[row, "type"] == "transportNetwork" and all(
                    not (start < s + len(k.split()) and s < start + len(key.split())) for k, s in roads):
                roads.append((key, start))
        if len(roads) >= 2:
            (ka, _), (kb, _) = roads[:2]
            ra, _ = pick(ka)
            rb, _ = pick(kb)
            a, b = frame.loc[ra], frame.loc[rb]
            x, y = (a["x"] + b["x"]) / 2, (a["y"] + b["y"]) / 2
            lo_x, hi_x = max(a["mbr_xmin"], b["mbr_xmin"]), min(a["mbr_xmax"], b["mbr_xmax"])
            lo_y, hi_y = max(a["mbr_ymin"], b["mbr_ymin"]), min(a["mbr_ymax"], b["mbr_ymax"])
            if lo_x <= hi_x and lo_y <= hi_y:  # the roads' boxes overlap: the junction is in there
                x, y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
            far = np.hypot(a["x"] - b["x"], a["y"] - b["y"]) > 3000
            return Match(name=f"{a['name1']} / {b['name1']}", easting=float(x), northing=float(y),
                         confidence=0.4 if far else 0.7, place_id=None, local_type="Junction",
                         note="junction of two named roads" + ("; roads far apart" if far else ""))

    # A named feature beats a settlement (the settlement is context: "Station Road, Stromness"); then the
    # longest name; among equals the one nearer the start (the place itself, before "off X").
    best_key = max(found, key=lambda c: (c[0] not in named_places, len(c[0].split()), len(c[0]), -c[1]))[0]
    row, n_same = pick(best_key)
    place = frame.loc[row]
    coverage = len(best_key.split()) / max(len(words), 1)
    confidence = 0.95 if coverage >= 0.99 else round(0.55 + 0.4 * coverage, 2)
    note = ""
    if n_same > 1:
        confidence = round(confidence * 0.6, 2)
        note = f"{n_same} places share the name {place['name1']!r}; the first was used"
    return Match(name=str(place["name1"]), easting=float(place["x"]), northing=float(place["y"]),
                 confidence=confidence, place_id=None if pd.isna(place["id"]) else str(place["id"]),
                 local_type=None if pd.isna(place["local_type"]) else str(place["local_type"]), note=note)


# --- PostGIS -----------------------------------------------------------------------------------------

_PLACES_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS reference;
CREATE TABLE IF NOT EXISTS reference.places (
    id text PRIMARY KEY, name1 text, name2 text, type text, local_type text,
    geometry_x double precision, geometry_y double precision,
    mbr_xmin double precision, mbr_ymin double precision, mbr_xmax double precision, mbr_ymax double precision,
    postcode_district text, populated_place text, district_borough text, county_unitary text, region text,
    country text, x double precision, y double precision,
    geom geometry(Point, 27700)
);
CREATE INDEX IF NOT EXISTS places_geom_gist ON reference.places USING gist (geom);
"""


def load_places(conn: Any, frame: pd.DataFrame, replace: bool = True, commit: bool = True) -> int:
    """Load a places frame into ``reference.places`` (point = the matched point, GiST-indexed); one transaction."""
    frame = frame[PLACE_COLUMNS].drop_duplicates("id", keep="first")
    cols = ", ".join(PLACE_COLUMNS)
    buf = frame_to_csv(frame)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            cur.execute(_PLACES_DDL)
            cur.execute("CREATE TEMP TABLE places_staging (LIKE reference.places) ON COMMIT DROP")
            cur.copy_expert(f"COPY places_staging ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
            if replace:
                cur.execute("TRUNCATE reference.places")
            cur.execute(f"""INSERT INTO reference.places ({cols}, geom)
                SELECT {cols}, CASE WHEN x IS NOT NULL AND y IS NOT NULL
                                    THEN ST_SetSRID(ST_MakePoint(x, y), 27700) END
                FROM places_staging
                ON CONFLICT (id) DO UPDATE SET
                    {", ".join(f"{c} = EXCLUDED.{c}" for c in PLACE_COLUMNS[1:])}, geom = EXCLUDED.geom""")
            grant_read(cur, "reference.places")
            cur.execute("ANALYZE reference.places")
        if commit:
            conn.commit()
    except Exception:
        conn.rollback()
        raise
    return len(frame)


def read_places(conn: Any) -> pd.DataFrame | None:
    """The places frame from ``reference.places``; None if the table does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('reference.places') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        frame = copy_out(cur, f"SELECT {', '.join(PLACE_COLUMNS)} FROM reference.places", PLACE_COLUMNS,
                         {c: "float64" for c in _NUMERIC})
    return frame
