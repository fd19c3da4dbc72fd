"""Supply metadata (guidance section 3.4): the partner's own description of a supply, checked against the data.

A supply may carry one metadata file, encrypted and signed like its data files and named after the feed's files:
``prc_metadata_202609.yaml.gpg`` for police recorded crime (:func:`metadata_pattern`). The first supply of a feed
must carry one (:func:`first_supply_needs_metadata`). It is YAML written by hand (JSON is accepted too) and holds
what section 3.4 lists: the agency, the supplier and a contact, the dataset, the period covered, the file format,
the number of records and the datafields of each file (with explanations where a name is not self-explanatory),
the date supplied and the caveats on use; and, as the guidance asks "from the outset", the coding systems used and
how any coordinates were made. ``include/examples/police_recorded_crime_metadata.yaml`` is a complete example and
``docs/PARTNERS.md`` (*Supply metadata*) documents it for partners.

:func:`parse_metadata` reads a file into a :class:`SupplyMetadata`, or raises :class:`MetadataError` listing every
problem in a partner's words (naming keys and datafields, never quoting a value). :func:`check_against` compares it
with what arrived (record counts, period, datafields against the file headers and the schema) and returns
:class:`Mismatch` es for the report. The catalogue (:func:`ensure_catalogue`, :func:`record`) keeps every supply's
metadata in ``observatory.supply_metadata`` (engineers) and the latest caveats per feed in the view
``reference.feed_caveats`` (analysts read that, never the catalogue: the supplier's contact is a person's details).
The caveats are shown where people meet the data: the tables' and columns' comments (:func:`apply_comments`, which
QGIS shows), the DAG's docs (:func:`doc_md_section`) and the quality report (:func:`report_section`).

Functions that take a connection never commit: the load's transaction commits (or rolls back) with the data.
``pipeline.py`` wires it: intake takes the file with its supply, the parse stage checks it, the load catalogues
it and applies the comments in its own transaction, then writes the feed's caveats section to a small cache
(:func:`write_dag_doc`, ``<reports_dir>/<feed>/supply_metadata.md``) that :func:`dag_doc` reads when the DAG file
is parsed, since no database may be touched then. Importing this module does not import pandas.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, Mapping

import yaml
from psycopg2 import sql

from csp_observatory import ddl
from csp_observatory.schema import POINT_ROLES, FeedFile, FeedSchema, period_bounds, valid_period  # noqa: F401  (re-exported)

#: Largest metadata file read, in bytes (a hand-written file is a few kilobytes).
MAX_BYTES: Final = 1_000_000
CATALOGUE: Final = ("observatory", "supply_metadata")
CAVEATS_VIEW: Final = ("reference", "feed_caveats")
#: Bumped when the view's definition changes, so :func:`ensure_catalogue` replaces it.
CATALOGUE_VERSION: Final = "supply-metadata v1"

TOP_LEVEL: Final = ("agency", "supplier", "dataset", "period", "file_format", "date_supplied", "files", "caveats",
                    "coding_systems", "geographic_method", "conditions_of_use")
SUPPLIER_KEYS: Final = ("name", "contact")
FILE_KEYS: Final = ("records", "datafields")
PERIOD_KEYS: Final = ("start", "end")

#: Mismatch kinds (Mismatch.kind), in the order a report lists them.
FEED: Final = "feed"
PERIOD: Final = "period"
FILE_NOT_DESCRIBED: Final = "file_not_described"
FILE_NOT_RECEIVED: Final = "file_not_received"
RECORD_COUNT: Final = "record_count"
DATAFIELD_NOT_IN_FILE: Final = "datafield_not_in_file"
DATAFIELD_NOT_LISTED: Final = "datafield_not_listed"
DATAFIELD_NOT_IN_SCHEMA: Final = "datafield_not_in_schema"
REQUIRED_DATAFIELD_NOT_LISTED: Final = "required_datafield_not_listed"
KINDS: Final = (FEED, PERIOD, FILE_NOT_DESCRIBED, FILE_NOT_RECEIVED, RECORD_COUNT, DATAFIELD_NOT_IN_FILE,
                DATAFIELD_NOT_LISTED, DATAFIELD_NOT_IN_SCHEMA, REQUIRED_DATAFIELD_NOT_LISTED)

#: A name that may be quoted back to a partner (a key or a datafield name); anything else is described, not shown.
_SHOWABLE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _./()-]{0,63}")
_PERIOD_WORDS: Final = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%y": "YY", "%j": "DDD"}


def header_key(text: str) -> str:
    """:func:`parsing.header_key`, imported on first use: parsing loads pandas, and the DAG file imports this module
    at parse time (:func:`dag_doc`), when every second counts."""
    from csp_observatory.parsing import header_key as key

    return key(text)


class MetadataError(ValueError):
    """A metadata file that cannot be used; ``problems`` lists each problem in a partner's words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("The metadata file cannot be used: " + "; ".join(self.problems) + ".")


@dataclass(frozen=True)
class Supplier:
    """Who supplied the data: a team or person, and how to reach them (personal data: engineers only)."""

    name: str
    contact: str


@dataclass(frozen=True)
class FileMetadata:
    """What the partner says of one file of the supply."""

    file: str                                        # the schema's name for it: offences, offenders, victims
    records: int
    datafields: tuple[tuple[str, str | None], ...]   # (datafield name as written, explanation or None)

    @property
    def field_names(self) -> list[str]:
        return [name for name, _ in self.datafields]

    @property
    def explanations(self) -> dict[str, str]:
        """Explanations by normalised datafield name (as :func:`parsing.header_key` reads a header)."""
        return {header_key(name): text for name, text in self.datafields if text}


@dataclass(frozen=True)
class SupplyMetadata:
    """A parsed metadata file (section 3.4), normalised; ``feed`` is the feed it was checked against."""

    feed: str
    dataset: str
    agency: str
    supplier: Supplier
    period: str | None          # the supply period (as in the file names); None if start-end is not one period
    period_start: date | None
    period_end: date | None
    file_format: str
    date_supplied: date
    files: tuple[FileMetadata, ...]
    caveats: tuple[str, ...]
    coding_systems: dict[str, str | dict[str, str]] = field(default_factory=dict)
    geographic_method: str | None = None
    conditions_of_use: str | None = None

    def file(self, name: str) -> FileMetadata:
        for f in self.files:
            if f.file == name:
                return f
        raise KeyError(name)

    def to_document(self) -> dict[str, Any]:
        """A JSON-able dict (the catalogue's ``document``); :meth:`from_document` reads it back."""
        return {
            "feed": self.feed, "dataset": self.dataset, "agency": self.agency,
            "supplier": {"name": self.supplier.name, "contact": self.supplier.contact},
            "period": self.period,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
            "file_format": self.file_format, "date_supplied": self.date_supplied.isoformat(),
            # lists, not objects, wherever order matters: jsonb does not keep the order of an object's keys
            "files": [{"file": f.file, "records": f.records,
                       "datafields": [{"name": n, "explanation": e} for n, e in f.datafields]} for f in self.files],
            "caveats": list(self.caveats),
            "coding_systems": [{"datafield": name, "codes": [{"code": c, "meaning": m} for c, m in system.items()]}
                               if isinstance(system, dict) else {"datafield": name, "system": system}
                               for name, system in self.coding_systems.items()],
            "geographic_method": self.geographic_method, "conditions_of_use": self.conditions_of_use,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SupplyMetadata:
        """The inverse of :meth:`to_document`."""
        def day(v: str | None) -> date | None:
            return date.fromisoformat(v) if v else None
        return cls(
            feed=doc["feed"], dataset=doc["dataset"], agency=doc["agency"],
            supplier=Supplier(**doc["supplier"]), period=doc.get("period"),
            period_start=day(doc.get("period_start")), period_end=day(doc.get("period_end")),
            file_format=doc["file_format"], date_supplied=date.fromisoformat(doc["date_supplied"]),
            files=tuple(FileMetadata(f["file"], int(f["records"]),
                                     tuple((d["name"], d.get("explanation")) for d in f["datafields"]))
                        for f in doc["files"]),
            caveats=tuple(doc.get("caveats") or ()),
            coding_systems={c["datafield"]: {x["code"]: x["meaning"] for x in c["codes"]} if "codes" in c
                            else c["system"] for c in doc.get("coding_systems") or ()},
            geographic_method=doc.get("geographic_method"), conditions_of_use=doc.get("conditions_of_use"),
        )


@dataclass(frozen=True)
class Mismatch:
    """One difference between the metadata and the supply, with a plain message for the report."""

    kind: str
    message: str
    file: str | None = None
    datafield: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "file": self.file, "datafield": self.datafield}


# --- the file name -------------------------------------------------------------------------------------------------

def _period_group(pattern: str) -> str | None:
    """The sub-pattern of a file pattern's ``(?P<period>...)`` group, brackets balanced; None if there is none."""
    start = pattern.find("(?P<period>")
    if start < 0:
        return None
    i, depth, body = start + len("(?P<period>"), 1, start + len("(?P<period>")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0:
            return pattern[body:i]
        i += 1
    return None


def _literal_prefix(pattern: str) -> str | None:
    """The plain text a file pattern starts with before its period (``prc_offences_``), or None if not plain."""
    m = re.match(r"\^?((?:[A-Za-z0-9_-]|\\[-_.])*)\(\?P<period>", pattern)
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else None


def metadata_prefix(schema: FeedSchema) -> str:
    """What a feed's metadata file name starts with: the text its files' names share (``prc``), else the feed id."""
    prefixes = [_literal_prefix(f.pattern) for f in schema.files]
    if not prefixes or any(p is None for p in prefixes):
        return schema.feed
    common = prefixes[0] or ""
    for p in prefixes[1:]:
        while not (p or "").startswith(common):
            common = common[:-1]
    if len(prefixes) > 1:
        cut = max(common.rfind("_"), common.rfind("-"))
        common = common[:cut] if cut > 0 else ""
    common = common.rstrip("_-")
    return common or schema.feed


def metadata_pattern(schema: FeedSchema) -> str:
    """The regular expression of a feed's metadata file names, with a ``period`` group like its data files'.

    ``^prc_metadata_(?P<period>\\d{6})\\.(?:yaml|yml|json)\\.gpg$`` for police recorded crime; match it with
    ``re.fullmatch`` (as ``FeedFile.match`` does). The period's sub-pattern is the first file's.
    """
    group = _period_group(schema.files[0].pattern) if schema.files else None
    return (rf"^{re.escape(metadata_prefix(schema))}_metadata_(?P<period>{group or r'[0-9]+'})"
            r"\.(?:yaml|yml|json)\.gpg$")


def metadata_file_name(schema: FeedSchema, period: str) -> str:
    """The name a partner gives a period's metadata file: ``prc_metadata_202609.yaml.gpg``."""
    return f"{metadata_prefix(schema)}_metadata_{period}.yaml.gpg"


def match_metadata(schema: FeedSchema, filename: str) -> str | None:
    """The period of a metadata file of this feed (the whole name must match), or None if it is not one."""
    m = re.fullmatch(metadata_pattern(schema), filename)
    return m.group("period") if m else None


# --- periods -------------------------------------------------------------------------------------------------------

def _period_words(period_format: str) -> str:
    return re.sub(r"%[A-Za-z]", lambda m: _PERIOD_WORDS.get(m.group(0), m.group(0)), period_format)


def _period_of(period_format: str, start: date, end: date) -> str | None:
    """The period id whose bounds are exactly start-end, or None."""
    period = start.strftime(period_format)
    return period if period_bounds(period_format, period) == (start, end) else None


# --- parsing -------------------------------------------------------------------------------------------------------

def _shown(name: Any) -> str:
    """A key or datafield name as it may be quoted to a partner; anything else is described, never shown."""
    text = str(name).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    return text if _SHOWABLE.fullmatch(text) else "(a name that cannot be shown)"


def _load(text: str | bytes) -> Any:
    """The document in ``text``: JSON if it looks like JSON, else YAML (a superset); anchors and aliases refused."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise MetadataError([f"the file is larger than {MAX_BYTES // 1000} kB; a metadata file is a few kB of "
                                 f"text"])
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise MetadataError(["the file is not UTF-8 text: save it as UTF-8"]) from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise MetadataError([f"the file is larger than {MAX_BYTES // 1000} kB; a metadata file is a few kB of text"])
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise MetadataError([f"the file is not valid JSON (line {exc.lineno}, column {exc.colno}): check "
                                 f"the quotes, commas and brackets"]) from None
    try:
        for event in yaml.parse(stripped, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise MetadataError(["YAML anchors and aliases (& and *) are not accepted: write each value out"])
        return yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise MetadataError([f"the file is not valid YAML{where}: check the indentation (spaces, not tabs), that "
                             f"each key ends with a colon, and that text with a colon or # is in quotes"]) from None


def _text(raw: Mapping[str, Any], key: str, where: str, what: str, problems: list[str],
          required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"{where}{key} is missing ({what})")
        return None
    if isinstance(value, (dict, list, bool)):
        problems.append(f"{where}{key} must be text ({what})")
        return None
    return " ".join(str(value).split())


def _day(value: Any, where: str, problems: list[str]) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    problems.append(f"{where} must be a date written YYYY-MM-DD")
    return None


def _unknown(raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str, problems: list[str]) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        problems.append(f"{where}unknown key(s) {', '.join(sorted(_shown(k) for k in unknown))}; the keys are "
                        f"{', '.join(allowed)}")


def _period(raw: Any, schema: FeedSchema, problems: list[str]) -> tuple[str | None, date | None, date | None]:
    fmt = schema.period_format
    words, example = _period_words(fmt), date(2026, 9, 1).strftime(fmt)
    hint = f"the period as in the file names ({words}, for example {example}) or its start and end dates"
    if raw is None:
        problems.append(f"period is missing (time period covered: {hint})")
        return None, None, None
    if isinstance(raw, dict):
        _unknown(raw, PERIOD_KEYS, "period: ", problems)
        if "start" not in raw or "end" not in raw:
            problems.append("period needs both start and end (dates written YYYY-MM-DD)")
            return None, None, None
        start = _day(raw["start"], "period: start", problems)
        end = _day(raw["end"], "period: end", problems)
        if start is None or end is None:
            return None, None, None
        if start > end:
            problems.append("period: start is after end")
            return None, None, None
        return _period_of(fmt, start, end), start, end
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not valid_period(fmt, str(raw).strip()):
        problems.append(f"period must be {hint}")
        return None, None, None
    period = str(raw).strip()
    bounds = period_bounds(fmt, period)
    return period, *(bounds or (None, None))


def _records(raw: Any, where: str, problems: list[str]) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\d{1,3}(?:[, ]?\d{3})*|\d+", raw.strip()):
        return int(re.sub(r"[, ]", "", raw))
    if raw is None:
        problems.append(f"{where}records is missing (the number of records in the file)")
    else:
        problems.append(f"{where}records must be a whole number (the number of records in the file)")
    return None


def _datafields(raw: Any, where: str, problems: list[str]) -> tuple[tuple[str, str | None], ...] | None:
    """A file's datafields from a mapping (name: explanation) or a list (names, or name: explanation items)."""
    if raw is None:
        problems.append(f"{where}datafields is missing (the list of datafields in the file)")
        return None
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and set(item) <= {"name", "explanation"} and "name" in item:
                items.append((item["name"], item.get("explanation")))
            elif isinstance(item, dict) and len(item) == 1:
                items.append(next(iter(item.items())))
            else:
                items.append((item, None))
    else:
        problems.append(f"{where}datafields must be a list of datafield names, each with its explanation if any")
        return None
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    before = len(problems)
    for name, explanation in items:
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}datafields: each datafield name must be text (put names such as yes, no, on "
                            f"or numbers in quotes)")
            continue
        if isinstance(explanation, (dict, list)) or isinstance(explanation, bool):
            problems.append(f"{where}datafields: the explanation of {_shown(name)} must be text")
            continue
        key = header_key(name)
        if key in seen:
            problems.append(f"{where}datafields: {_shown(name)} is listed more than once")
            continue
        seen.add(key)
        text = " ".join(str(explanation).split()) if explanation is not None else ""
        out.append((name.strip(), text or None))
    if not out and len(problems) == before:
        problems.append(f"{where}datafields is empty (list the datafields in the file)")
    return tuple(out)


def _files(raw: Any, schema: FeedSchema, problems: list[str]) -> tuple[FileMetadata, ...]:
    names = ", ".join(f.name for f in schema.files)
    if not isinstance(raw, dict) or not raw:
        problems.append(f"files is missing (for each file of the supply, {names}: its number of records and its "
                        f"datafields)")
        return ()
    by_file: dict[str, Any] = {}
    for key, entry in raw.items():
        feed_file = None
        if isinstance(key, str):
            feed_file = next((f for f in schema.files if f.name == key.strip()), None)
            if feed_file is None and (hit := schema.classify(key.strip())) is not None:
                feed_file = hit[0]     # keyed by the file's own name (prc_offences_202609.csv.gpg)
        if feed_file is None:
            problems.append(f"files: {_shown(key)} is not a file of {schema.title}; its files are {names}")
            continue
        if feed_file.name in by_file:
            problems.append(f"files: the {feed_file.name} file is described twice")
            continue
        by_file[feed_file.name] = entry
    out = []
    for f in schema.files:
        if f.name not in by_file:
            problems.append(f"files: {f.name} is missing (its number of records and its datafields)")
            continue
        entry, where = by_file[f.name], f"files: {f.name}: "
        if not isinstance(entry, dict):
            problems.append(f"{where}must give records and datafields")
            continue
        _unknown(entry, FILE_KEYS, where, problems)
        records = _records(entry.get("records"), where, problems)
        fields = _datafields(entry.get("datafields"), where, problems)
        if records is not None and fields is not None:
            out.append(FileMetadata(f.name, records, fields))
    return tuple(out)


def _caveats(raw: Any, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        problems.append("caveats is missing (caveats and considerations on the use of the dataset; write "
                        "caveats: [] if there are none)")
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool)
                                              for c in items):
        problems.append("caveats must be a list of sentences (or one sentence)")
        return ()
    return tuple(t for c in items if (t := " ".join(str(c).split())))


def _coding_systems(raw: Any, problems: list[str]) -> dict[str, str | dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("coding_systems must map a datafield name to its coding system (text, or code: meaning)")
        return {}
    out: dict[str, str | dict[str, str]] = {}
    for name, system in raw.items():
        if not isinstance(name, str):
            problems.append("coding_systems: each key must be a datafield name")
        elif isinstance(system, dict) and all(not isinstance(v, (dict, list)) for v in system.values()):
            out[name.strip()] = {str(k): " ".join(str(v).split()) for k, v in system.items()}
        elif isinstance(system, (str, int, float)) and not isinstance(system, bool):
            out[name.strip()] = " ".join(str(system).split())
        else:
            problems.append(f"coding_systems: {_shown(name)} must be text or a list of code: meaning")
    return out


def _names_dataset(schema: FeedSchema, dataset: str) -> bool:
    """True if ``dataset`` names this feed: its id or its title (any case, spaces and hyphens as underscores)."""
    return header_key(dataset) in {header_key(schema.feed), header_key(schema.title)}


def parse_metadata(text: str | bytes, schema: FeedSchema) -> SupplyMetadata:
    """Read a decrypted metadata file of ``schema``'s feed (text, or UTF-8 bytes); raise :class:`MetadataError`
    listing every problem."""
    raw = _load(text)
    if not isinstance(raw, dict):
        raise MetadataError(["the file must be a set of keys and values (agency:, supplier:, dataset:, ...), as in "
                             "the example in the partner guide"])
    problems: list[str] = []
    _unknown(raw, TOP_LEVEL, "", problems)
    agency = _text(raw, "agency", "", "name of the agency supplying the information", problems)
    supplier_raw = raw.get("supplier")
    supplier_name = supplier_contact = None
    if isinstance(supplier_raw, dict):
        _unknown(supplier_raw, SUPPLIER_KEYS, "supplier: ", problems)
        supplier_name = _text(supplier_raw, "name", "supplier: ", "name of the supplier", problems)
        supplier_contact = _text(supplier_raw, "contact", "supplier: ", "contact details of the supplier", problems)
    elif supplier_raw is None:
        problems.append("supplier is missing (name and contact details of the supplier: supplier: with name: and "
                        "contact:)")
    else:
        problems.append("supplier must give name: and contact: on their own lines under supplier:")
    dataset = _text(raw, "dataset", "", f"dataset name: {schema.feed} or {schema.title}", problems)
    if dataset is not None and not _names_dataset(schema, dataset):
        problems.append(f"dataset names another dataset: this is the metadata of {schema.title} "
                        f"(dataset: {schema.feed})")
    period, start, end = _period(raw.get("period"), schema, problems)
    file_format = _text(raw, "file_format", "", "file format, for example CSV (UTF-8, header row)", problems)
    supplied = None
    if raw.get("date_supplied") is None:
        problems.append("date_supplied is missing (date supplied, YYYY-MM-DD)")
    else:
        supplied = _day(raw["date_supplied"], "date_supplied", problems)
    files = _files(raw.get("files"), schema, problems)
    caveats = _caveats(raw.get("caveats"), problems)
    coding = _coding_systems(raw.get("coding_systems"), problems)
    geo = _text(raw, "geographic_method", "", "", problems, required=False)
    listed = {header_key(n) for f in files for n in f.field_names}
    coordinates = sorted({d.name for f in schema.files for d in f.datafields
                          if d.role in POINT_ROLES and header_key(d.name) in listed})
    if geo is None and coordinates:
        problems.append(f"geographic_method is missing: the files list coordinates ({', '.join(coordinates)}), so "
                        f"say how they were made (for example geocoded from the address by the force's GIS)")
    conditions = _text(raw, "conditions_of_use", "", "", problems, required=False)
    if problems:
        raise MetadataError(problems)
    return SupplyMetadata(
        feed=schema.feed, dataset=dataset or "", agency=agency or "",
        supplier=Supplier(supplier_name or "", supplier_contact or ""), period=period, period_start=start,
        period_end=end, file_format=file_format or "", date_supplied=supplied or date.min, files=files,
        caveats=caveats, coding_systems=coding, geographic_method=geo, conditions_of_use=conditions)


# --- checking against the supply ---------------------------------------------------------------------------------

def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _period_text(schema: FeedSchema, period: str) -> str:
    bounds = period_bounds(schema.period_format, period)
    return f"{period} ({bounds[0]:%d %B %Y} to {bounds[1]:%d %B %Y})" if bounds else period


def check_against(metadata: SupplyMetadata, schema: FeedSchema, period: str, row_counts: dict[str, int],
                  headers: dict[str, list[str]]) -> list[Mismatch]:
    """What the metadata says that the supply does not bear out: feed, period, files, record counts, datafields.

    ``row_counts`` and ``headers`` are by the schema's file name (offences...): the data rows and the header cells
    of each file received. Datafield names compare as the parser reads headers (any case, spaces as underscores).
    """
    out: list[Mismatch] = []
    if metadata.feed != schema.feed or not _names_dataset(schema, metadata.dataset):
        out.append(Mismatch(FEED, f"The metadata is for another dataset, not {schema.title}."))
    if metadata.period != period:
        if metadata.period is not None:
            said = _period_text(schema, metadata.period)
        elif metadata.period_start and metadata.period_end:
            said = f"{metadata.period_start:%d %B %Y} to {metadata.period_end:%d %B %Y}"
        else:
            said = "another period"
        out.append(Mismatch(PERIOD, f"The metadata covers {said}, but the supply is for "
                                    f"{_period_text(schema, period)}."))
    described = {f.file for f in metadata.files}
    received = set(row_counts) | set(headers)
    for f in schema.files:
        if f.name in received and f.name not in described:
            out.append(Mismatch(FILE_NOT_DESCRIBED, f"The {f.name} file arrived but the metadata does not describe "
                                                    f"it.", file=f.name))
    for fm in metadata.files:
        if fm.file not in received:
            out.append(Mismatch(FILE_NOT_RECEIVED, f"The metadata describes the {fm.file} file, which did not "
                                                   f"arrive with this supply.", file=fm.file))
            continue
        rows = row_counts.get(fm.file)
        if rows is not None and rows != fm.records:
            out.append(Mismatch(RECORD_COUNT, f"The metadata says the {fm.file} file has "
                                              f"{_count(fm.records, 'record')}; it has {_count(rows, 'row')} of data.",
                                file=fm.file))
        listed = {header_key(n): n for n in fm.field_names}
        try:
            feed_file: FeedFile | None = schema.file(fm.file)
        except KeyError:
            feed_file = None
        if fm.file in headers:
            header = {header_key(c): c for c in headers[fm.file] if c.strip()}
            for key, name in listed.items():
                if key not in header:
                    out.append(Mismatch(DATAFIELD_NOT_IN_FILE, f"The metadata lists {_shown(name)} for the {fm.file} "
                                                               f"file, but the file has no such column.",
                                        file=fm.file, datafield=_shown(name)))
            for key, cell in header.items():
                if key not in listed:
                    out.append(Mismatch(DATAFIELD_NOT_LISTED, f"The {fm.file} file has the column {_shown(cell)}, "
                                                              f"which the metadata does not list.",
                                        file=fm.file, datafield=_shown(cell)))
        if feed_file is not None:
            in_schema = {header_key(n) for n in feed_file.field_names}
            for key, name in listed.items():
                if key not in in_schema:
                    out.append(Mismatch(DATAFIELD_NOT_IN_SCHEMA, f"The metadata lists {_shown(name)} for the "
                                                                 f"{fm.file} file, which is not a datafield of "
                                                                 f"{schema.title}.",
                                        file=fm.file, datafield=_shown(name)))
            for d in feed_file.datafields:
                if d.required and header_key(d.name) not in listed:
                    out.append(Mismatch(REQUIRED_DATAFIELD_NOT_LISTED, f"The metadata does not list {d.name}, a "
                                                                       f"required datafield of the {fm.file} file.",
                                        file=fm.file, datafield=d.name))
    return out


# --- the catalogue -------------------------------------------------------------------------------------------------

def _lock(cur: Any) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("csp_observatory.metadata.catalogue",))


def _existing_roles(cur: Any, roles: tuple[str, ...]) -> list[str]:
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname", (list(roles),))
    return [r[0] for r in cur.fetchall()]


def ensure_catalogue(conn: Any) -> None:
    """The catalogue table and the caveats view, with their grants; safe to run again; no commit.

    Run after ``ddl.ensure_database`` (it makes the schemas and roles). Engineers read the catalogue; analysts
    read only ``reference.feed_caveats`` (the catalogue holds the supplier's contact details).
    """
    I = sql.Identifier  # noqa: E741
    table, view = I(*CATALOGUE), I(*CAVEATS_VIEW)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('observatory') IS NOT NULL AND to_regnamespace('reference') IS NOT NULL")
        if not cur.fetchone()[0]:
            raise RuntimeError("the observatory and reference schemas do not exist: run ddl.ensure_database first")
        cur.execute("SELECT obj_description(to_regclass('reference.feed_caveats'), 'pg_class')")
        row = cur.fetchone()
        if row and row[0] and CATALOGUE_VERSION in row[0]:
            return      # up to date: no lock, so concurrent loads of different feeds never wait here
        _lock(cur)
        cur.execute(sql.SQL("""
            CREATE TABLE IF NOT EXISTS {} (
                supply_id text PRIMARY KEY,
                feed text NOT NULL,
                period text NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                document jsonb NOT NULL,
                mismatches jsonb NOT NULL DEFAULT '[]'::jsonb
            )""").format(table))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS supply_metadata_feed_idx ON {} (feed, received_at DESC)")
                    .format(table))
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table),
                    ("Supply metadata (guidance section 3.4) as each partner sent it, one row per supply, with the "
                     "mismatches found against the data. Holds the supplier's contact details: engineers only",))
        cur.execute(sql.SQL("""
            CREATE OR REPLACE VIEW {} AS
            SELECT DISTINCT ON (m.feed)
                   m.feed,
                   m.document->>'agency' AS agency,
                   m.period,
                   m.supply_id,
                   m.received_at,
                   (SELECT string_agg(c.value, E'\\n' ORDER BY c.ord)
                      FROM jsonb_array_elements_text(m.document->'caveats') WITH ORDINALITY AS c(value, ord))
                       AS caveats,
                   m.document->'coding_systems' AS coding_systems,
                   m.document->>'geographic_method' AS geographic_method,
                   m.document->>'conditions_of_use' AS conditions_of_use
              FROM {} AS m
             ORDER BY m.feed, m.received_at DESC, m.supply_id DESC""").format(view, table))
        cur.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(table))
        cur.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(view))
        for role in _existing_roles(cur, ("csp_analyst", "csp_personal_reader")):
            cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, I(role)))
        for role in _existing_roles(cur, ("csp_engineer",)):
            cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, I(role)))
        for role in _existing_roles(cur, ("csp_analyst", "csp_engineer")):
            cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(view, I(role)))
        cur.execute(sql.SQL("COMMENT ON VIEW {} IS %s").format(view),
                    (f"The latest caveats, coding systems and geographic method each partner gave for its feed "
                     f"(supply metadata, guidance section 3.4) [{CATALOGUE_VERSION}]",))


def record(conn: Any, supply_id: str, metadata: SupplyMetadata, mismatches: list[Mismatch],
           period: str | None = None) -> None:
    """Keep a supply's metadata and mismatches in the catalogue, replacing a re-sent supply's; no commit.

    ``period`` is the supply's (by default the part of a ``<feed>/<period>`` supply id after the slash, else the
    metadata's own), so a supply is catalogued under its period even when the metadata names another.
    """
    if period is None:
        feed_part, sep, tail = supply_id.partition("/")
        period = tail if sep and feed_part == metadata.feed else (metadata.period or "")
    catalogue = sql.Identifier(*CATALOGUE)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("""
            INSERT INTO {} (supply_id, feed, period, received_at, document, mismatches)
            VALUES (%s, %s, %s, now(), %s::jsonb, %s::jsonb)
            ON CONFLICT (supply_id) DO UPDATE
               SET feed = EXCLUDED.feed, period = EXCLUDED.period, received_at = EXCLUDED.received_at,
                   document = EXCLUDED.document, mismatches = EXCLUDED.mismatches""").format(catalogue),
                    (supply_id, metadata.feed, period, json.dumps(metadata.to_document()),
                     json.dumps([m.to_dict() for m in mismatches])))


def latest(conn: Any, feed: str) -> SupplyMetadata | None:
    """The metadata most recently received for a feed, or None if none is catalogued."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supply_metadata') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT document FROM observatory.supply_metadata WHERE feed = %s "
                    "ORDER BY received_at DESC, supply_id DESC LIMIT 1", (feed,))
        row = cur.fetchone()
    return SupplyMetadata.from_document(row[0]) if row else None


def first_supply_needs_metadata(conn: Any, feed: str) -> bool:
    """True if the catalogue holds no metadata for the feed yet: its next supply must carry a metadata file."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supply_metadata') IS NOT NULL")
        if not cur.fetchone()[0]:
            return True
        cur.execute("SELECT NOT EXISTS (SELECT 1 FROM observatory.supply_metadata WHERE feed = %s)", (feed,))
        return bool(cur.fetchone()[0])


# --- where people meet the data ----------------------------------------------------------------------------------

def coding_text(system: str | dict[str, str]) -> str:
    """A coding system as one line: its description, or "code = meaning; ..."."""
    if isinstance(system, dict):
        return "; ".join(f"{code} = {meaning}" for code, meaning in system.items())
    return system


def table_comment(schema: FeedSchema, feed_file: FeedFile, metadata: SupplyMetadata | None = None) -> str:
    """A feed table's comment: the schema's own (as ``ddl.ensure_feed_tables`` writes it), then the partner's."""
    base = (f"{schema.title}: {feed_file.title}. {feed_file.description} (guidance section "
            f"{schema.guidance_section}; {schema.dataset_type}; partner {schema.partner.agency})")
    if metadata is None:
        return base
    text = base
    if metadata.caveats:
        text += ". Partner caveats: " + " ".join(c if c.endswith(".") else f"{c}." for c in metadata.caveats)
    if metadata.geographic_method:
        text = f"{text.rstrip('.')}. Partner's coordinates: {metadata.geographic_method}"
    return (f"{text.rstrip('.')}. (Supply metadata of period {metadata.period or metadata.period_start}, "
            f"supplied {metadata.date_supplied.isoformat()})")


def column_comment(schema: FeedSchema, feed_file: FeedFile, column: str,
                   metadata: SupplyMetadata | None = None) -> str | None:
    """A datafield column's comment: the schema's label, then "Partner: <explanation>" and its coding system."""
    base = ddl._comment_for(schema, feed_file, column)  # noqa: SLF001  (the one source of the schema's labels)
    if metadata is None:
        return base
    try:
        fm = metadata.file(feed_file.name)
    except KeyError:
        return base
    key = header_key(column)
    extra = []
    if explanation := fm.explanations.get(key):
        extra.append(f"Partner: {explanation}")
    coding = {header_key(k): v for k, v in metadata.coding_systems.items()}
    if key in coding and key in {header_key(n) for n in fm.field_names}:
        extra.append(f"Coding: {coding_text(coding[key])}")
    if not extra:
        return base
    head = (base or column).rstrip(".")
    return ". ".join([head, *(e.rstrip(".") for e in extra)])


def apply_comments(conn: Any, schema: FeedSchema, metadata: SupplyMetadata) -> list[str]:
    """Put the partner's caveats and explanations in the comments of the feed's tables and columns; no commit.

    Each comment keeps the schema's own label first ("<schema label>. Partner: <explanation>"), is recomputed
    from the schema each time (so a later supply replaces, never stacks, the partner's text) and is written only
    when it changed. Tables that do not exist yet are skipped. Returns the tables commented.
    """
    I = sql.Identifier  # noqa: E741
    done: list[str] = []
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s", (schema.db_schema, f.table))
            row = cur.fetchone()
            if row is None:
                continue
            oid = row[0]
            table = I(schema.db_schema, f.table)
            cur.execute("SELECT obj_description(%s, 'pg_class')", (oid,))
            current = cur.fetchone()[0]
            # The quality stamp at the end of the comment (stamp.py) stays until the report replaces it.
            wanted = table_comment(schema, f, metadata) + _stamp_part(current)
            if current != wanted:
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (wanted,))
            cur.execute("SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
                        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,))
            current = dict(cur.fetchall())
            for d in f.datafields:
                if d.name not in current:
                    continue        # dropped on sanitising: no column
                comment = column_comment(schema, f, d.name, metadata)
                if comment is not None and comment != current[d.name]:
                    cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(d.name)), (comment,))
            done.append(f"{schema.db_schema}.{f.table}")
    return done


def _stamp_part(comment: str | None) -> str:
    """The quality stamp a table comment ends with (``stamp.COMMENT_MARK`` on), or ""."""
    from csp_observatory.stamp import stamp_of

    return stamp_of(comment)


def _md(text: str) -> str:
    """Partner text made inert in Markdown: no HTML, links, images, emphasis or table breaks."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]()#!|~])", r"\\\1", text)


def doc_md_section(metadata: SupplyMetadata | None) -> str:
    """Markdown for the DAG's docs in the Airflow UI: the partner's caveats, coding systems and geographic method.

    The supplier's name and contact are left out: the Airflow UI is not the place for a person's details.
    """
    if metadata is None:
        return ""
    lines = ["## Partner's supply metadata (guidance section 3.4)", "",
             f"*From {_md(metadata.agency)}, with the supply of period {_md(metadata.period or '?')} "
             f"(supplied {metadata.date_supplied.isoformat()}).*", "", "**Caveats on use:**", ""]
    lines += [f"- {_md(c)}" for c in metadata.caveats] or ["- none given"]
    lines += ["", "**Coding systems:**", ""]
    lines += [f"- {_md(name)}: {_md(coding_text(system))}" for name, system in metadata.coding_systems.items()] \
        or ["- none given"]
    lines += ["", f"**How coordinates were made:** {_md(metadata.geographic_method or 'not given')}"]
    if metadata.conditions_of_use:
        lines += ["", f"**Conditions of use:** {_md(metadata.conditions_of_use)}"]
    return "\n".join(lines)


def report_section(metadata: SupplyMetadata | None, mismatches: list[Mismatch]) -> dict[str, Any]:
    """The quality report's metadata section: counts and plain messages only (no contact, no document)."""
    by_kind = {k: n for k in KINDS if (n := sum(1 for m in mismatches if m.kind == k))}
    if metadata is None:
        return {"supplied": False, "period": None, "date_supplied": None, "records_declared": {},
                "datafields_listed": {}, "caveats": 0, "coding_systems": 0, "geographic_method_given": False,
                "mismatch_count": len(mismatches), "mismatches_by_kind": by_kind,
                "messages": [m.message for m in mismatches], "matches": not mismatches}
    return {
        "supplied": True,
        "period": metadata.period,
        "date_supplied": metadata.date_supplied.isoformat(),
        "records_declared": {f.file: f.records for f in metadata.files},
        "datafields_listed": {f.file: len(f.datafields) for f in metadata.files},
        "caveats": len(metadata.caveats),
        "coding_systems": len(metadata.coding_systems),
        "geographic_method_given": metadata.geographic_method is not None,
        "mismatch_count": len(mismatches),
        "mismatches_by_kind": by_kind,
        "messages": [m.message for m in mismatches],
        "matches": not mismatches,
    }


# --- the pipeline's use of it ------------------------------------------------------------------------------------

def read_metadata(path: str | Path, schema: FeedSchema) -> SupplyMetadata:
    """Read a decrypted metadata file (at most :data:`MAX_BYTES` of it is read) and parse it for ``schema``."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    return parse_metadata(data, schema)


def shown_document(metadata: SupplyMetadata) -> dict[str, Any]:
    """:meth:`SupplyMetadata.to_document` without the supplier (a person's details): what a report may hold."""
    doc = metadata.to_document()
    doc.pop("supplier", None)
    return doc


def from_shown_document(doc: Mapping[str, Any]) -> SupplyMetadata:
    """A :class:`SupplyMetadata` from :func:`shown_document`'s output, the supplier left blank."""
    return SupplyMetadata.from_document({**doc, "supplier": {"name": "", "contact": ""}})


def missing_reason(schema: FeedSchema, period: str) -> str:
    """Why a feed's first supply without a metadata file is not loaded, naming the file the partner must send."""
    name = metadata_file_name(schema, period)
    return (f"This is the first supply of {schema.title}, and the first supply of a feed must carry a metadata file "
            f"(guidance section 3.4: who supplied it, what it covers, what each datafield means and the caveats on "
            f"its use). Send {name} (or {name.replace('.yaml.gpg', '.json.gpg')} in JSON), encrypted and signed "
            f"like the data files, into inbox/. The data files of this supply stay in inbox/ and are taken again "
            f"with it. The partner guide (Supply metadata) has a complete example.")


def refused_reason(schema: FeedSchema, problems: list[str], *, required: bool, remote_name: str) -> str:
    """Why a metadata file that cannot be read was returned to the partner (its quarantine note), and what then.

    ``required``: the feed's first supply, which is not loaded without it; otherwise the data were loaded.
    """
    what = MetadataError(problems).args[0]
    if required:
        return (f"{what} This is the first supply of {schema.title}, so it is not loaded without a metadata file the "
                f"observatory can read: correct the file and upload it again as {remote_name}. The data files of "
                f"this supply stay in inbox/ and are taken again with it.")
    return (f"{what} The data of this supply were loaded without it: correct the file and send it with your next "
            f"supply of {schema.title}.")


# --- the DAG's docs ----------------------------------------------------------------------------------------------

#: The cache of a feed's caveats for its DAG's docs: ``<reports_dir>/<feed>/`` + this name.
DAG_DOC_NAME: Final = "supply_metadata.md"
#: The cache of a feed's latest quality stamp for its DAG's docs (``stamp.dag_doc_section``), beside the caveats.
QUALITY_DOC_NAME: Final = "quality_stamp.md"
#: Largest cache file :func:`dag_doc` shows (a caveats section is a few kilobytes).
MAX_DAG_DOC_BYTES: Final = 64_000
_FEED_ID: Final = re.compile(r"[A-Za-z0-9_]{1,100}")


def dag_doc_path(reports_dir: str | Path, feed: str) -> Path:
    """Where the load keeps a feed's latest caveats section for its DAG's docs (beside the feed's reports)."""
    return Path(reports_dir) / feed / DAG_DOC_NAME


def write_dag_doc(reports_dir: str | Path, feed: str, metadata: SupplyMetadata | None) -> Path:
    """Write the feed's :func:`doc_md_section` for :func:`dag_doc`, atomically (a DAG parse never reads half a
    file): a temporary file in the same folder, then a rename over the old one. Call after the load commits."""
    return _write_doc(dag_doc_path(reports_dir, feed), doc_md_section(metadata))


def write_quality_doc(reports_dir: str | Path, feed: str, text: str) -> Path:
    """Write the feed's latest quality stamp (Markdown, ``stamp.dag_doc_section``) for :func:`dag_doc`, atomically.
    Call after the stamp commits."""
    return _write_doc(Path(reports_dir) / feed / QUALITY_DOC_NAME, text)


def _write_doc(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(temp, 0o644)   # the DAG processor may run as another user; nothing personal is in it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def dag_docs_dir() -> Path | None:
    """The folder :func:`dag_doc` reads from (the settings' ``reports_dir``), or None when the config cannot be
    read; never raises. A DAG file asks once per parse, not once per feed: the settings read the partner registry."""
    try:
        from csp_observatory.config import load_settings

        return Path(load_settings().reports_dir)
    except Exception:       # noqa: BLE001  (a DAG must parse whatever became of the config)
        return None


def dag_doc(feed: str, reports_dir: str | Path | None = None) -> str:
    """The partner's latest caveats and the feed's latest quality stamp for its DAG docs (Markdown), or "" when there
    are none; never raises.

    For the DAG file at parse time, when no database or network may be touched: it reads only the small caches the
    load and the report write (:func:`write_dag_doc`, :func:`write_quality_doc`) under the settings' ``reports_dir``
    (or ``reports_dir`` if given).
    """
    try:
        if not _FEED_ID.fullmatch(feed):
            return ""
        if reports_dir is None:
            reports_dir = dag_docs_dir()
            if reports_dir is None:
                return ""
        return "\n\n".join(text for name in (DAG_DOC_NAME, QUALITY_DOC_NAME)
                           if (text := _read_doc(Path(reports_dir) / feed / name)))
    except Exception:       # noqa: BLE001  (a DAG must parse whatever became of the cache or the config)
        return ""


def _read_doc(path: Path) -> str:
    """One cached section for :func:`dag_doc`: "" if it is missing or too large."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_DAG_DOC_BYTES + 1)
    except FileNotFoundError:
        return ""
    return "" if len(data) > MAX_DAG_DOC_BYTES else data.decode("utf-8")
