"""A realistic made-up supply for any feed schema, from its datafields alone: for tests and for trying a feed.

``make_supply(schema, period, reference)`` writes every file of one supply of a feed as CSV text. Values come
from each datafield's type, role, code list and pattern; locations are real postcodes and centroids of the
reference (``postcodes_sources.shipped_reference()``: Calderdale) with invented house numbers on real street names. A few
rows are made bad on purpose among the good ones and listed in ``FixtureSupply.bad_rows`` with what should
happen to them:

=================  ===========================================================  ============================
bad row            how                                                          expected
=================  ===========================================================  ============================
missing required   a required datafield (else a key datafield) left empty       set aside at ``validate``
bad code           a code that is not in the datafield's list                   set aside at ``validate`` if
                                                                                the datafield is required,
                                                                                else blanked (``nulled``)
bad date           31 February                                                  set aside at ``parse``
duplicate key      an exact copy of a row, right after it                       set aside at ``clean``
=================  ===========================================================  ============================

A file keyed by content (``key: content``) has no duplicate-key row: two identical rows are two records there,
and the supply holds such a pair among its good rows. Each kind is made only where the file has a datafield for
it. Everything is drawn from one ``random.Random`` seeded by (seed, feed, period), with integer arithmetic for
every value compared exactly (no NumPy), so a seed gives the same rows and bad rows on every machine. The one
exception is a longitude/latitude (sent in some rows of a file whose location has them): pyproj computes it, and
its sixth decimal can differ where PROJ has the OSTN15 grid. Use a period in the past: dates fall in the period,
and validation blanks dates in the future.

Each supply also has its metadata file (guidance section 3.4; ``metadata.py``), made by :func:`make_metadata` to
match the files (every file's records and header), or miscounted, or left out (``make_supply(metadata=...)``).
"""
from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

import pandas as pd
import yaml

from csp_observatory import metadata as supply_metadata
from csp_observatory.metadata_file import TOP_LEVEL
from csp_observatory.demo_data import FIRST_NAMES, LAST_NAMES, OCCUPATIONS, STREETS, TOWNS
from csp_observatory.schema import POINT_ROLES, REPO_ROOT, Datafield, FeedFile, FeedSchema, LocationFields, period_bounds

DEFAULT_SEED: Final = 20260701
#: A feed's example metadata file, if it has one: ``<feed>_metadata.yaml`` (make_metadata starts from it).
EXAMPLES_DIR: Final = REPO_ROOT / "include" / "examples"
#: What ``make_supply(metadata=...)`` can give the supply: a matching file, one whose first file is miscounted, none.
METADATA_KINDS: Final = ("matching", "miscounted", None)
HO_CODES_FILE: Final = "ho_offence_codes.csv"
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


@dataclass
class FixtureSupply:
    """One supply of a feed: CSV text per file, and the rows made bad on purpose (and what should happen)."""

    feed: str
    period: str
    #: schema file name (``offences``, ``incidents``...) -> CSV text, header first
    files: dict[str, str]
    #: {file, row (1-based data row), kind (missing_required | bad_code | bad_date | duplicate_key), column, why,
    #: expect (rejected | nulled), stage (parse | validate | clean)}
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    #: data rows per file (header excluded)
    rows: dict[str, int] = field(default_factory=dict)
    #: the supply's metadata file (YAML text) and its name on SFTP, or None when it has none
    metadata: str | None = None
    metadata_name: str | None = None

    def rejected(self, file_name: str) -> dict[int, str]:
        """Row number -> stage, of the rows of one file that must be set aside."""
        return {b["row"]: b["stage"] for b in self.bad_rows if b["file"] == file_name and b["expect"] == "rejected"}


def remote_name(feed_file: FeedFile, period: str) -> str:
    """The partner's file name for a period, from the file's pattern (``pi_incidents_202607.csv.gpg``)."""
    text = re.sub(r"\(\?P<period>[^)]*\)", period, feed_file.pattern.strip("^$"))
    name = re.sub(r"\\(.)", r"\1", text)
    if feed_file.match(name) != period:
        raise ValueError(f"cannot make a file name from the pattern {feed_file.pattern!r}")
    return name


def _period_days(period: str, period_format: str) -> tuple[date, int]:
    start = pd.Timestamp(pd.to_datetime(period, format=period_format)).date()
    following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start, (following - start).days


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


class _Places:
    """Real postcodes with their centroids, picked at random (integers only: every machine picks the same)."""

    def __init__(self, reference: pd.DataFrame) -> None:
        live = reference[~reference["terminated"].fillna(False).astype(bool)]
        live = live[["postcode", "easting", "northing"]].dropna().drop_duplicates("postcode").sort_values("postcode")
        if live.empty:
            raise ValueError("the reference has no live postcodes")
        self.rows = [(str(p), int(e), int(n)) for p, e, n in live.itertuples(index=False)]
        self._wgs84: Any = None

    def pick(self, rng: random.Random) -> tuple[str, int, int]:
        return self.rows[rng.randrange(len(self.rows))]

    def lonlat(self, e: int, n: int) -> tuple[str, str]:
        if self._wgs84 is None:
            from pyproj import Transformer

            self._wgs84 = Transformer.from_crs("EPSG:27700", "EPSG:4326", always_xy=True)
        lon, lat = self._wgs84.transform(e, n)
        return f"{lon:.6f}", f"{lat:.6f}"


def _location_values(rng: random.Random, places: _Places, loc: LocationFields) -> dict[str, str]:
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


def _row(rng: random.Random, feed_file: FeedFile, places: _Places, period: str, start: date, days: int,
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


def _bad_code(d: Datafield) -> str:
    return "999Z" if d.codes_file == HO_CODES_FILE else "not-a-code"


def _spoil(rng: random.Random, feed_file: FeedFile, rows: list[dict[str, str]],
           year: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Make a few rows of a file bad on purpose; each with what is wrong and what should happen to it."""
    if len(rows) < 8:
        return []
    key = set(feed_file.key)
    spots = rng.sample(range(1, len(rows) - 1), 3)
    bad: list[tuple[dict[str, str], dict[str, str]]] = []

    required = [d for d in feed_file.datafields if d.required and d.name not in key] or \
        [d for d in feed_file.datafields if d.name in key]
    if required:
        d = required[rng.randrange(len(required))]
        row = rows[spots[0]]
        row[d.name] = ""
        bad.append((row, {"kind": "missing_required", "column": d.name, "why": f"{d.name} is missing (required)",
                          "expect": "rejected", "stage": "validate"}))

    coded = [d for d in feed_file.datafields if d.allowed_codes is not None and d.name not in key]
    if coded:
        strict = [d for d in coded if d.required]
        d = (strict or coded)[rng.randrange(len(strict or coded))]
        row = rows[spots[1]]
        row[d.name] = _bad_code(d)
        bad.append((row, {"kind": "bad_code", "column": d.name, "why": f"{d.name} is not a valid code",
                          "expect": "rejected" if d.required else "nulled",
                          "stage": "validate"}))

    dates = [d for d in feed_file.datafields if d.type == "date"]
    if dates:
        # Prefer a date that is not personal: the reason then names the value the partner must fix.
        plain = [d for d in dates if not d.personal] or dates
        d = plain[rng.randrange(len(plain))]
        row = rows[spots[2]]
        row[d.name] = f"31/02/{year}"
        bad.append((row, {"kind": "bad_date", "column": d.name, "why": f"{d.name} is 31 February",
                          "expect": "rejected", "stage": "parse"}))

    spoilt = {id(r) for r, _ in bad}
    good = [i for i in range(len(rows) - 1) if id(rows[i]) not in spoilt]
    at = good[rng.randrange(len(good))]
    copy = dict(rows[at])
    rows.insert(at + 1, copy)
    if not feed_file.content_key:
        bad.append((copy, {"kind": "duplicate_key", "column": ", ".join(feed_file.key),
                           "why": "exact copy of the row above (duplicate key)", "expect": "rejected",
                           "stage": "clean"}))
    # With a content key, two identical rows are two records (two pupils excluded alike): both load.
    return bad


def _write(header: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) or "" for k in header})
    return buf.getvalue()


def make_supply(schema: FeedSchema, period: str, reference: pd.DataFrame, n: int = 60,
                seed: int = DEFAULT_SEED, metadata: str | None = "matching") -> FixtureSupply:
    """Every file of one supply of ``schema`` for ``period`` as CSV text, with bad rows among the good.

    ``reference`` is a postcode reference frame (``postcodes_sources.shipped_reference()``); ``n`` is the number of good
    rows of each file (a linked file, such as offenders, links each of its rows to a row of its target file).
    ``metadata`` (one of :data:`METADATA_KINDS`): a metadata file that matches the files, one that says the first
    file has one record more than it has, or none. Deterministic for a seed.
    """
    if n < 8:
        raise ValueError("make at least 8 rows: the bad rows need room among the good")
    if metadata not in METADATA_KINDS:
        raise ValueError(f"metadata must be one of {METADATA_KINDS}")
    rng = random.Random(f"{seed}/{schema.feed}/{period}")
    places = _Places(reference)
    start, days = _period_days(period, schema.period_format)
    # Files that others link to first, so their references exist when a linked file draws on them.
    order = sorted(schema.files, key=lambda f: f.links_to is not None)
    made: dict[str, list[dict[str, str]]] = {}
    bad_rows: list[dict[str, Any]] = []
    for feed_file in order:
        links: dict[str, list[str]] = {}
        if feed_file.links_to:
            target, column = feed_file.links_to["file"], feed_file.links_to["column"]
            links[column] = sorted({r[column] for r in made.get(target, []) if r.get(column)})
        rows = [_row(rng, feed_file, places, period, start, days, seq, links) for seq in range(1, n + 1)]
        bad = _spoil(rng, feed_file, rows, period[:4])
        made[feed_file.name] = rows
        # Row numbers are known only once every bad row is in place.
        position = {id(r): i + 1 for i, r in enumerate(rows)}
        bad_rows += [{"file": feed_file.name, "row": position[id(r)], **info} for r, info in bad]
    files = {f.name: _write(f.field_names, made[f.name]) for f in schema.files}
    rows = {name: len(rows) for name, rows in made.items()}
    text = None
    if metadata is not None:
        first = schema.files[0].name
        text = make_metadata(schema, period, files,
                             records={first: rows[first] + 1} if metadata == "miscounted" else None)
    return FixtureSupply(feed=schema.feed, period=period, files=files,
                         bad_rows=sorted(bad_rows, key=lambda b: (b["file"], b["row"])), rows=rows, metadata=text,
                         metadata_name=supply_metadata.metadata_file_name(schema, period) if text else None)


def _records_and_header(text: str) -> tuple[int, list[str]]:
    """A CSV file's data records (as the parser counts them: blank lines are none) and its header cells."""
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    return max(len(records) - 1, 0), (records[0] if records else [])


def make_metadata(schema: FeedSchema, period: str, files: dict[str, str], *,
                  records: dict[str, int] | None = None, caveats: list[str] | None = None,
                  date_supplied: date | None = None) -> str:
    """A metadata file (guidance section 3.4) for a supply of ``schema``, as the partner would write it: YAML text.

    It matches ``files`` (file name -> CSV text): each file's records are its data rows and its datafields its
    header, so ``metadata_checks.check_against`` finds nothing. The feed's example in ``include/examples`` (if any) gives
    the agency, supplier, explanations, caveats, coding systems and how coordinates were made; other feeds get
    plain made-up ones. ``records`` overrides a file's count (a mismatch on purpose), ``caveats`` the caveats.
    Deterministic: the date supplied is, by default, twelve days after the period ends.
    """
    example = EXAMPLES_DIR / f"{schema.feed}_metadata.yaml"
    if example.exists():
        doc: dict[str, Any] = yaml.safe_load(example.read_text(encoding="utf-8"))
    else:
        doc = {"agency": schema.partner.agency,
               "supplier": {"name": f"Data team, {schema.partner.name}", "contact": "data-team@partner.example"},
               "dataset": schema.feed,
               "file_format": "CSV (UTF-8, comma-separated, one header row), encrypted and signed with OpenPGP",
               "files": {},
               "caveats": [f"Made-up records for trying the {schema.title} feed: they describe no real event."],
               "geographic_method": "Geocoded from the address by the partner's own gazetteer (made-up points)."}
    bounds = period_bounds(schema.period_format, period)
    explained = {name: entry.get("datafields") for name, entry in (doc.get("files") or {}).items()}
    out_files: dict[str, Any] = {}
    listed: set[str] = set()
    for f in schema.files:
        if f.name not in files:
            continue
        count, header = _records_and_header(files[f.name])
        known = explained.get(f.name) if isinstance(explained.get(f.name), dict) else {}
        names = [cell for cell in header if cell.strip()]
        listed |= {supply_metadata.header_key(c) for c in names}
        # name: explanation where there are explanations, else the plain list a partner may write instead
        fields: Any = {c: known.get(c) for c in names} if any(known.get(c) for c in names) else names
        out_files[f.name] = {"records": (records or {}).get(f.name, count), "datafields": fields}
    coordinates = any(d.role in POINT_ROLES and supply_metadata.header_key(d.name) in listed
                      for f in schema.files for d in f.datafields)
    if caveats is not None:
        doc["caveats"] = list(caveats)
    doc.update({
        "period": period, "files": out_files,
        "date_supplied": date_supplied or ((bounds[1] if bounds else date(2026, 1, 1)) + timedelta(days=12)),
    })
    if not coordinates:
        doc.pop("geographic_method", None)
    text = yaml.safe_dump({k: doc[k] for k in TOP_LEVEL if k in doc}, sort_keys=False,
                          allow_unicode=True, width=110)
    # "name:" with nothing after it, as a person writes a self-explanatory datafield (YAML reads it as null)
    return re.sub(r"(?m)^(\s+[^\s:#]+): null$", r"\1:", text)
