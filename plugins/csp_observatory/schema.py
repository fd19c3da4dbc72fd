"""Declarative feed schemas: one YAML file per partner feed in ``include/schemas/``.

A feed schema drives everything downstream: the DAG, the parsing and validation rules, the
sanitising rules, the PostGIS DDL and the documentation shown in the Airflow UI.
"""
from __future__ import annotations

import calendar
import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Final

import yaml

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
#: Roles that identify a record, not a person, and are checked against a pattern, never free text.
#: The schedule of a feed whose DAG a supply's arrival starts (an Airflow asset watched on the partner's inbox).
ON_ARRIVAL: Final = "on_arrival"
REFERENCE_ROLES: Final = frozenset({"reference_number", "link"})
#: A free-text datafield's rule in a depersonalised feed: ``scrub`` it (scrubbing.py) or ``drop`` the column.
FREE_TEXT_RULES: Final = frozenset({"scrub", "drop"})
DATASET_TYPES: Final = frozenset({"depersonalised", "personalised"})
#: The column holding a content key (``key: content``): see FeedFile.content_key and loading.content_keys.
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

    def _on_sanitising(self, f: FeedFile, d: Datafield) -> str:
        if self.personalised:
            return "kept (restricted)"
        if d.name in dict(f.age_pairs):
            return f"dropped (becomes `{dict(f.age_pairs)[d.name]}`)"
        if d.dropped_on_sanitising:
            return "dropped"
        if d.role in REWRITTEN_ON_SANITISING:
            return "rewritten (Appendix 1)"
        return "scrubbed" if d.free_text == "scrub" else "kept"

    def doc_md(self) -> str:
        """Markdown for the Airflow UI: source agency, datafields and caveats."""
        lines = [
            f"# {self.title}",
            "",
            f"*Guidance section {self.guidance_section}; {self.dataset_type} data.*",
            "",
            f"- **Source agency:** {self.partner.agency} ({self.partner.name}; SFTP account `{self.partner.id}`)",
            f"- **Supply cycle:** {self.supply_cycle}",
            "- **Started by:** " + (
                "the supply's arrival in the partner's inbox (asset `supply_" + self.feed + "`), waiting up to "
                f"{self.wait_hours:g} h for the rest of a supply" if self.on_arrival else
                f"the schedule `{self.schedule}` (UTC), waiting up to {self.wait_hours:g} h for the supply"),
            "- **Supply due:** " + ("no due date (as and when)" if self.due_days is None else
                                    f"{self.due_days} days after its period ends" + (
                                        " (no alert: the DAG runs only on arrival)" if self.on_arrival else
                                        "; a supply not loaded by then raises the late-supply deadline alert "
                                        "(Airflow's *Deadlines*, and `observatory.alerts`)")),
            f"- **Household threshold (Appendix 1):** {self.household_threshold}; a point in a smaller postcode "
            f"moves to the {DISPLACEMENT_TEXT[self.displacement]}",
            f"- **Schema file:** `include/schemas/{self.source_path.name}`",
            "",
            f"**Caveats:** {self.caveats}",
        ]
        for f in self.files:
            lines += ["", f"## {f.title} (`{f.pattern}` -> `{self.db_schema}.{f.table}`)", "",
                      f.description, "", f"Key: {'a hash of each row (no reference number)' if f.content_key else ', '.join(f.key)}",
                      "", "| datafield | meaning | type | required | role | in the guidance | on sanitising |",
                      "|---|---|---|---|---|---|---|"]
            for d in f.datafields:
                type_ = f"{d.type}, up to {d.future_days} days ahead" if d.future_days else d.type
                lines.append(f"| `{d.name}` | {d.label} | {type_} | {'yes' if d.required else ''} | {d.role} | "
                             f"{'yes' if d.guidance else 'no (optional)'} | {self._on_sanitising(f, d)} |")
        return "\n".join(lines)


def _datafield(raw: dict[str, Any], where: str) -> Datafield:
    unknown = set(raw) - {"name", "label", "type", "role", "required", "pattern", "codes",
                          "codes_file", "min", "max", "free_text", "guidance", "age_field", "future_days"}
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        d = Datafield(
            name=raw["name"], label=raw.get("label", raw["name"]), type=raw["type"], role=raw["role"],
            required=bool(raw.get("required", False)), pattern=raw.get("pattern"),
            codes=tuple(str(c) for c in raw["codes"]) if "codes" in raw else None,
            codes_file=raw.get("codes_file"), min=raw.get("min"), max=raw.get("max"),
            free_text=raw.get("free_text"), guidance=bool(raw.get("guidance", True)),
            age_field=raw.get("age_field"), future_days=raw.get("future_days", 0),
        )
    except KeyError as exc:
        raise SchemaError(f"{where}: datafield needs {exc}") from exc
    if d.age_field is not None and d.role != "date_of_birth":
        raise SchemaError(f"{where}: {d.name}: age_field names the age a date of birth becomes; "
                          f"a {d.role!r} datafield has none")
    if not isinstance(d.future_days, int) or isinstance(d.future_days, bool) or d.future_days < 0:
        raise SchemaError(f"{where}: {d.name}: future_days is a whole number of days, 0 or more")
    if d.future_days and (d.type != "date" or d.role == "date_of_birth"):
        # Nobody is born in the future: a date of birth after today is always a mistake.
        raise SchemaError(f"{where}: {d.name}: future_days applies to a date that may lie ahead (a release or a "
                          f"planned discharge), not to a {d.role if d.type == 'date' else d.type!r} datafield")
    if d.type not in TYPES:
        raise SchemaError(f"{where}: {d.name}: unknown type {d.type!r}")
    if d.role not in ROLES:
        raise SchemaError(f"{where}: {d.name}: unknown role {d.role!r}")
    if d.required and not d.guidance:
        # A file holding exactly the guidance's datafields must load: what the guidance does not list is optional.
        raise SchemaError(f"{where}: {d.name}: the guidance does not list it, so it cannot be required")
    if d.type == "code" and d.codes is None and d.codes_file is None:
        raise SchemaError(f"{where}: {d.name}: a code datafield needs codes or codes_file")
    if d.free_text is not None:
        if d.free_text not in FREE_TEXT_RULES:
            raise SchemaError(f"{where}: {d.name}: free_text must be one of {sorted(FREE_TEXT_RULES)}")
        if d.type != "string":
            raise SchemaError(f"{where}: {d.name}: free_text is a rule for string datafields, not {d.type!r}")
        if d.role in DROPPED_ON_SANITISING | REWRITTEN_ON_SANITISING | REFERENCE_ROLES:
            raise SchemaError(f"{where}: {d.name}: a {d.role!r} datafield is already dropped, rewritten or "
                              f"pattern-checked on sanitising; free_text does not apply")
        if d.free_text == "scrub" and not d.needs_free_text_rule:
            raise SchemaError(f"{where}: {d.name}: a datafield with a code list is not free text; "
                              f"give it codes or free_text: scrub, not both")
    return d


def _age_pairing_problems(f: FeedFile, personalised: bool) -> list[str]:
    """What is wrong with how a file's dates of birth become ages (empty when every one has its own age).

    An ``age_field`` must name an age datafield of the file, and no two dates of birth may feed one age. In a
    depersonalised file every date of birth must have its age: it is dropped on sanitising, and without a pair
    the person's age would be lost or written to a column the table does not have.
    """
    problems = []
    ages = {d.name for d in f.by_role("age")}
    for d in f.by_role("date_of_birth"):
        if d.age_field is not None and d.age_field not in ages:
            problems.append(f"{d.name}: age_field {d.age_field!r} is not an age datafield of the file")
    fed = [age for _, age in f.age_pairs]
    for age in sorted({a for a in fed if fed.count(a) > 1}):
        problems.append(f"several dates of birth feed {age}: give each its own age datafield")
    if not personalised:
        paired = {dob for dob, _ in f.age_pairs}
        unpaired = [d.name for d in f.by_role("date_of_birth") if d.name not in paired]
        if unpaired:
            problems.append(f"no age datafield for {', '.join(unpaired)}: a date of birth becomes an age on "
                            f"sanitising; name it with age_field (needed where a file has several people)")
    return problems


def _free_text_without_rule(files: list[FeedFile]) -> list[str]:
    """``file.datafield`` of every free-text datafield that has no sanitising rule (issue 6, part 7)."""
    return [f"{f.name}.{d.name}" for f in files for d in f.datafields
            if d.needs_free_text_rule and d.free_text is None]


def parse_schema(raw: dict[str, Any], source_path: Path = Path()) -> FeedSchema:
    """Build and check a FeedSchema from a parsed YAML document."""
    where = source_path.name or "schema"
    try:
        files = []
        for name, f in raw["files"].items():
            fields = tuple(_datafield(d, f"{where}:{name}") for d in f["datafields"])
            names = [d.name for d in fields]
            if len(set(names)) != len(names):
                raise SchemaError(f"{where}:{name}: datafield names repeat")
            loc = LocationFields(**(f.get("location") or {}))
            others = tuple((k, LocationFields(**v)) for k, v in (f.get("other_locations") or {}).items())
            for label, place in (("location", loc), *others):
                if place.kind not in ("incident", "home"):
                    raise SchemaError(f"{where}:{name}: {label}: location kind must be 'incident' or 'home'")
            for label, place in others:
                if not (place.address or place.postcode):
                    raise SchemaError(f"{where}:{name}: other location {label!r} needs an address or a postcode: "
                                      f"it is sanitised to postcode level")
            content_key = f["key"] == "content"
            key = () if content_key else tuple(f["key"])
            if not content_key and (isinstance(f["key"], str) or not key):
                raise SchemaError(f"{where}:{name}: key must be a list of datafields, or 'content' for a file with "
                                  f"no reference number")
            for ref in [*key, *loc.columns.values(), *(c for _, o in others for c in o.columns.values()),
                        f.get("event_date")]:
                if ref and ref not in names:
                    raise SchemaError(f"{where}:{name}: {ref!r} is not a datafield")
            links = f.get("links_to")
            if links is not None and (set(links) != {"file", "column"} or links["column"] not in names):
                raise SchemaError(f"{where}:{name}: links_to needs 'file' and 'column' (a datafield of this file)")
            if "(?P<period>" not in f["pattern"]:
                raise SchemaError(f"{where}:{name}: pattern needs a (?P<period>...) group")
            files.append(FeedFile(
                name=name, title=f.get("title", name), description=f.get("description", ""),
                pattern=f["pattern"], table=f["table"], key=key, content_key=content_key, datafields=fields,
                location=loc, other_locations=others, event_date=f.get("event_date"), links_to=f.get("links_to"),
            ))
        sanitising = raw.get("sanitising") or {}
        schema = FeedSchema(
            feed=raw["feed"], title=raw["title"], guidance_section=str(raw["guidance_section"]),
            dataset_type=raw["dataset_type"], partner=Partner(**raw["partner"]),
            schedule=raw["supply_cycle"]["schedule"], supply_cycle=raw["supply_cycle"]["description"],
            period_format=raw["supply_cycle"].get("period_format", "%Y%m"),
            wait_hours=float(raw["supply_cycle"].get("wait_hours", 24)),
            due_days=_due_days(raw["supply_cycle"]),
            household_threshold=int(sanitising.get("household_threshold", 4)),
            min_k=sanitising.get("min_k"), min_k_mode=sanitising.get("min_k_mode", "rows"),
            displacement=str(sanitising.get("displacement", "nearest")),
            geocode_min_rate=float((raw.get("quality") or {}).get("geocode_min_rate", 0.95)),
            coverage_max_m=float((raw.get("quality") or {}).get("coverage_max_m", 1000.0)),
            resend_max_loss=float((raw.get("quality") or {}).get("resend_max_loss", 0.5)),
            caveats=raw.get("caveats", ""), tags=tuple(raw.get("tags", ())), files=tuple(files),
            source_path=source_path, retention=_retention(raw, where),
        )
    except KeyError as exc:
        raise SchemaError(f"{where}: missing {exc}") from exc
    if schema.dataset_type not in DATASET_TYPES:
        raise SchemaError(f"{where}: dataset_type must be one of {sorted(DATASET_TYPES)}")
    if not schema.personalised:
        named = [f"{f.name}.{d.name}" for f in schema.files for d in f.datafields if d.required and d.personal]
        if named:
            raise SchemaError(f"{where}: a depersonalised feed never asks for names or dates of birth: "
                              f"{', '.join(named)} cannot be required")
    if not schema.personalised:
        # The lint: in a depersonalised file every personal or location datafield is dropped or sanitised by a rule.
        uncovered = [f"{f.name}.{d.name}" for f in schema.files for d in f.datafields
                     if d.role in ("address", "postcode") and d.name not in f.location_columns]
        if uncovered:
            raise SchemaError(f"{where}: no sanitising rule covers {', '.join(uncovered)}: name each address and "
                              f"postcode in the file's location or other_locations")
    for f in schema.files:
        pairing = _age_pairing_problems(f, schema.personalised)
        if pairing:
            raise SchemaError(f"{where}:{f.name}: {'; '.join(pairing)}")
    unruled = [] if schema.personalised else _free_text_without_rule(list(schema.files))
    if unruled:
        # Partners type names, addresses and dates of birth into free text: none may reach analysts unchecked.
        raise SchemaError(f"{where}: free-text datafields of a depersonalised feed need a rule: "
                          f"free_text: scrub, free_text: drop, or codes/codes_file ({', '.join(unruled)})")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", schema.feed):
        raise SchemaError(f"{where}: feed id must be snake_case")
    if schema.displacement not in ("nearest", "same_ward_first"):
        raise SchemaError(f"{where}: sanitising.displacement must be 'nearest' or 'same_ward_first'")
    if schema.min_k_mode not in ("rows", "supply"):
        raise SchemaError(f"{where}: sanitising.min_k_mode must be 'rows' or 'supply'")
    if not 0.0 <= schema.geocode_min_rate <= 1.0 or not 0.0 <= schema.resend_max_loss <= 1.0:
        raise SchemaError(f"{where}: quality.geocode_min_rate and quality.resend_max_loss are shares from 0 to 1")
    if schema.coverage_max_m <= 0:
        raise SchemaError(f"{where}: quality.coverage_max_m must be positive")
    if not schema.on_arrival and not _is_cron(schema.schedule):
        raise SchemaError(f"{where}: supply_cycle.schedule must be a cron expression (minute hour day month weekday) "
                          f"or {ON_ARRIVAL!r}")
    if schema.wait_hours <= 0:
        raise SchemaError(f"{where}: supply_cycle.wait_hours must be positive")
    if schema.due_days is not None and schema.due_days < 0:
        raise SchemaError(f"{where}: supply_cycle.due_days must be 0 or more")
    if schema.household_threshold < 1:
        raise SchemaError(f"{where}: household_threshold must be at least 1")
    return schema


def _retention(raw: dict[str, Any], where: str) -> Retention:
    """``retention:`` over the dataset type's defaults; a personalised feed may keep nothing longer than them."""
    base = RETENTION_DEFAULTS.get(raw["dataset_type"], RETENTION_DEFAULTS["depersonalised"])
    given = raw.get("retention") or {}
    if not isinstance(given, dict) or set(given) - {"rows_months", "originals_months", "reports_months"}:
        raise SchemaError(f"{where}: retention takes rows_months, originals_months and reports_months")
    try:
        kept = Retention(**{k: int(given.get(k, getattr(base, k))) for k in ("rows_months", "originals_months",
                                                                           "reports_months")})
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: retention periods are whole months") from None
    if kept.rows_months < 1 or kept.originals_months < 0 or kept.reports_months < 1:
        raise SchemaError(f"{where}: retention keeps rows and reports at least 1 month, originals 0 or more")
    if raw["dataset_type"] == "personalised" and any(getattr(kept, k) > getattr(base, k) for k in given):
        raise SchemaError(f"{where}: a personalised feed keeps nothing longer than {base} (guidance 2.4.2.5)")
    return kept


def _due_days(cycle: dict[str, Any]) -> int | None:
    """``supply_cycle.due_days``; by default a scheduled (core) feed's supply is due when its run stops waiting
    (``wait_hours`` after the period, rounded up to days), and an as-and-when feed has no due date."""
    if "due_days" in cycle:
        return None if cycle["due_days"] is None else int(cycle["due_days"])
    if cycle["schedule"] == ON_ARRIVAL:
        return None
    return -(-int(float(cycle.get("wait_hours", 24))) // 24)


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



def _is_cron(expr: str) -> bool:
    """A five-field cron expression (or an Airflow preset such as @daily), checked by shape only."""
    if expr.startswith("@"):
        return expr in ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
    parts = expr.split()
    return len(parts) == 5 and all(re.fullmatch(r"[0-9*,/\-A-Za-z]+", p) for p in parts)


def load_schema(path: Path) -> FeedSchema:
    """Read one feed schema file."""
    with open(path, encoding="utf-8") as fh:
        return parse_schema(yaml.safe_load(fh), path)


@lru_cache(maxsize=None)
def schema_for(feed: str) -> FeedSchema:
    """The schema of a feed, by its id (read once per process: every stage asks for it, file by file)."""
    for path in SCHEMA_DIR.glob("*.yaml"):
        schema = load_schema(path)
        if schema.feed == feed:
            return schema
    raise KeyError(f"no schema in {SCHEMA_DIR} has feed {feed!r}")


def load_schemas(directory: Path = SCHEMA_DIR) -> list[FeedSchema]:
    """Every feed schema in a directory, sorted by file name."""
    return [load_schema(p) for p in sorted(directory.glob("*.yaml"))]
