"""Declarative feed schemas: one YAML file per partner feed in ``include/schemas/``.

A feed schema drives everything downstream: the DAG, the parsing and validation rules, the
sanitising rules, the PostGIS DDL (``ddl.py``) and the documentation shown in the Airflow UI (``schema_docs.py``).

This module holds what a schema is (:class:`FeedSchema`, its files and datafields, and the one list of roles and
what sanitising does with each); reading and checking the YAML files is ``schema_loading.py``.
"""
from __future__ import annotations

import calendar
import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCHEMA_DIR: Final = REPO_ROOT / "include" / "schemas"
REFERENCE_DIR: Final = REPO_ROOT / "include" / "reference"

TYPES: Final = frozenset({"string", "code", "date", "time", "integer", "float", "boolean", "postcode"})
ROLES: Final = frozenset({
    "reference_number", "link", "category", "date", "time", "address", "postcode", "easting",
    "northing", "longitude", "latitude", "attribute", "flag", "name", "gender", "date_of_birth",
    "age", "ethnicity",
})
#: Roles whose values identify a person and never reach a depersonalised table.
PERSONAL_ROLES: Final = frozenset({"name", "date_of_birth"})
#: Roles of the exact location: replaced by the sanitised point (Appendix 1).
POINT_ROLES: Final = frozenset({"easting", "northing", "longitude", "latitude"})
# The one list of what sanitising does by role (ddl.py, loading.py, sanitising.py and reporting.py read these).
#: Roles whose columns are dropped on sanitising: they never reach a depersonalised table.
DROPPED_ON_SANITISING: Final = PERSONAL_ROLES | POINT_ROLES
#: Roles whose values are rewritten on sanitising: the address loses house numbers and names (and is scrubbed),
#: the postcode becomes the sanitised postcode.
REWRITTEN_ON_SANITISING: Final = frozenset({"address", "postcode"})
#: The schedule of a feed whose DAG a supply's arrival starts (an Airflow asset watched on the partner's inbox).
ON_ARRIVAL: Final = "on_arrival"
#: Roles that identify a record, not a person, and are checked against a pattern, never free text.
REFERENCE_ROLES: Final = frozenset({"reference_number", "link"})
#: A free-text datafield's rule in a depersonalised feed: ``scrub`` it (scrubbing.py) or ``drop`` the column.
FREE_TEXT_RULES: Final = frozenset({"scrub", "drop"})
DATASET_TYPES: Final = frozenset({"depersonalised", "personalised"})
#: The column holding a content key (``key: content``): see FeedFile.content_key and record_keys.content_keys.
CONTENT_KEY_COLUMN: Final = "row_key"
#: How each ``sanitising.displacement`` setting reads, for the Airflow UI and the report.
DISPLACEMENT_TEXT: Final = {
    "nearest": "next nearest postcode with enough households (Appendix 1)",
    "same_ward_first": "nearest postcode with enough households in the same ward, else the same district, else "
                       "anywhere (this feed's option; Appendix 1 asks only for the next nearest)",
}


class SchemaError(ValueError):
    """A feed schema file is not valid."""


@dataclass(frozen=True)
class Datafield:
    """One datafield of a feed file, in the guidance's words."""

    name: str
    label: str
    type: str
    role: str
    required: bool = False
    pattern: str | None = None
    codes: tuple[str, ...] | None = None
    codes_file: str | None = None
    min: float | None = None
    max: float | None = None
    #: What sanitising does with free text (a string datafield): "scrub", "drop", or None (no rule).
    free_text: str | None = None
    #: False for a datafield the guidance's minimum dataset does not list: it may be sent, never required.
    guidance: bool = True
    #: On a date of birth: the age datafield it becomes on sanitising (``age_field`` in the schema). Needed where a
    #: file has several people (the offender's and the victim's); FeedFile.age_pairs gives the default.
    age_field: str | None = None
    #: On a date: how many days after today a value may lie (``future_days``). 0, the default, refuses any date in
    #: the future: right for events (offences, incidents, attendances) and births; a release date announced ahead
    #: or a planned discharge date needs more.
    future_days: int = 0

    @cached_property
    def allowed_codes(self) -> frozenset[str] | None:
        """The set of valid codes, from the schema or its reference file, or None if any value goes."""
        if self.codes is not None:
            return frozenset(self.codes)
        if self.codes_file is not None:
            with open(REFERENCE_DIR / self.codes_file, newline="", encoding="utf-8") as fh:
                return frozenset(row[0] for i, row in enumerate(csv.reader(fh)) if i and row)
        return None

    @property
    def personal(self) -> bool:
        return self.role in PERSONAL_ROLES

    @property
    def dropped_on_sanitising(self) -> bool:
        """True if this column never reaches a depersonalised table (by its role, or ``free_text: drop``)."""
        return self.role in DROPPED_ON_SANITISING or self.free_text == "drop"

    @property
    def needs_free_text_rule(self) -> bool:
        """True if this is free text that a depersonalised feed must scrub, drop or map to codes.

        Free text is a string datafield that is not a location (address and postcode are rewritten), not a
        reference (checked by pattern), not dropped anyway (a name) and not validated against a code list.
        """
        handled = DROPPED_ON_SANITISING | REWRITTEN_ON_SANITISING | REFERENCE_ROLES
        return (self.type == "string" and self.role not in handled
                and self.codes is None and self.codes_file is None)


@dataclass(frozen=True)
class LocationFields:
    """Which datafields of a file hold its location, by role."""

    address: str | None = None
    postcode: str | None = None
    easting: str | None = None
    northing: str | None = None
    longitude: str | None = None
    latitude: str | None = None
    #: "incident" (where something happened: may be a park or a car park) or "home" (where a person lives:
    #: always addressable, never matched to the gazetteer of non-addressable places).
    kind: str = "incident"

    @property
    def columns(self) -> dict[str, str]:
        """The location datafields by role (address, postcode, easting...), leaving out those not given."""
        return {k: v for k, v in vars(self).items() if v and k != "kind"}


@dataclass(frozen=True)
class FeedFile:
    """One file of a supply (police recorded crime has three: offences, offenders, victims)."""

    name: str
    title: str
    description: str
    pattern: str
    table: str
    key: tuple[str, ...]
    datafields: tuple[Datafield, ...]
    location: LocationFields
    event_date: str | None = None
    links_to: dict[str, str] | None = None
    #: ``key: content`` in the schema: the file has no reference number (school exclusions; the victims file of
    #: 3.2.1), so each row is keyed by a hash of its loaded values plus an occurrence number (``row_key``).
    content_key: bool = False
    #: Further locations in the same file (the vehicle keeper's address, the patient's home), by name: each is
    #: sanitised to postcode level in place (sanitising.sanitise_other_location); the file's point is ``location``.
    other_locations: tuple[tuple[str, LocationFields], ...] = ()

    @property
    def location_columns(self) -> set[str]:
        """Every datafield that is an address or postcode of one of the file's locations."""
        return {c for _, loc in (("location", self.location), *self.other_locations)
                for role, c in loc.columns.items() if role in ("address", "postcode")}

    @property
    def table_key(self) -> tuple[str, ...]:
        """The columns that identify a row within a supply in its table (``row_key`` for a content key)."""
        return (CONTENT_KEY_COLUMN,) if self.content_key else self.key

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)

    def match(self, filename: str) -> str | None:
        """The supply period a file name belongs to, or None if the name is not this file's.

        The whole name must match: a pattern's ``$`` also matches before a final line break, and a name
        such as ``prc_offences_202609.csv.gpg`` followed by a newline is not the offences file.
        """
        m = self.regex.fullmatch(filename)
        return m.group("period") if m else None

    def field(self, name: str) -> Datafield:
        for f in self.datafields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.datafields]

    def by_role(self, role: str) -> list[Datafield]:
        return [f for f in self.datafields if f.role == role]

    @cached_property
    def age_pairs(self) -> tuple[tuple[str, str], ...]:
        """(date of birth, age) datafield names: each date of birth becomes its own age on sanitising.

        A date of birth names its age datafield with ``age_field``; a file with exactly one date of birth and one
        age pairs them without it. A date of birth with neither is left out here (the lint refuses it in a
        depersonalised feed: see ``_age_pairing_problems``).
        """
        dobs, ages = self.by_role("date_of_birth"), self.by_role("age")
        pairs = []
        for d in dobs:
            if d.age_field is not None:
                pairs.append((d.name, d.age_field))
            elif len(dobs) == 1 and len(ages) == 1:
                pairs.append((d.name, ages[0].name))
        return tuple(pairs)


@dataclass(frozen=True)
class Retention:
    """How long a feed keeps what it holds, in whole months after a supply's period ends (``retention:``;
    retention.py deletes what is past it, docs/GOVERNANCE.md)."""

    rows_months: int          # its rows in PostGIS, with the supply's ledger and catalogue records
    originals_months: int     # its original (encrypted) files in the partner's processed/
    reports_months: int       # its quality reports (the observatory's copy and the partner's)


#: The retention of a schema without a ``retention:`` block. Personalised feeds keep the least: the guidance has
#: personal data destroyed once used for its purpose (section 2.4.2.5, the DPA's fifth principle), and the longest
#: look-back it gives a product is 12 months (4.2.3: "data for the last 12 months"); depersonalised data serve
#: the three-year partnership plans and their trends (glossary: a three-year period), so five years.
RETENTION_DEFAULTS: Final = {"depersonalised": Retention(60, 3, 60), "personalised": Retention(12, 1, 12)}


@dataclass(frozen=True)
class Partner:
    id: str
    agency: str
    name: str


@dataclass(frozen=True)
class FeedSchema:
    """A partner feed: who sends it, how often, and every datafield of every file."""

    feed: str
    title: str
    guidance_section: str
    dataset_type: str
    partner: Partner
    schedule: str
    supply_cycle: str
    period_format: str
    household_threshold: int
    caveats: str
    tags: tuple[str, ...]
    files: tuple[FeedFile, ...]
    source_path: Path = field(compare=False, default=Path())
    #: Minimum k over quasi-identifiers below which publication is blocked (None: report only).
    min_k: int | None = None
    #: What a min_k breach does: withhold the offending "rows", or block the whole "supply".
    min_k_mode: str = "rows"
    #: How a postcode with too few households finds its target: "nearest" (Appendix 1's next nearest postcode)
    #: or "same_ward_first" (nearest in the same ward, then district, then anywhere).
    displacement: str = "nearest"
    #: Share of records that must get a point; below it the supply is marked amber (a warning, not green).
    geocode_min_rate: float = 0.95
    #: A supplied point further than this from the nearest reference postcode is outside the reference's
    #: coverage: flagged and not geocoded, never moved silently to a far postcode.
    coverage_max_m: float = 1000.0
    #: A re-sent period that would remove more than this share of the rows already loaded for it is held
    #: for an engineer's confirmation instead of replacing them.
    resend_max_loss: float = 0.5
    #: How long a run waits for its supply to be complete once it has started, in hours: for a scheduled (core)
    #: feed the supply window after the run's date; for an as-and-when feed, the rest of a supply after its first file.
    wait_hours: float = 24.0
    #: Days after its period ends by which a supply is due (``supply_cycle.due_days``); a supply not in by then is
    #: late: the feed's DAG raises a deadline alert and the report's currency counts it. None: no due date (an
    #: as-and-when feed with no agreed cycle).
    due_days: int | None = None
    #: How long its rows, originals and reports are kept (``retention:``; RETENTION_DEFAULTS when not given).
    retention: Retention | None = None

    def supply_due(self, period: str) -> datetime | None:
        """When the supply of ``period`` is due (UTC midnight ``due_days`` after its last day), or None."""
        bounds = period_bounds(self.period_format, period)
        if self.due_days is None or bounds is None:
            return None
        return datetime.combine(bounds[1] + timedelta(days=self.due_days + 1), time(0), tzinfo=timezone.utc)

    @property
    def on_arrival(self) -> bool:
        """Whether the feed's DAG is started by a supply's arrival (peripheral data, Table 2), not by a schedule."""
        return self.schedule == ON_ARRIVAL

    @property
    def personalised(self) -> bool:
        return self.dataset_type == "personalised"

    @property
    def db_schema(self) -> str:
        """The PostGIS schema a feed's tables live in: personal data is kept apart."""
        return "personal" if self.personalised else "depersonalised"

    def file(self, name: str) -> FeedFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def classify(self, filename: str) -> tuple[FeedFile, str] | None:
        """Which file of this feed a whole name is, with its period; None if it is none of them.

        The period is as written in the name: whether it is a valid period (ASCII digits that parse with
        ``period_format``) is intake's check, so that the partner is told exactly what is wrong.
        """
        for f in self.files:
            period = f.match(filename)
            if period is not None:
                return f, period
        return None


def valid_period(period_format: str, period: str) -> bool:
    """True if ``period`` is written exactly as ``period_format`` writes a date (ASCII digits only)."""
    if not (period.isascii() and period.isdigit()):
        return False
    try:
        return datetime.strptime(period, period_format).strftime(period_format) == period
    except ValueError:
        return False


def period_bounds(period_format: str, period: str) -> tuple[date, date] | None:
    """First and last day a period covers (a day, month or year by its format); None if that cannot be told."""
    if not valid_period(period_format, period) or re.search(r"%[UWVGuaAw]", period_format):
        return None
    start = datetime.strptime(period, period_format).date()
    if re.search(r"%[dj]", period_format):
        return start, start
    if re.search(r"%[mbB]", period_format):
        return start, start.replace(day=calendar.monthrange(start.year, start.month)[1])
    if re.search(r"%[Yy]", period_format):
        return start, start.replace(month=12, day=31)
    return None
