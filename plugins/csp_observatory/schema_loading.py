"""Reading a feed schema file (``include/schemas/<feed>.yaml``) into a :class:`schema.FeedSchema`, checked.

:func:`parse_schema` checks a schema (its datafields, keys, locations, supply cycle and retention) before anything
uses it, and raises :class:`schema.SchemaError` naming the problem; :func:`load_schema`, :func:`load_schemas` and
:func:`schema_for` read the files of ``include/schemas/``.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from csp_observatory.config import read_yaml
from csp_observatory.schema import (DATASET_TYPES, DROPPED_ON_SANITISING, FREE_TEXT_RULES, ON_ARRIVAL, REFERENCE_ROLES,
                                    RETENTION_DEFAULTS, REWRITTEN_ON_SANITISING, ROLES, SCHEMA_DIR, TYPES, Datafield,
                                    FeedFile, FeedSchema, LocationFields, Partner, Retention, SchemaError)


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


def _is_cron(expr: str) -> bool:
    """A five-field cron expression (or an Airflow preset such as @daily), checked by shape only."""
    if expr.startswith("@"):
        return expr in ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
    parts = expr.split()
    return len(parts) == 5 and all(re.fullmatch(r"[0-9*,/\-A-Za-z]+", p) for p in parts)


def load_schema(path: Path) -> FeedSchema:
    """Read one feed schema file."""
    with open(path, encoding="utf-8") as fh:
        return parse_schema(read_yaml(fh), path)


@lru_cache(maxsize=None)
def schema_for(feed: str) -> FeedSchema:
    """The schema of a feed, by its id (read once per process: each stage asks for it once per supply)."""
    for path in SCHEMA_DIR.glob("*.yaml"):
        schema = load_schema(path)
        if schema.feed == feed:
            return schema
    raise KeyError(f"no schema in {SCHEMA_DIR} has feed {feed!r}")


def load_schemas(directory: Path = SCHEMA_DIR) -> list[FeedSchema]:
    """Every feed schema in a directory, sorted by file name."""
    return [load_schema(p) for p in sorted(directory.glob("*.yaml"))]
