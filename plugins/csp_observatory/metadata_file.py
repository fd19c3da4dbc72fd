"""Reading a partner's supply metadata file (guidance section 3.4) into a :class:`metadata.SupplyMetadata`.

:func:`parse_metadata` reads the YAML (or JSON) a partner wrote by hand, or raises :class:`metadata.MetadataError`
listing every problem in a partner's words (naming keys and datafields, never quoting a value);
:func:`read_metadata` reads a decrypted file from disk. ``include/examples/police_recorded_crime_metadata.yaml`` is
a complete example. Checking what it says against the supply is ``metadata_checks.py``.
"""
from __future__ import annotations

import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, Mapping

import yaml

from csp_observatory.metadata import (MAX_BYTES, FileMetadata, MetadataError, Supplier, SupplyMetadata, _shown,
                                      header_key)
from csp_observatory.schema import POINT_ROLES, FeedSchema, period_bounds, valid_period

TOP_LEVEL: Final = ("agency", "supplier", "dataset", "period", "file_format", "date_supplied", "files", "caveats",
                    "coding_systems", "geographic_method", "conditions_of_use")
SUPPLIER_KEYS: Final = ("name", "contact")
FILE_KEYS: Final = ("records", "datafields")
PERIOD_KEYS: Final = ("start", "end")


_PERIOD_WORDS: Final = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%y": "YY", "%j": "DDD"}


# --- periods -------------------------------------------------------------------------------------------------------

def _period_words(period_format: str) -> str:
    return re.sub(r"%[A-Za-z]", lambda m: _PERIOD_WORDS.get(m.group(0), m.group(0)), period_format)


def _period_of(period_format: str, start: date, end: date) -> str | None:
    """The period id whose bounds are exactly start-end, or None."""
    period = start.strftime(period_format)
    return period if period_bounds(period_format, period) == (start, end) else None


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


# --- the pipeline's use of it ------------------------------------------------------------------------------------

def read_metadata(path: str | Path, schema: FeedSchema) -> SupplyMetadata:
    """Read a decrypted metadata file (at most :data:`MAX_BYTES` of it is read) and parse it for ``schema``."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    return parse_metadata(data, schema)
